"""The piecewise case and its FLOPs and bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..attention.case import attended_pairs, case_bytes
from ..base import BWD_FLOP_FACTOR, Case


@dataclass(frozen=True)
class PiecewiseCase(Case):
    """A piecewise-attention case: the shared fields, query/key lengths, causal, a deterministic
    backward, and the distance threshold ``w``."""

    problem: ClassVar[str] = "piecewise"
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str = "bf16"
    causal: bool = False
    softmax_scale: float | None = None
    deterministic: bool = False
    dist_threshold: int = 0  # w: q2.k2 where d(i, j) >= w, else q1.k1

    @property
    def id(self) -> str:
        """e.g. ``B2-H8-S1000x1000-D64-bf16-causal-w500``."""
        seq = (
            f"S{self.seqlen_q}"
            if self.seqlen_q == self.seqlen_k
            else f"S{self.seqlen_q}x{self.seqlen_k}"
        )
        parts = [f"B{self.batch}", self.heads_id(), seq, f"D{self.head_dim}", self.dtype]
        parts.append("causal" if self.causal else "full")
        if self.softmax_scale is not None:
            parts.append(f"scale{self.softmax_scale:g}")
        if self.deterministic:
            parts.append("det")
        parts.append(f"w{self.dist_threshold}")
        return "-".join(parts)

    def validate(self) -> None:
        super().validate()
        if min(self.seqlen_q, self.seqlen_k) < 1:
            raise ValueError(f"{self.id}: seqlen_q and seqlen_k must be >= 1")


def case_flops(case: PiecewiseCase, mode: str = "fwd") -> float:
    """flash-attention's count: 4 x attended pairs x head_dim x heads (one QK and one PV product
    per attended pair, whichever q/k pair scores it); bwd 2.5x, fwd_bwd 3.5x."""
    pairs = case.batch * attended_pairs(case.seqlen_q, case.seqlen_k, case.causal)
    return 4.0 * case.heads_q * case.head_dim * pairs * BWD_FLOP_FACTOR[mode]


def piecewise_bytes(case: PiecewiseCase, mode: str = "fwd") -> float:
    """Attention's bytes with two query-like (q1, q2) and three key-like (k1, k2, v) tensors."""
    return case_bytes(case, mode, q_like=2, kv_like=3)
