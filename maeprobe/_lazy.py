"""A module imported on first use, so that declarations (the metric registry, the CLI's options) load without
torch: ``maeprobe --help`` reads every metric's options in a tenth of a second, and torch loads only when a metric
computes."""
from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it (then each attribute is kept here)."""

    def __init__(self, name: str) -> None:
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str):
        value = getattr(importlib.import_module(self._name), attr)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> LazyModule:
    """``torch = lazy("torch")``: ``torch.zeros`` imports torch when it is first called."""
    return LazyModule(name)
