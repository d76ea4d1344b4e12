"""Layouts of the flash-attn backends: packing q/k/v, dense <-> varlen, and the lse shift of
causal ALiBi. Pure functions, checked on the CPU (:mod:`attnbench.backends.flash_attn` uses them
in ``prepare``, ``forward`` and ``grads``)."""

from __future__ import annotations

import torch

from ..problems.attention.inputs import validate_cu_seqlens


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) x3 -> (B, S, 3, H, D); varlen (T, H, D) x3 -> (T, 3, H, D)."""
    return torch.stack((q, k, v), dim=-3)


def unpack_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return qkv.unbind(dim=-3)


def pack_kv(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, S, Hkv, D) x2 -> (B, S, 2, Hkv, D); varlen (T, Hkv, D) x2 -> (T, 2, Hkv, D)."""
    return torch.stack((k, v), dim=-3)


def unpack_kv(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return kv.unbind(dim=-3)


def flatten_batch(x: torch.Tensor) -> torch.Tensor:
    """Dense (B, S, H, D) -> varlen (B * S, H, D)."""
    return x.flatten(0, 1)


def unflatten_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Varlen (B * S, H, D) of equal-length sequences -> dense (B, S, H, D)."""
    return x.unflatten(0, (batch, -1))


def unflatten_lse(lse: torch.Tensor, batch: int) -> torch.Tensor:
    """Varlen lse (H, B * S) of equal-length sequences -> dense (B, H, S)."""
    return lse.unflatten(1, (batch, -1)).transpose(0, 1)


def dense_cu_seqlens(batch: int, seqlen: int, device=None) -> torch.Tensor:
    """int32 ``[0, S, 2S, ..., B*S]``: a dense batch as equal-length varlen sequences."""
    return torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)


def validate_varlen(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    """ValueError for varlen inputs flash-attn would read out of bounds or silently misuse."""
    validate_cu_seqlens(cu_seqlens_q, q.shape[0], "cu_seqlens_q", max_seqlen=max_seqlen_q)
    validate_cu_seqlens(cu_seqlens_k, k.shape[0], "cu_seqlens_k", max_seqlen=max_seqlen_k)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q has {cu_seqlens_q.numel() - 1} sequences but "
            f"cu_seqlens_k has {cu_seqlens_k.numel() - 1}"
        )


def varlen_inputs(inp, case):
    """q, k, v packed for a varlen entry point, and its arguments: ``cu_seqlens_q/k`` (int32),
    ``max_seqlen_q/k`` and ``dense_batch`` (B when a dense case runs as B equal-length
    sequences, else None). Validated, so malformed offsets raise ``ValueError`` here."""
    q, k, v = inp.q, inp.k, inp.v
    dense_batch = None
    if case.varlen:
        cu_q, cu_k = inp.cu_seqlens_q, inp.cu_seqlens_k
        max_q, max_k = inp.max_seqlen_q, inp.max_seqlen_k
    else:
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        cu_q, cu_k = dense_cu_seqlens(b, sq, q.device), dense_cu_seqlens(b, sk, q.device)
        max_q, max_k = sq, sk
        q, k, v = flatten_batch(q), flatten_batch(k), flatten_batch(v)
        dense_batch = b
    validate_varlen(q, k, cu_q, cu_k, max_q, max_k)
    args = dict(
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        dense_batch=dense_batch,
    )
    return q, k, v, args


# ---- flash-attn's ALiBi convention --------------------------------------------------------------
def uses_causal_alibi(causal: bool, window_left: int, window_right: int, max_seqlen_k: int) -> bool:
    """Whether flash-attn takes its causal path (``params.is_causal`` in ``flash_api.cpp``), where
    ALiBi is applied as ``+slope * j``: windows of at least ``seqlen_k`` become -1, causal forces
    ``window_right = 0``, and causal means ``window_left < 0 and window_right == 0``."""
    if window_left >= max_seqlen_k:
        window_left = -1
    if window_right >= max_seqlen_k:
        window_right = -1
    if causal:
        window_right = 0
    return window_left < 0 and window_right == 0


def causal_alibi_lse_shift(
    slopes: torch.Tensor, seqlens_q, seqlens_k, varlen: bool
) -> torch.Tensor:
    """``-slope_h * (i + Sk - Sq)``: add to flash-attn's causal-ALiBi lse to get the reference's.

    For visible keys (``j <= i + Sk - Sq``), ``-slope |i + Sk - Sq - j| = slope j - slope (i + Sk
    - Sq)``, so flash-attn's scores are the reference's plus a per-row constant. ``slopes`` is
    (Hq,) or (B, Hq). Dense: ``seqlens_q``/``seqlens_k`` are ints, result (1 or B, Hq, Sq);
    varlen: per-sequence lengths, result (Hq, total_q).
    """
    slopes = slopes.float()
    if not varlen:
        diag = torch.arange(seqlens_q, device=slopes.device) + (seqlens_k - seqlens_q)
        per_batch = slopes if slopes.dim() == 2 else slopes[None]
        return -per_batch[:, :, None] * diag.float()
    parts = []
    for b, (sq, sk) in enumerate(zip(seqlens_q, seqlens_k, strict=True)):
        diag = torch.arange(sq, device=slopes.device) + (sk - sq)
        sl = slopes if slopes.dim() == 1 else slopes[b]
        parts.append(-sl[:, None] * diag.float())
    return torch.cat(parts, dim=1)


def to_ref_layout(out, lse, dense_batch: int | None, lse_shift: torch.Tensor | None):
    """flash-attn's (out, softmax_lse) -> attnbench layout (dense cases run as varlen reshaped
    back to (B, S, H, D) and (B, H, S)), with the causal-ALiBi lse shift applied."""
    if dense_batch is not None:
        out, lse = unflatten_batch(out, dense_batch), unflatten_lse(lse, dense_batch)
    if lse_shift is not None:
        lse = lse + lse_shift
    return out, lse
