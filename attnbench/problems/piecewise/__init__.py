"""Piecewise attention (FlagAttention's operator): two query/key pairs, chosen per (query, key)
pair by their distance.

With ``Sq``, ``Sk`` the query/key lengths and the signed distance ``d(i, j) = i + (Sk - Sq) - j``
(aligned bottom-right, like causal), the score is ``scale * q2_i . k2_j`` where ``d >= w`` (far
keys) and ``scale * q1_i . k1_j`` elsewhere (near keys, and future keys when not causal, whose
``d < 0``); causal keeps ``j <= i + Sk - Sq``; a row with no visible key gives out 0, lse +inf.
Graded: out, lse, dq1, dk1, dq2, dk2, dv. FLOPs: flash-attention's convention, 4 x attended
pairs x head_dim x heads (one QK and one PV product per pair, whichever q/k pair it uses).

Config grids take ``dist_threshold: 512`` or ``dist_threshold_frac: 0.5`` (``w = int(0.5 *
seqlen_k)``: "half the sequence" across a seqlen sweep)::

    problem: piecewise
    cases:
      - {tokens: 32768, model_dim: 2048, seqlen: [512, 1024], head_dim: 128,
         dist_threshold_frac: 0.5, causal: [false, true]}
"""

from __future__ import annotations

from ..base import Problem
from .case import PiecewiseCase, case_flops, piecewise_bytes
from .grid import PiecewiseConfig, PiecewiseGrid
from .inputs import PiecewiseInputs, make_inputs
from .reference import PiecewiseRef, case_kwargs, piecewise_ref, reference


def needs(case: PiecewiseCase, mode: str) -> list[tuple[str, str]]:
    """The capabilities a piecewise case asks of a backend (``Capabilities`` field, reason)."""
    wants = [
        (case.causal, "causal", "causal"),
        (case.gqa, "gqa", "GQA/MQA (heads_kv != heads_q)"),
        (case.seqlen_q != case.seqlen_k, "seqlen_q_ne_k", "seqlen_q != seqlen_k"),
        (mode != "fwd", "backward", "backward"),
        (case.deterministic, "deterministic", "deterministic backward"),
    ]
    return [(cap, why) for wanted, cap, why in wants if wanted]


PIECEWISE = Problem(
    name="piecewise",
    description="FlagAttention's piecewise attention: q2.k2 where i + Sk - Sq - j >= w, else q1.k1",
    case_type=PiecewiseCase,
    config=PiecewiseConfig,
    grads=("dq1", "dk1", "dq2", "dk2", "dv"),
    make_inputs=make_inputs,
    reference=reference,
    flops=case_flops,
    bytes=piecewise_bytes,
    needs=needs,
)

__all__ = [
    "PIECEWISE",
    "PiecewiseCase",
    "PiecewiseConfig",
    "PiecewiseGrid",
    "PiecewiseInputs",
    "PiecewiseRef",
    "case_kwargs",
    "make_inputs",
    "piecewise_ref",
    "reference",
]
