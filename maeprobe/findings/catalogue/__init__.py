"""The catalogue of findings: one module per finding, each ending with its ``FINDING`` declaration
(``finding.Finding``). ``reproduce``, the report, the figures and the tests iterate ``FINDINGS``; adding a
finding is one module here and its line in ``MODULES`` (the order of ``--list`` and of the report)."""
from __future__ import annotations

from ..finding import Finding
from . import (
               ae_block_distance,
               ae_linear_probe,
               contrastive_homogeneous_attention,
               decoder_positional,
               decoder_semantic,
               lcmae_collapse,
               local_decoders,
               mae_high_frequency,
               mae_local_attention,
               mask_ratio_distance,
               umae_rank,
)

MODULES = (lcmae_collapse, decoder_positional, decoder_semantic, mask_ratio_distance, ae_block_distance,
           ae_linear_probe, umae_rank, local_decoders, mae_local_attention, contrastive_homogeneous_attention,
           mae_high_frequency)

FINDINGS: dict[str, Finding] = {m.FINDING.id: m.FINDING for m in MODULES}

# Findings that need no pretraining: what ``--scale released`` measures on the public checkpoints.
RELEASED_FINDINGS = tuple(i for i, f in FINDINGS.items() if "released" in f.scales)
