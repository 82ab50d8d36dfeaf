"""The papers' findings as data (claims, runs, measurements, verdict rules) and ``reproduce`` that runs them."""
from .catalogue import FINDINGS
from .rules import FAILS, HOLDS, INCONCLUSIVE, Verdict
from .runner import list_findings, reproduce
from .suite import SCALES

__all__ = ["FAILS", "FINDINGS", "HOLDS", "INCONCLUSIVE", "SCALES", "Verdict", "list_findings", "reproduce"]
