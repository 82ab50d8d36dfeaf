"""What one finding declares (``Finding``: claim, paper, runs, evidence, rule, figure, scales) and what measuring
it returns (``Measured``). Each finding is one module of ``catalogue/``; ``reproduce`` only iterates them.

A finding's verdict comes from its rule of version 3 (``rules.py``); version 2's rule (``rules_v2.py``,
unchanged) is applied to the same evidence and reported as superseded (``judged``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd

from . import rules

SCALES_TRAINED = ("tiny", "small", "base")  # the scales whose evidence comes from runs maeprobe trains


@dataclass
class Measured:
    """What a finding's measurement returns: the evidence (the rule's input), the verdict, what the figure
    draws, and superseded versions of the rule (reported, not judged)."""

    evidence: pd.DataFrame
    verdict: rules.Verdict
    figure: dict = field(default_factory=dict)
    superseded: list = field(default_factory=list)  # [(id, Verdict, measure)]


@dataclass(frozen=True)
class Finding:
    """One claim of a paper and how it is tested.

    Attributes:
        id: the finding's name (``reproduce <id>``, ``findings/<id>/``, the figure's file name).
        claim: the claim, in words.
        paper: where the paper makes it.
        runs: the run names it trains (``suite.RUNS``; shared between findings, each trained once). The
            paper's 8-GPU commands of ``--scale base`` follow from them (``suite.BASE_RECIPES``).
        measure: what is measured, in words (the README, ``--list`` and the report print it).
        rule: the version-3 verdict rule (``rules.py``): ``rule(evidence, *args, min_seeds=...)``.
        rule_v2: version 2's rule on the same evidence (reported as superseded), or None.
        on_runs: the evidence on trained runs: ``on_runs(runs, inputs) -> Measured`` (``runs[name][seed]``,
            ``inputs``: ``evidence.Inputs``).
        on_released: the evidence on the released checkpoints (``models[role] = (model, label)``), or None
            when the finding needs pretraining runs (it is then not measured at ``--scale released``).
        figure: the figure kind that draws its evidence (``figures.py``), or None.
        axis: the y-axis label of that figure, where the kind draws more than one quantity.
        needs_reference: measured against the Eq. 8 reference (``--ref``).
        needs_decoder: reads the MAE's transformer decoder.
        needs_labels: reads the labelled set (``--eval-data``) of the linear probes.
        released_roles: the released checkpoints (``suite.RELEASED`` roles) its ``on_released`` reads: ``reproduce
            --scale released`` loads, and asks for, only those of the findings it runs.
    """

    id: str
    claim: str
    paper: str
    runs: tuple[str, ...]
    measure: str
    rule: Callable[..., rules.Verdict]
    on_runs: Callable[..., Measured]
    rule_v2: Callable[..., rules.Verdict] | None = None
    on_released: Callable[..., Measured] | None = None
    figure: str | None = None
    axis: str = ""
    needs_reference: bool = False
    needs_decoder: bool = False
    needs_labels: bool = False
    released_roles: tuple[str, ...] = ("mae", "dino", "deit")

    @property
    def scales(self) -> tuple[str, ...]:
        """The scales it runs at: every trained scale, and ``released`` when it has evidence there."""
        return SCALES_TRAINED + (("released",) if self.on_released is not None else ())

    def judged(self, evidence: pd.DataFrame, *args, figure: dict | None = None, **options) -> Measured:
        """The evidence with version 3's verdict (``rule(evidence, *args, **options)``), the figure (its kind and
        ``figure``'s extras) and version 2's verdict on the same evidence, superseded."""
        verdict = self.rule(evidence, *args, **options)
        return Measured(evidence, verdict, {"kind": self.figure, **(figure or {})}, self.superseded_v2(evidence, *args))

    def superseded_v2(self, evidence: pd.DataFrame, *args) -> list:
        """Version 2's verdict on version 3's evidence, reported as superseded (``rules_v2.py``, unchanged)."""
        if self.rule_v2 is None:
            return []
        old = self.rule_v2(evidence, *args)
        row = replace(old, verdict=rules.SUPERSEDED, detail=(
            f"version 2 (rules_v2.py), superseded by version 3 after the version-2 tiny report had been read; on this "
            f"evidence version 2 gives: {old.verdict}. {old.detail}"))
        return [(f"{self.id}-v2", row, self.measure)]


def one_init_per_seed(key: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Version 3's evidence as version 2 read it for a sweep over ``key`` (mask ratio, block side): version 2 took
    one set of initial weights per seed, those of the sweep's first value."""
    def adapt(evidence: pd.DataFrame) -> pd.DataFrame:
        init = evidence[evidence["condition"] == "init"]
        first = init[init[key] == init[key].min()] if key in init else init
        return pd.concat([evidence[evidence["condition"] == "trained"], first.drop(columns=[key])])

    return adapt


def without_run_inits(evidence: pd.DataFrame) -> pd.DataFrame:
    """Version 3's evidence as version 2 read it for the probes and ranks: without each run's own initial weights
    (the ``init:<model>`` rows version 3 added)."""
    return evidence[~evidence["model"].astype(str).str.startswith("init:")]


def adapted(rule: Callable[..., rules.Verdict], adapt: Callable[[pd.DataFrame], pd.DataFrame]):
    """``rule`` applied to the evidence as ``adapt`` reshapes it (version 2's rules on version 3's evidence)."""
    def applied(evidence: pd.DataFrame, *args) -> rules.Verdict:
        return rule(adapt(evidence), *args)

    applied.__doc__ = rule.__doc__
    return applied
