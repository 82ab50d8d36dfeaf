"""CPU process groups for the tests: ``spawn_gloo`` runs a function in N processes joined by gloo."""
from __future__ import annotations

import torch


def _gloo_entry(rank, world, init_file, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(1)  # the processes share the machine's cores: one thread each, no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn_gloo(fn, world: int, init_file, *args) -> None:
    """Run ``fn(rank, *args)`` in ``world`` CPU processes joined in a gloo process group (``fn`` must be a
    module-level function of an importable module: the children unpickle it by name)."""
    torch.multiprocessing.spawn(_gloo_entry, nprocs=world, args=(world, str(init_file), fn, args))
