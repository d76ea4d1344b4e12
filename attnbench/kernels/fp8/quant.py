"""Quantization of Q, K, V to FP8 (e4m3) for the FP8 attention forward: :func:`quantize` (one
Triton pass over each input, :mod:`.quant_kernels`) and :func:`quantize_torch` (the same
arithmetic in torch operations, the reference it is checked against bit for bit).

What the kernel reads (:class:`Quantized`):

- ``q8`` (B, Sq, Hq, D), ``k8`` (B, Sk, Hkv, D): e4m3 with one fp32 scale per block of
  ``block_q`` / ``block_k`` tokens of one head (``q_scale`` (B, Hq, ceil(Sq / block_q)),
  ``k_scale`` (B, Hkv, ceil(Sk / block_k))): ``x = x8 * scale``, ``scale = amax(|block|) / 448``.
  The kernel multiplies each score by its query's and key's block scales (gathered per row and
  column, so the quantization blocks need not match the kernel's tiles).
- ``vt`` (B, Hkv, D, Sk): V transposed so that the P @ V product reads V's keys contiguous
  (Hopper's FP8 ``wgmma`` wants both operands K-major). ``pv="fp8"``: e4m3 with one scale per
  (kv head, channel) over the whole sequence (``v_scale`` (B, Hkv, D); SageAttention2's
  per-channel V), applied once to the output, and P (values in [0, 1]) quantized in the kernel
  as e4m3(p * 2^8). ``pv="fp16"``: V and P in fp16 (SageAttention's split: low precision for
  Q @ K^T only; ``v_scale`` is 1).

Two options against outliers, both exact in real arithmetic (the scores do not change):

- ``rotate``: Q and K times one orthonormal Hadamard matrix (``(QH)(KH)^T = QK^T``), which
  spreads an outlier channel over all channels before the block amax (FlashAttention-3's
  incoherent processing; head dims that are powers of two);
- ``smooth_k``: K minus its mean over the tokens of each (batch, kv head, channel): a score
  changes by a constant per query row, which softmax ignores (SageAttention's K smoothing). This
  removes a per-channel offset shared by every token outright. The log-sum-exp does change, by
  ``softmax_scale * q . mean(k)`` per query row: ``lse_shift`` (B, Hq, Sq) holds ``q . mean(k)``
  and the kernel adds it back.

The error floor of the full FP8 recipe on standard-normal inputs is that of e4m3 itself (3
mantissa bits, about 2.6% RMS per element, on four operands): in fp64 emulation (S 2048, head dim
128) Q/K alone give cos 0.9993, V alone 0.9996, P alone 0.9997, all four 0.9986.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127.0
QMAX = {"fp8": FP8_MAX, "int8": INT8_MAX}  # the largest code of Q and K, by ``qk`` format
TINY = 1e-30  # the scale of an all-zero block (its codes are all 0)

_hadamard: dict[tuple[int, torch.device], torch.Tensor] = {}


def hadamard(n: int, device) -> torch.Tensor:
    """The orthonormal n x n Hadamard matrix (Sylvester's construction, fp32); n a power of 2."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard rotation needs a power-of-two head dim, not {n}")
    key = (n, torch.device(device))
    if key not in _hadamard:
        h = torch.ones(1, 1)
        while h.shape[0] < n:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _hadamard[key] = (h / math.sqrt(n)).to(device)
    return _hadamard[key]


def block_scales(x: torch.Tensor, block: int, qmax: float = FP8_MAX) -> torch.Tensor:
    """(B, H, ceil(S / block)) fp32 scales of x (B, S, H, D): amax over each block's tokens and
    channels / ``qmax`` (448 for e4m3, 127 for int8)."""
    b, s, h, _ = x.shape
    n = -(-s // block)
    a = x.abs().amax(dim=-1)  # (B, S, H)
    if n * block != s:
        a = torch.nn.functional.pad(a, (0, 0, 0, n * block - s))
    a = a.view(b, n, block, h).amax(dim=2)  # (B, n, H)
    return (a / qmax).clamp_min(TINY).transpose(1, 2).contiguous()


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale rounded to e4m3 (saturating at +-448, as Hopper's ``cvt.satfinite`` does)."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def to_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale rounded half up (``floor(y + 0.5)``, what the Triton pass computes) to int8,
    clamped to +-127."""
    return torch.floor(x / scale + 0.5).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def _codes(x: torch.Tensor, scale: torch.Tensor, qk: str) -> torch.Tensor:
    return to_fp8(x, scale) if qk == "fp8" else to_int8(x, scale)


def _per_token(scales: torch.Tensor, block: int, s: int) -> torch.Tensor:
    """(B, S, H, 1) per-token view of (B, H, n) block scales."""
    return scales.repeat_interleave(block, dim=2)[:, :, :s].transpose(1, 2).unsqueeze(-1)


@dataclass
class Quantized:
    q8: torch.Tensor
    k8: torch.Tensor
    vt: torch.Tensor  # e4m3 (pv="fp8") or fp16 (pv="fp16"), (B, Hkv, D, Sk)
    q_scale: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    lse_shift: torch.Tensor | None  # q . mean(k) with smooth_k, (B, Hq, Sq) fp32
    block_q: int
    block_k: int
    dtype: torch.dtype  # the inputs' dtype: the output's
    rotate: bool
    smooth_k: bool
    qk: str = "fp8"  # the format of q8 and k8: "fp8" (e4m3) or "int8"

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        t = (self.q8, self.k8, self.vt, self.q_scale, self.k_scale, self.v_scale)
        return t if self.lse_shift is None else (*t, self.lse_shift)


def _check(q, k, v, block_q, block_k, pv, qk="fp8") -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q (B,Sq,Hq,D), k and v (B,Sk,Hkv,D), got {q.shape} {k.shape} {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"heads_kv={k.shape[2]} must divide heads_q={q.shape[2]}")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"quantization blocks must be >= 1 token, got {block_q}, {block_k}")
    if pv not in ("fp8", "fp16"):
        raise ValueError(f"pv must be 'fp8' or 'fp16', not {pv!r}")
    if qk not in QMAX:
        raise ValueError(f"qk must be 'fp8' or 'int8', not {qk!r}")


def _k_mean(k: torch.Tensor) -> torch.Tensor:
    """(B, Hkv, D) fp32: K's mean over its tokens (both quantizations take this one)."""
    return k.mean(dim=1, dtype=torch.float32)


def _lse_shift(q: torch.Tensor, km: torch.Tensor) -> torch.Tensor:
    """(B, Hq, Sq) fp32: ``q . mean(k)`` of each query row with its kv head's mean."""
    g = q.shape[2] // km.shape[1]
    return (q.float() * km.repeat_interleave(g, dim=1).unsqueeze(1)).sum(-1).transpose(1, 2)


def _v_scale(v: torch.Tensor, pv: str) -> torch.Tensor:
    """(B, Hkv, D) fp32: V's per-channel scale (amax over tokens / 448), or ones for fp16 P.V."""
    if pv == "fp16":
        return torch.ones(v.shape[0], v.shape[2], v.shape[3], device=v.device)
    return (v.abs().amax(dim=1).float() / FP8_MAX).clamp_min(TINY).contiguous()


def quantize_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_q: int = 128,
    block_k: int = 128,
    rotate: bool = False,
    smooth_k: bool = False,
    pv: str = "fp8",
    qk: str = "fp8",
) -> Quantized:
    """:func:`quantize` in torch operations: the reference the Triton pass is checked against
    (same codes and scales, bit for bit)."""
    _check(q, k, v, block_q, block_k, pv, qk)
    qf, kf = q.float(), k.float()
    lse_shift = None
    if smooth_k:
        km = _k_mean(k)
        kf = kf - km.unsqueeze(1)
        lse_shift = _lse_shift(q, km).contiguous()
    if rotate:
        h = hadamard(q.shape[-1], q.device)
        qf, kf = qf @ h, kf @ h
    q_scale, k_scale = block_scales(qf, block_q, QMAX[qk]), block_scales(kf, block_k, QMAX[qk])
    q8 = _codes(qf, _per_token(q_scale, block_q, q.shape[1]), qk)
    k8 = _codes(kf, _per_token(k_scale, block_k, k.shape[1]), qk)
    v_scale = _v_scale(v, pv)
    vt = to_fp8(v.float(), v_scale.unsqueeze(1)) if pv == "fp8" else v.to(torch.float16)
    vt = vt.permute(0, 2, 3, 1).contiguous()  # (B, Hkv, D, Sk)
    return Quantized(
        q8, k8, vt, q_scale, k_scale, v_scale, lse_shift, block_q, block_k, q.dtype, rotate,
        smooth_k, qk,
    )  # fmt: skip


def quantize(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_q: int = 128,
    block_k: int = 128,
    rotate: bool = False,
    smooth_k: bool = False,
    pv: str = "fp8",
    qk: str = "fp8",
) -> Quantized:
    """q (B, Sq, Hq, D), k and v (B, Sk, Hkv, D) in fp16/bf16/fp32 -> :class:`Quantized`, one
    Triton pass over each input (:mod:`.quant_kernels`); the rotation, K's mean and V's amax in
    torch. ``qk="int8"``: Q and K as int8 (scale amax / 127, rounded half up), SageAttention's
    format, instead of e4m3."""
    from .quant_kernels import quant_rows, quant_v_t

    _check(q, k, v, block_q, block_k, pv, qk)
    group = q.shape[2] // k.shape[2]
    km = _k_mean(k) if smooth_k else None
    if rotate:  # the GEMM in fp32, as quantize_torch; then plain block quantization
        h = hadamard(q.shape[-1], q.device)
        kf = k.float() - km.unsqueeze(1) if smooth_k else k.float()
        q8, q_scale, _ = quant_rows(q.float() @ h, block_q, qk=qk)
        k8, k_scale, _ = quant_rows(kf @ h, block_k, qk=qk)
        lse_shift = _lse_shift(q, km).contiguous() if smooth_k else None
    else:
        q8, q_scale, lse_shift = quant_rows(q, block_q, mean_q=km, group=group, qk=qk)
        k8, k_scale, _ = quant_rows(k, block_k, mean=km, qk=qk)
    v_scale = _v_scale(v, pv)
    vt = quant_v_t(v, v_scale, torch.float8_e4m3fn if pv == "fp8" else torch.float16)
    return Quantized(
        q8, k8, vt, q_scale, k_scale, v_scale, lse_shift, block_q, block_k, q.dtype, rotate,
        smooth_k, qk,
    )  # fmt: skip


def dequantize(z: Quantized) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fp32 (q, k, v) the codes stand for (in the rotated basis when ``rotate``): what the
    kernel computes attention of, up to P's rounding; for tests."""
    q = z.q8.float() * _per_token(z.q_scale, z.block_q, z.q8.shape[1])
    k = z.k8.float() * _per_token(z.k_scale, z.block_k, z.k8.shape[1])
    v = (z.vt.float() * z.v_scale.unsqueeze(-1)).permute(0, 3, 1, 2)
    return q, k, v
