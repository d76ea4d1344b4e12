"""The quantization of :mod:`.quant` as two Triton kernels, one pass over each input.

Torch's version of the same arithmetic (:func:`.quant.quantize_torch`) reads and writes each
tensor five or six times (upcast, amax, divide, clamp, cast, transpose): by a count of bytes,
about 1 GB of traffic per 64 MiB bf16 input against about 80 MB here (an estimate; perf
measures it as ``quant_ms``). Here a program quantizes one block of tokens of one head:

- :func:`_quant_rows` (Q and K): upcast, K's mean subtracted (smoothing), the block's amax, the
  scale ``amax / 448``, ``x / scale`` (round-to-nearest division, as torch's) clamped to +-448 and
  cast to e4m3; for Q under smoothing also ``q . mean(k)`` per row (the lse shift).
- :func:`_quant_v_t` (V): ``v / scale`` per channel cast to e4m3 (or V as fp16), stored
  transposed, (B, Hkv, D, Sk).

The codes and scales are bit for bit torch's (``tests/test_fp8_kernel.py`` checks it); the
lse shift is the same sum in another order. The Hadamard rotation (a GEMM) and K's mean and V's
amax (reductions over the whole sequence) stay in torch.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)
INT8_MAX = tl.constexpr(127.0)
TINY = tl.constexpr(1e-30)


@triton.jit
def _quant_rows(
    X,
    Mean,
    MeanQ,
    Y,
    Scale,
    Shift,
    stride_xb,
    stride_xs,
    stride_xh,
    stride_yb,
    stride_ys,
    stride_yh,
    seqlen,
    heads,
    group,
    n_blocks,
    HEAD_DIM: tl.constexpr,
    HEAD_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_P2: tl.constexpr,
    SUB_MEAN: tl.constexpr,
    DOT_MEAN: tl.constexpr,
    INT8: tl.constexpr,
):
    pid, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b64 = b.to(tl.int64)
    r = tl.arange(0, BLOCK_P2)
    rows = pid * BLOCK + r
    d = tl.arange(0, HEAD_P2)
    in_rows = (r < BLOCK) & (rows < seqlen)
    inside = in_rows[:, None] & (d[None, :] < HEAD_DIM)
    x = tl.load(
        X + b64 * stride_xb + rows[:, None] * stride_xs + h * stride_xh + d[None, :],
        mask=inside,
        other=0.0,
    ).to(tl.float32)
    if SUB_MEAN:  # K smoothing: this head's mean over tokens (outside the block stays 0)
        m = tl.load(Mean + (b64 * heads + h) * HEAD_DIM + d, mask=d < HEAD_DIM, other=0.0)
        x = tl.where(inside, x - m[None, :], 0.0)
    amax = tl.max(tl.max(tl.abs(x), 1), 0)
    if INT8:  # SageAttention's format: amax -> 127, rounded half up
        scale = tl.maximum(tl.math.div_rn(amax, tl.full([], INT8_MAX, tl.float32)), TINY)
        y = tl.minimum(tl.maximum(tl.floor(tl.math.div_rn(x, scale) + 0.5), -INT8_MAX), INT8_MAX)
    else:
        scale = tl.maximum(tl.math.div_rn(amax, tl.full([], FP8_MAX, tl.float32)), TINY)
        y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
    tl.store(
        Y + b64 * stride_yb + rows[:, None] * stride_ys + h * stride_yh + d[None, :],
        y.to(Y.dtype.element_ty),
        mask=inside,
    )
    tl.store(Scale + (b64 * heads + h) * n_blocks + pid, scale)
    if DOT_MEAN:  # Q under K smoothing: q . mean(k) of its kv head, per row
        mk = tl.load(
            MeanQ + (b64 * (heads // group) + h // group) * HEAD_DIM + d,
            mask=d < HEAD_DIM,
            other=0.0,
        )
        tl.store(Shift + (b64 * heads + h) * seqlen + rows, tl.sum(x * mk[None, :], 1),
                 mask=in_rows)  # fmt: skip


@triton.jit
def _quant_v_t(
    V,
    VScale,
    VT,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_tb,
    stride_th,
    stride_td,
    seqlen,
    heads,
    HEAD_DIM: tl.constexpr,
    HEAD_P2: tl.constexpr,
    BLOCK: tl.constexpr,
    SCALED: tl.constexpr,
):
    pid, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b64 = b.to(tl.int64)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, HEAD_P2)
    inside = (rows[:, None] < seqlen) & (d[None, :] < HEAD_DIM)
    x = tl.load(
        V + b64 * stride_vb + rows[:, None] * stride_vs + h * stride_vh + d[None, :],
        mask=inside,
        other=0.0,
    ).to(tl.float32)
    if SCALED:  # e4m3 with one scale per channel
        s = tl.load(VScale + (b64 * heads + h) * HEAD_DIM + d, mask=d < HEAD_DIM, other=1.0)
        x = tl.minimum(tl.maximum(tl.math.div_rn(x, s[None, :]), -FP8_MAX), FP8_MAX)
    tl.store(
        VT + b64 * stride_tb + h * stride_th + d[None, :] * stride_td + rows[:, None],
        x.to(VT.dtype.element_ty),
        mask=inside,
    )


QUANT_BLOCK_V = 64  # tokens per program of the V pass


def quant_rows(x, block: int, mean=None, mean_q=None, group: int = 1, qk: str = "fp8"):
    """``x`` (B, S, H, D) -> (e4m3 or int8 (``qk``) codes, scales (B, H, ceil(S / block)), lse
    shift or None):
    ``mean`` (B, H, D) fp32 is subtracted first (K smoothing); ``mean_q`` (B, H // group, D)
    gives Q's ``q . mean(k)`` rows (B, H, S)."""
    import torch

    b, s, h, d = x.shape
    n = triton.cdiv(s, block)
    code = torch.int8 if qk == "int8" else torch.float8_e4m3fn
    y = torch.empty(x.shape, dtype=code, device=x.device)
    scale = torch.empty(b, h, n, dtype=torch.float32, device=x.device)
    shift = (
        torch.empty(b, h, s, dtype=torch.float32, device=x.device) if mean_q is not None else None
    )
    _quant_rows[(n, h, b)](
        x, mean if mean is not None else scale, mean_q if mean_q is not None else scale, y, scale,
        shift if shift is not None else scale,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        s, h, group, n,
        HEAD_DIM=d, HEAD_P2=triton.next_power_of_2(d), BLOCK=block,
        BLOCK_P2=triton.next_power_of_2(block), SUB_MEAN=mean is not None,
        DOT_MEAN=mean_q is not None, INT8=qk == "int8",
        num_warps=4,
    )  # fmt: skip
    return y, scale, shift


def quant_v_t(v, v_scale, dtype):
    """``v`` (B, S, H, D) -> (B, H, D, S) in ``dtype`` (e4m3: divided by ``v_scale`` (B, H, D)
    per channel first; fp16: as it is)."""
    import torch

    b, s, h, d = v.shape
    vt = torch.empty(b, h, d, s, dtype=dtype, device=v.device)
    scaled = dtype == torch.float8_e4m3fn
    _quant_v_t[(triton.cdiv(s, QUANT_BLOCK_V), h, b)](
        v, v_scale if scaled else vt, vt,
        v.stride(0), v.stride(1), v.stride(2), vt.stride(0), vt.stride(1), vt.stride(2),
        s, h, HEAD_DIM=d, HEAD_P2=triton.next_power_of_2(d), BLOCK=QUANT_BLOCK_V, SCALED=scaled,
        num_warps=4,
    )  # fmt: skip
    return vt
