"""The switches a GPU run flips, in one place: bf16 autocast, the AdamW implementation, DataLoader pinned memory
and persistent workers. The pretraining engine and the evaluation recipes call these; the tests run every one of
them on the CPU (``tests/test_gpu_paths.py``), and the ``cuda``-marked tests and ``benchmarks/gpu_check.sh`` on a
GPU.

Where CUDA behaves differently from the CPU path (what a CPU test cannot show):

* **bf16 autocast.** ``torch.autocast('cuda')`` and ``torch.autocast('cpu')`` cast different lists of operators to
  bf16 (torch's autocast reference lists them per device), so a CPU run with ``run.bf16=always`` runs the same
  maeprobe code but not the same kernels as a GPU run with ``run.bf16=true``. Losses that must stay in float32
  (U-MAE's uniformity term, the classification loss) leave autocast explicitly on both devices.
* **Attention (SDPA).** timm's fused attention calls ``scaled_dot_product_attention``: on CUDA in bf16 the flash or
  memory-efficient kernel (float32 accumulation, another summation order), on CPU the CPU flash kernel or the math
  path. For a layer it reads, the probe computes the statistics from q and k in query blocks; on CUDA the fused
  kernel still gives the output when the queries need several blocks, on CPU (and for one block) p @ v from the
  same probabilities does (``maeprobe.capture``, ``block_output``); ``block_queries=0`` uses the explicit softmax.
* **Fused AdamW.** On CUDA the optimiser is ``AdamW(fused=True)``: one kernel for all parameters instead of torch's
  per-device default (``foreach``). The CPU path keeps the default (so CPU runs and their checkpoints are as they
  were); ``adamw(..., fused=True)`` runs the fused implementation on the CPU for the tests. A resumed run keeps the
  implementation stored with its optimiser state (torch's ``load_state_dict``).
* **torch.backends flags.** maeprobe changes none (they are process-wide and belong to the user). torch's defaults
  differ by device: on Ampere and later GPUs cuDNN convolutions (the patch embedding) take float32 inputs in TF32
  (``torch.backends.cudnn.conv.fp32_precision == 'tf32'``), while matmuls stay IEEE float32 unless
  ``torch.set_float32_matmul_precision('high')`` was called; the CPU computes IEEE float32 throughout. A float32 probe
  on CUDA may therefore differ from the CPU's in the fourth digit (the cuda tests bound it under both settings);
  set ``torch.backends.cudnn.conv.fp32_precision = 'ieee'`` for IEEE convolutions.
* **Pinned memory.** ``pin_memory`` takes effect only with an accelerator: on a CPU-only machine torch's DataLoader
  ignores it (with a warning), so the copy ``tensor.to('cuda', non_blocking=True)`` from pinned pages is exercised
  only by the cuda tests. Persistent workers behave the same on both.
* **torch.compile.** Dynamo's graph capture and AOT autograd are the same on both devices; inductor then generates
  Triton kernels on CUDA and C++/OpenMP kernels on the CPU (gcc).
* **Process groups.** NCCL for CUDA tensors, gloo for CPU tensors (``maeprobe.distributed.backend``).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import MaeprobeError

BF16_SETTINGS = (True, False, "always")


def bf16_enabled(setting, device: torch.device) -> bool:
    """Whether a run autocasts to bf16 on ``device``: ``run.bf16=true`` on CUDA only (the recipes' setting: CPU
    autocast is slower than float32 on most CPUs), ``always`` on any device (CPU autocast included: the GPU run's
    mixed-precision code on a CPU), ``false`` never."""
    if setting not in BF16_SETTINGS or isinstance(setting, int) and not isinstance(setting, bool):
        raise MaeprobeError(f"run.bf16 must be true, false or always, got {setting!r}")
    if setting == "always":
        return True
    return bool(setting) and torch.device(device).type == "cuda"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` (CUDA or CPU autocast), or nothing."""
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def adamw(params, *, lr: float, betas, device: torch.device, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (see the module's notes); ``fused=True`` forces the fused implementation elsewhere."""
    if fused is None:
        fused = torch.device(device).type == "cuda"
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), fused=bool(fused) or None)


def loader_options(device: torch.device, num_workers: int) -> dict:
    """DataLoader settings for feeding ``device``: pinned memory on CUDA (page-locked batches copied
    asynchronously), and workers kept alive across epochs when there are any (no re-spawn and re-import per
    epoch)."""
    workers = int(num_workers)
    return {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda",
            "persistent_workers": workers > 0}


class LoadFailure:
    """What a sample that cannot be read (an image that is not one) becomes inside a DataLoader: its refusal's one
    line, carried to the main process as data (``Reporting``, ``CheckedLoader``)."""

    def __init__(self, message: str):
        self.message = message


class Reporting(Dataset):
    """``dataset`` whose refusals (``MaeprobeError``, e.g. an unreadable image naming its file) become
    ``LoadFailure`` samples: raised in a worker process, torch would re-raise them in the main process with the
    worker's whole traceback as their message."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except MaeprobeError as exc:
            return LoadFailure(str(exc))


def collate(samples):
    """torch's default collation, or the first ``LoadFailure`` of the batch."""
    failed = next((s for s in samples if isinstance(s, LoadFailure)), None)
    return failed if failed is not None else default_collate(samples)


class CheckedLoader(DataLoader):
    """A DataLoader that raises a batch's ``LoadFailure`` in the main process as the one-line ``MaeprobeError`` it
    was."""

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, LoadFailure):
                raise MaeprobeError(batch.message)
            yield batch


def make_loader(dataset, *, device: torch.device, num_workers: int, **kwargs) -> DataLoader:
    """A DataLoader with ``loader_options``; ``kwargs`` (batch size, sampler, ...) as DataLoader's. A sample that
    cannot be read ends the loop with its own one-line error, in worker processes too (``CheckedLoader``)."""
    return CheckedLoader(Reporting(dataset), **loader_options(device, num_workers), collate_fn=collate, **kwargs)
