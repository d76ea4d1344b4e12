"""Plain attention (flash-attention's problem): ``softmax(scale q.k) v`` with causal / window /
softcap / ALiBi / varlen. Its case :class:`AttentionCase`, grid :class:`Grid`, inputs
:func:`make_inputs`, the one reference :func:`reference`, FLOPs :func:`case_flops` (4 x attended
pairs x head_dim x heads) and bytes :func:`case_bytes`."""

from __future__ import annotations

from ..base import Problem
from .case import AttentionCase, attended_pairs, case_bytes, case_flops
from .grid import Config, Grid, SeqGrid
from .inputs import Inputs, make_inputs
from .reference import RefResult, attention_ref, reference


def needs(case: AttentionCase, mode: str) -> list[tuple[str, str]]:
    """The capabilities an attention case asks of a backend (``Capabilities`` field, reason)."""
    wants = [
        (case.causal, "causal", "causal"),
        (case.gqa, "gqa", "GQA/MQA (heads_kv != heads_q)"),
        (
            not case.varlen and case.seqlen_q != case.seqlen_k,
            "seqlen_q_ne_k",
            "seqlen_q != seqlen_k",
        ),
        (case.varlen, "varlen", "varlen"),
        (mode != "fwd", "backward", "backward"),
        (case.windowed, "window", "sliding window"),
        (bool(case.softcap), "softcap", "softcap"),
        (case.alibi, "alibi", "ALiBi"),
        (case.deterministic, "deterministic", "deterministic backward"),
    ]
    return [(cap, why) for wanted, cap, why in wants if wanted]


ATTENTION = Problem(
    name="attention",
    description="softmax(scale q.k) v; causal/window/softcap/ALiBi/varlen",
    case_type=AttentionCase,
    config=Config,
    grads=("dq", "dk", "dv"),
    make_inputs=make_inputs,
    reference=reference,
    flops=case_flops,
    bytes=case_bytes,
    needs=needs,
)

__all__ = [
    "ATTENTION",
    "AttentionCase",
    "Config",
    "Grid",
    "Inputs",
    "RefResult",
    "SeqGrid",
    "attended_pairs",
    "attention_ref",
    "case_bytes",
    "case_flops",
    "make_inputs",
    "needs",
    "reference",
]
