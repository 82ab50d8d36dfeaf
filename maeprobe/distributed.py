"""torch.distributed helpers shared by the probe, the recipes and the command line.

Every process computes; only the main process (rank 0) prints summaries and progress and writes files, so a
run under ``torchrun`` reports once and has one writer per file whatever the number of processes.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True in the process that prints and writes (rank 0, or the only process)."""
    return rank() == 0


def _check_launch_env() -> None:
    """torchrun's variables must describe a possible group (a rank outside the world would wait forever)."""
    from .errors import MaeprobeError

    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise MaeprobeError(f"environment variable {name}={text[:40]!r}: expected a whole number (set by "
                                "torchrun)") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise MaeprobeError(f"RANK={values['RANK']}, WORLD_SIZE={values['WORLD_SIZE']}, LOCAL_RANK="
                            f"{values['LOCAL_RANK']}: expected 0 <= RANK < WORLD_SIZE (as torchrun sets them)")


def backend() -> str:
    """The process group's backend: with CUDA, NCCL for CUDA tensors and gloo for CPU tensors (the probe's reducers
    keep their sums in float64 on the CPU, which NCCL cannot reduce: a plain 'nccl' group fails on them); gloo
    alone without CUDA."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when launched by torchrun (RANK and
    WORLD_SIZE set): ``backend()``. With CUDA, each process first makes GPU number LOCAL_RANK its current device
    (one process per GPU; 'cuda' then means that GPU). Does nothing when already joined or not launched so."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        _check_launch_env()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend())
    if is_distributed():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0
