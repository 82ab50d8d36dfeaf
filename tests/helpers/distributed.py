"""CPU process groups for the tests: ``spawn_gloo`` runs a function in N processes joined by gloo."""
from __future__ import annotations

import sys

import torch


def _gloo_entry(rank, world, init_file, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the processes share the machine's cores: one thread each, no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def start(fn, nprocs: int, args: tuple) -> None:
    """``torch.multiprocessing.spawn(fn, nprocs=nprocs, args=args)``, forked on Linux when this process runs torch on
    one thread (the pytest-xdist workers of ``make test``): the children start with torch and maeprobe already
    imported (about 5 s less each), and no OpenMP thread team is copied mid-flight (GNU OpenMP is not fork-safe
    once its threads ran). Otherwise spawned (``fn`` must then be a module-level function: the children unpickle
    it by name)."""
    method = "fork" if sys.platform == "linux" and torch.get_num_threads() == 1 else "spawn"
    torch.multiprocessing.start_processes(fn, nprocs=nprocs, args=args, start_method=method)


def spawn_gloo(fn, world: int, init_file, *args) -> None:
    """Run ``fn(rank, *args)`` in ``world`` CPU processes joined in a gloo process group (``start``)."""
    start(_gloo_entry, world, (world, str(init_file), fn, args))
