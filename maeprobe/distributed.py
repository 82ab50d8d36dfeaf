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


def _check_launch_env() -> tuple[str, int]:
    """torchrun's variables must describe a possible group (a rank outside the world would wait forever) and where
    to meet it: ``MASTER_ADDR`` set, ``MASTER_PORT`` a port number (torch would raise a traceback on either).
    Returns (MASTER_ADDR, MASTER_PORT)."""
    from .errors import MaeprobeError
    from .validate import one_line

    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise MaeprobeError(f"environment variable {name}={one_line(text[:40])!r}: expected a whole number (set "
                                "by torchrun)") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise MaeprobeError(f"RANK={values['RANK']}, WORLD_SIZE={values['WORLD_SIZE']}, LOCAL_RANK="
                            f"{values['LOCAL_RANK']}: expected 0 <= RANK < WORLD_SIZE (as torchrun sets them)")
    address = os.environ.get("MASTER_ADDR", "").strip()
    if not address or len(address) > 255 or any(ch.isspace() or not ch.isprintable() for ch in address):
        raise MaeprobeError(f"environment variable MASTER_ADDR={one_line(address[:60])!r}: expected the host name or "
                            "address of rank 0 (set by torchrun, with RANK and WORLD_SIZE)")
    text = os.environ.get("MASTER_PORT", "")
    port = int(text) if text.strip().isdigit() and len(text.strip()) < 7 else None
    if port is None or not 1 <= port <= 65535:
        raise MaeprobeError(f"environment variable MASTER_PORT={one_line(text[:40])!r}: expected a port number in "
                            "[1, 65535] (set by torchrun, with RANK and WORLD_SIZE)")
    return address, port


def backend() -> str:
    """The process group's backend: with CUDA, NCCL for CUDA tensors and gloo for CPU tensors (the probe's reducers
    keep their sums in float64 on the CPU, which NCCL cannot reduce: a plain 'nccl' group fails on them); gloo
    alone without CUDA."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); joins the process group when launched by torchrun (RANK and
    WORLD_SIZE set): ``backend()``. With CUDA, each process first makes GPU number LOCAL_RANK its current device
    (one process per GPU; 'cuda' then means that GPU). Does nothing when already joined or not launched so.

    The variables are checked first (``_check_launch_env``). Joining waits at most ``MAEPROBE_DIST_TIMEOUT``
    seconds for the other processes (a missing peer, an unreachable MASTER_ADDR end in one line instead of a wait
    without end); the same bound is the group's timeout for each collective operation (torch's own default is
    30 minutes, 10 for NCCL)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        from datetime import timedelta

        from .errors import MaeprobeError
        from .limits import limit
        from .validate import first_line

        address, port = _check_launch_env()
        seconds = limit("MAEPROBE_DIST_TIMEOUT")
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend(), timeout=timedelta(seconds=seconds))
        except (RuntimeError, ValueError, OSError) as exc:  # torch.distributed.DistError is a RuntimeError
            raise MaeprobeError(f"could not join the process group of WORLD_SIZE={os.environ['WORLD_SIZE']} processes "
                                f"at {address}:{port} as RANK={os.environ['RANK']} within {seconds} s "
                                f"({first_line(exc, 160)}); start every process, or raise the wait with the "
                                "environment variable MAEPROBE_DIST_TIMEOUT") from None
    if is_distributed():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0
