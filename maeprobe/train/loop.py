"""The optimiser step shared by every training recipe (pretraining, fine-tuning, linear probing) and its GPU sync
policy.

Sync policy: a training step never waits for the device. The loss stays on the device; it is read (a host sync)
only where a recipe names a sync point: pretraining at its logging interval (``run.log_every``), before each
checkpoint and at the end; an evaluation recipe at the end of each epoch (its history row and the validation pass).
A non-finite loss is still caught: ``NonFiniteWatch`` keeps, on the device, the first step whose loss was not
finite and that loss, and ``check`` (called at those sync points) raises ``FloatingPointError`` naming them, as the
per-step check did, before anything is logged or saved. The numbers computed do not change: the same operations run
in the same order; only when values reach the host moves.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch


class NonFiniteWatch:
    """The first non-finite loss of a run and its optimiser step, recorded on the loss's device without a host sync
    (``watch``) and reported at the next sync point (``check``)."""

    def __init__(self):
        self.step: torch.Tensor | None = None  # [] int64, -1 while every loss was finite
        self.value: torch.Tensor | None = None  # [] float32, the first non-finite loss

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """Record ``loss`` (a scalar) of optimiser step ``step`` if it is the first non-finite one (device ops only)."""
        loss = loss.detach().float()  # []
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self.value = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self.step < 0)  # [] bool
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss, self.value)

    def check(self) -> None:
        """Sync point: raise ``FloatingPointError`` when a loss watched so far was not finite."""
        if self.step is not None and int(self.step) >= 0:
            raise FloatingPointError(f"loss is {self.value.item()} at step {int(self.step)}")


def optimizer_step(micro_batches: Iterable, forward: Callable, *, optimizer: torch.optim.Optimizer,
                   ddp: torch.nn.Module, world: int, accum: int, lr: float, step: int,
                   watch: NonFiniteWatch) -> list[tuple[torch.Tensor, dict]]:
    """One optimiser step of ``accum`` micro-batches (gradient accumulation, MAE's ``accum_iter``).

    The lr is set once per optimiser step (``lr_scale`` of layer-wise decay applied), as MAE's ``lr_sched``. For
    each micro-batch, ``forward(micro, batch) -> (loss, parts)`` computes the loss (autocast is the forward's
    business: recipes differ in what runs under it); all but the last micro-batch run under DDP's ``no_sync`` (one
    gradient all-reduce per step); the loss is watched (``NonFiniteWatch``) and ``loss / accum`` back-propagated.
    ``micro_batches`` is consumed one at a time, so a loader drawing from the global RNG draws in the same order as
    the forward passes. Returns each micro-batch's (loss, parts), still on the device: no host sync here."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    out = []
    for micro, batch in enumerate(micro_batches):
        last = micro + 1 == accum
        context = ddp.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
        with context:
            loss, parts = forward(micro, batch)
            watch.watch(loss, step)
            (loss / accum).backward()
        out.append((loss, parts))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out
