"""One attention problem (a *case*) and the FLOP count that goes with it.

Layout convention everywhere in attnbench: ``(batch, seqlen, heads, head_dim)`` (flash-attn's),
and ``(total_tokens, heads, head_dim)`` with int32 ``cu_seqlens`` for varlen.
Causal masks are aligned bottom-right when ``seqlen_q != seqlen_k`` (flash-attn's convention):
query ``i`` sees keys ``j <= i + seqlen_k - seqlen_q``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_ALIASES = {
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
}
MODES = ("fwd", "bwd", "fwd_bwd")
BWD_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


@dataclass(frozen=True)
class Case:
    """A plain-attention case; other problems subclass it with their own fields (see
    :mod:`attnbench.problems`)."""

    problem: ClassVar[str] = "attention"
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

    # ---- derived -------------------------------------------------------------------------
    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def scale(self) -> float:
        return (
            self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        )

    @property
    def varlen(self) -> bool:
        return self.seqlens is not None

    @property
    def k_lens(self) -> tuple[int, ...]:
        assert self.seqlens is not None
        return self.seqlens_k if self.seqlens_k is not None else self.seqlens

    @property
    def gqa(self) -> bool:
        return self.heads_q != self.heads_kv

    @property
    def windowed(self) -> bool:
        return self.window_left >= 0 or self.window_right >= 0

    @property
    def needs_mask(self) -> bool:
        """True when the mask is not plain full/top-left-causal attention."""
        return self.windowed or (self.causal and self.seqlen_q != self.seqlen_k) or self.varlen

    @property
    def id(self) -> str:
        """Readable id, e.g. ``B2-H8/2-S1000x1000-D64-bf16-causal``."""
        heads = f"H{self.heads_q}" if not self.gqa else f"H{self.heads_q}/{self.heads_kv}"
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
        return "-".join(parts)

    def params(self) -> dict:
        """The case as flat result columns."""
        d = asdict(self)
        d["problem"] = self.problem
        d["softmax_scale"] = self.scale
        d["varlen"] = self.varlen
        d["seqlens"] = list(self.seqlens) if self.seqlens is not None else None
        d["seqlens_k"] = list(self.seqlens_k) if self.seqlens_k is not None else None
        d["case_id"] = self.id
        return d

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for an impossible case."""
        if min(self.batch, self.heads_q, self.heads_kv, self.head_dim) < 1:
            raise ValueError(f"{self.id}: batch, heads and head_dim must be >= 1")
        if self.heads_q % self.heads_kv:
            raise ValueError(
                f"{self.id}: heads_kv={self.heads_kv} must divide heads_q={self.heads_q}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.id}: dtype {self.dtype!r} not one of {sorted(DTYPES)}")
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
        if self.softmax_scale is not None and not (
            math.isfinite(self.softmax_scale) and self.softmax_scale > 0
        ):
            raise ValueError(f"{self.id}: softmax_scale must be a finite number > 0")
        if not (math.isfinite(self.softcap) and self.softcap >= 0):
            raise ValueError(f"{self.id}: softcap must be a finite number >= 0 (0 = off)")


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


def case_flops(case: Case, mode: str = "fwd") -> float:
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
