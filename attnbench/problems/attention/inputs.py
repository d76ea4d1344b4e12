"""Seeded random inputs for a case (never zeros), dense or varlen."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import case_seed, seeded_randn  # noqa: F401  (re-exported)
from .case import AttentionCase
from .reference import alibi_slopes


@dataclass
class Inputs:
    q: torch.Tensor  # (B, Sq, Hq, D) or varlen (total_q, Hq, D)
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor  # same shape as the output
    cu_seqlens_q: torch.Tensor | None = None  # int32 (B + 1,)
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    alibi_slopes: torch.Tensor | None = None  # fp32 (Hq,)

    @property
    def differentiable(self) -> tuple[torch.Tensor, ...]:
        """The tensors gradients are taken against, in the order of the graded gradients."""
        return (self.q, self.k, self.v)


def cu_seqlens(lengths, device) -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )


def validate_cu_seqlens(
    cu: torch.Tensor, total: int, name: str = "cu_seqlens", max_seqlen: int | None = None
) -> None:
    """Raise ValueError (before any kernel runs) for malformed varlen offsets; with
    ``max_seqlen``, also when a sequence is longer than it (kernels size their grid by it)."""
    if cu.dtype != torch.int32:
        raise ValueError(f"{name} must be int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 entries")
    c = cu.tolist()
    if c[0] != 0:
        raise ValueError(f"{name} must start at 0, got {c[0]}")
    lengths = [b - a for a, b in zip(c[:-1], c[1:], strict=True)]
    if min(lengths) <= 0:
        raise ValueError(f"{name} must be strictly increasing, got {c}")
    if c[-1] != total:
        raise ValueError(f"{name} ends at {c[-1]} but the packed tensor has {total} tokens")
    if max_seqlen is not None and max(lengths) > max_seqlen:
        raise ValueError(
            f"{name}: the longest sequence has {max(lengths)} tokens but max_seqlen is {max_seqlen}"
        )


def make_inputs(case: AttentionCase, device: str | torch.device = "cpu", seed: int = 0) -> Inputs:
    """Standard-normal q, k, v, dout in the case's dtype, seeded by (case, seed)."""
    randn = seeded_randn(case, device, seed)
    hq, hkv, d = case.heads_q, case.heads_kv, case.head_dim
    slopes = alibi_slopes(hq).to(device) if case.alibi else None
    if case.varlen:
        tq, tk = sum(case.seqlens), sum(case.k_lens)
        return Inputs(
            q=randn(tq, hq, d),
            k=randn(tk, hkv, d),
            v=randn(tk, hkv, d),
            dout=randn(tq, hq, d),
            cu_seqlens_q=cu_seqlens(case.seqlens, device),
            cu_seqlens_k=cu_seqlens(case.k_lens, device),
            max_seqlen_q=max(case.seqlens),
            max_seqlen_k=max(case.k_lens),
            alibi_slopes=slopes,
        )
    b, sq, sk = case.batch, case.seqlen_q, case.seqlen_k
    return Inputs(
        q=randn(b, sq, hq, d),
        k=randn(b, sk, hkv, d),
        v=randn(b, sk, hkv, d),
        dout=randn(b, sq, hq, d),
        alibi_slopes=slopes,
    )
