"""One attention problem (a *case*) and the FLOP count that goes with it.

Layout convention everywhere in attnbench: ``(batch, seqlen, heads, head_dim)`` (flash-attn's),
and ``(total_tokens, heads, head_dim)`` with int32 ``cu_seqlens`` for varlen.
Causal masks are aligned bottom-right when ``seqlen_q != seqlen_k`` (flash-attn's convention):
query ``i`` sees keys ``j <= i + seqlen_k - seqlen_q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..base import BWD_FLOP_FACTOR, Case


@dataclass(frozen=True)
class AttentionCase(Case):
    """A plain-attention case: the shared fields (:class:`attnbench.problems.base.Case`),
    lengths, masks and flash-attn's knobs."""

    problem: ClassVar[str] = "attention"
    derived_columns: ClassVar[dict[str, type]] = {"varlen": bool}
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    dtype: str = "bf16"
    causal: bool = False
    softmax_scale: float | None = None
    # varlen: per-sequence lengths (batch == len(seqlens)); k lengths default to q lengths
    seqlens: tuple[int, ...] | None = None
    seqlens_k: tuple[int, ...] | None = None
    # flash-attn knobs: sliding window (-1 = unbounded), tanh softcap (0 = off), ALiBi, det. bwd
    window_left: int = -1
    window_right: int = -1
    softcap: float = 0.0
    alibi: bool = False
    deterministic: bool = False
    # input distributions (attnbench.problems.attention.inputs): q ~ N(0, q_std^2), k ~ N(0,
    # k_std^2) (> 1: large logits), plus a per-(kv head, channel) offset of scale
    # k_channel_offset shared by every token (K's outlier channels); defaults: standard normal
    q_std: float = 1.0
    k_std: float = 1.0
    k_channel_offset: float = 0.0
    # the config's ``lossy:`` tolerances (cos_sim, rel_l1; None: the precision's default) for
    # backends graded by the lossy rule (attnbench.rule): grading policy the config carries, not
    # a case field (no column, not in the id, not compared)
    lossy: tuple[float | None, float | None] | None = field(default=None, compare=False, repr=False)

    HIDDEN: ClassVar[tuple[str, ...]] = ("lossy",)

    @classmethod
    def columns(cls) -> dict:
        cols = super().columns()
        for name in cls.HIDDEN:
            cols.pop(name, None)
        return cols

    def params(self) -> dict:
        d = super().params()
        for name in self.HIDDEN:
            d.pop(name, None)
        return d

    @property
    def standard_inputs(self) -> bool:
        """Whether the inputs are standard normal (the distribution fields at their defaults)."""
        return self.q_std == 1.0 and self.k_std == 1.0 and self.k_channel_offset == 0.0

    # ---- derived -------------------------------------------------------------------------
    @property
    def varlen(self) -> bool:
        return self.seqlens is not None

    @property
    def k_lens(self) -> tuple[int, ...]:
        assert self.seqlens is not None
        return self.seqlens_k if self.seqlens_k is not None else self.seqlens

    @property
    def windowed(self) -> bool:
        return self.window_left >= 0 or self.window_right >= 0

    @property
    def needs_mask(self) -> bool:
        """True when the mask is not plain full/top-left-causal attention."""
        return self.windowed or (self.causal and self.seqlen_q != self.seqlen_k) or self.varlen

    @property
    def id(self) -> str:
        """Readable id, e.g. ``B2-H8/2-S1000x1000-D64-bf16-causal``; a non-standard input
        distribution ends it, e.g. ``...-causal-qstd4-kstd4`` or ``...-full-koff8``."""
        heads = self.heads_id()
        if self.varlen:
            seq = "varlen[" + ",".join(map(str, self.seqlens)) + "]"
            if self.seqlens_k is not None:
                seq += "x[" + ",".join(map(str, self.seqlens_k)) + "]"
        else:
            seq = (
                f"S{self.seqlen_q}"
                if self.seqlen_q == self.seqlen_k
                else (f"S{self.seqlen_q}x{self.seqlen_k}")
            )
        parts = [f"B{self.batch}", heads, seq, f"D{self.head_dim}", self.dtype]
        parts.append("causal" if self.causal else "full")
        if self.windowed:
            parts.append(f"win{self.window_left},{self.window_right}")
        if self.softcap:
            parts.append(f"softcap{self.softcap:g}")
        if self.alibi:
            parts.append("alibi")
        if self.softmax_scale is not None:
            parts.append(f"scale{self.softmax_scale:g}")
        if self.deterministic:
            parts.append("det")
        # the input distribution, only off its default (so the ids of standard cases never change)
        if self.q_std != 1.0:
            parts.append(f"qstd{self.q_std:g}")
        if self.k_std != 1.0:
            parts.append(f"kstd{self.k_std:g}")
        if self.k_channel_offset != 0.0:
            parts.append(f"koff{self.k_channel_offset:g}")
        return "-".join(parts)

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for an impossible case."""
        super().validate()
        if self.varlen:
            if len(self.seqlens) != self.batch or len(self.k_lens) != self.batch:
                raise ValueError(f"{self.id}: batch must equal the number of varlen sequences")
            if min(self.seqlens) < 1 or min(self.k_lens) < 1:
                raise ValueError(f"{self.id}: varlen sequence lengths must be >= 1")
        elif min(self.seqlen_q, self.seqlen_k) < 1:
            raise ValueError(f"{self.id}: seqlen_q and seqlen_k must be >= 1")
        if min(self.window_left, self.window_right) < -1:
            raise ValueError(
                f"{self.id}: window sizes must be >= 0, or -1 for unbounded "
                f"(got [{self.window_left}, {self.window_right}])"
            )
        if not (math.isfinite(self.softcap) and self.softcap >= 0):
            raise ValueError(f"{self.id}: softcap must be a finite number >= 0 (0 = off)")
        for name in ("q_std", "k_std"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{self.id}: {name} must be a finite number > 0 (got {v!r})")
        if not (math.isfinite(self.k_channel_offset) and self.k_channel_offset >= 0):
            raise ValueError(
                f"{self.id}: k_channel_offset must be a finite number >= 0 (0 = none; got "
                f"{self.k_channel_offset!r})"
            )


def attended_pairs(
    seqlen_q: int,
    seqlen_k: int,
    causal: bool = False,
    window_left: int = -1,
    window_right: int = -1,
) -> int:
    """Exact number of unmasked (query, key) pairs, bottom-right aligned like flash-attn."""
    if causal:
        window_right = 0
    if window_left < 0 and window_right < 0:
        return seqlen_q * seqlen_k
    i = torch.arange(seqlen_q, dtype=torch.int64)
    diag = i + seqlen_k - seqlen_q
    hi = diag + window_right if window_right >= 0 else torch.full_like(i, seqlen_k - 1)
    lo = diag - window_left if window_left >= 0 else torch.zeros_like(i)
    hi = hi.clamp(max=seqlen_k - 1)
    lo = lo.clamp(min=0)
    return int((hi - lo + 1).clamp(min=0).sum())


def case_flops(case: AttentionCase, mode: str = "fwd") -> float:
    """4 * heads_q * head_dim * (attended pairs), summed over the batch / varlen sequences.

    Backward is counted as 2.5x the forward, fwd_bwd as 3.5x (flash-attention's convention).
    """
    if case.varlen:
        pairs = sum(
            attended_pairs(sq, sk, case.causal, case.window_left, case.window_right)
            for sq, sk in zip(case.seqlens, case.k_lens)
        )
    else:
        pairs = case.batch * attended_pairs(
            case.seqlen_q, case.seqlen_k, case.causal, case.window_left, case.window_right
        )
    return 4.0 * case.heads_q * case.head_dim * pairs * BWD_FLOP_FACTOR[mode]


def qkv_bytes(case, q_like: int = 1, kv_like: int = 2) -> tuple[float, float, float]:
    """Bytes of one query-like tensor set (``q_like`` tensors (tokens_q, Hq, D)), the key/value
    set (``kv_like`` tensors (tokens_k, Hkv, D)) in the case's dtype, and the fp32 lse."""
    size = case.torch_dtype.itemsize
    if getattr(case, "varlen", False):
        tq, tk = sum(case.seqlens), sum(case.k_lens)
    else:
        tq, tk = case.batch * case.seqlen_q, case.batch * case.seqlen_k
    q = q_like * tq * case.heads_q * case.head_dim * size
    kv = kv_like * tk * case.heads_kv * case.head_dim * size
    return q, kv, 4.0 * tq * case.heads_q


def case_bytes(case: AttentionCase, mode: str = "fwd", q_like: int = 1, kv_like: int = 2) -> float:
    """The least memory traffic of the mode, each tensor moved once: fwd reads q, k, v and writes
    out and lse; bwd reads q, k, v, out, dout, lse and writes dq, dk, dv; fwd_bwd both."""
    q, kv, lse = qkv_bytes(case, q_like, kv_like)
    o = q / q_like  # out and dout are query-shaped with the value's head dim
    fwd = q + kv + o + lse
    bwd = q + kv + 2 * o + lse + q + kv
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]
