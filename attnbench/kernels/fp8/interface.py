"""Host side of the FP8 attention forward: validation and the launch.

Usage::

    from attnbench.kernels.fp8 import fp8_attention, quantize

    z = quantize(q, k, v, rotate=False, smooth_k=False, pv="fp8")  # (B, S, H, D) 16/32-bit
    out, lse = fp8_attention(z, causal=True)               # out in the inputs' dtype, lse fp32

``lse`` is natural-log, (B, Hq, Sq), of the scores the codes stand for. Forward only.
"""

from __future__ import annotations

import math

import torch
import triton

from .._triton.configs import seq_bucket
from .._triton.softmax import LOG2E
from .fwd import _fwd_kernel
from .quant import Quantized

HEAD_DIMS = (32, 64, 128, 256)


def check_shapes(heads_q: int, heads_kv: int, head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head dim {head_dim} unsupported by the FP8 kernel; one of {HEAD_DIMS}")
    if heads_q % heads_kv:
        raise ValueError(f"heads_kv={heads_kv} must divide heads_q={heads_q}")


def fp8_attention(
    z: Quantized, causal: bool = False, softmax_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the quantized (q, k, v) of :func:`.quant.quantize`: ``(out, lse)``."""
    b, sq, hq, d = z.q8.shape
    _, sk, hkv, _ = z.k8.shape
    check_shapes(hq, hkv, d)
    scale = float(softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d))
    if not scale > 0:
        raise ValueError(f"softmax_scale must be > 0, got {scale}")
    out = torch.empty(b, sq, hq, d, dtype=z.dtype, device=z.q8.device)
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=z.q8.device)

    def grid(meta):
        return triton.cdiv(sq, meta["BLOCK_M"]), hq, b

    _fwd_kernel[grid](
        z.q8,
        z.k8,
        z.vt,
        z.q_scale,
        z.k_scale,
        z.v_scale,
        z.lse_shift if z.lse_shift is not None else lse,
        out,
        lse,
        z.q8.stride(0),
        z.q8.stride(1),
        z.q8.stride(2),
        z.k8.stride(0),
        z.k8.stride(1),
        z.k8.stride(2),
        z.vt.stride(0),
        z.vt.stride(1),
        z.vt.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        sq,
        sk,
        hq // hkv,
        hq,
        scale * LOG2E,
        scale,
        seq_bucket(sq),
        HEAD_DIM=d,
        CAUSAL=bool(causal),
        LSE_SHIFT=z.lse_shift is not None,
        BLOCK_Q=z.block_q,
        BLOCK_K=z.block_k,
    )
    return out, lse
