"""Tests of the FP8 attention forward (``attnbench.kernels.fp8``) and its quantization.

CPU: the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set here when there is no
GPU), whose FP8 down-cast is corrected by ``interpret_compat`` (tested here: without it P's
codes are wrong by up to half their value). What the interpreter covers: the quantization, the
scales (per row and per column, quantization blocks unlike the tiles), masks, bottom-right causal,
GQA, seqlen_q != seqlen_k, the lse and K smoothing's lse shift, both P @ V precisions; it does
not cover Hopper's FP8 ``wgmma`` layouts or the tiles' performance (``pytest -m gpu`` does the
former). The kernel is compared to fp64 attention of the values its codes stand for
(:func:`dequantize`): with fp16 P @ V that differs only by fp16 rounding of P and V, with e4m3
P @ V by P's e4m3 rounding.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from attnbench.kernels import fp8  # noqa: E402
from attnbench.kernels.fp8.quant import FP8_MAX  # noqa: E402

DEVICE = "cuda" if HAS_GPU else "cpu"


def reference(q, k, v, causal, scale=None):
    """fp64 (out (B, Sq, Hq, D), lse (B, Hq, Sq)), bottom-right causal, GQA; a row that sees
    no key has out 0 and lse +inf (the kernels' convention)."""
    b, sq, hq, d = q.shape
    sk, g = k.shape[1], hq // k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    k, v = k.double().repeat_interleave(g, 2), v.double().repeat_interleave(g, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k) * scale
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        s = s.masked_fill(j > i + sk - sq, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse.masked_fill(lse == float("-inf"), math.inf)


def lse_err(lse, ref):
    """Largest |lse - ref| over rows that see keys; rows that see none must be +inf on both."""
    ref = ref.to(lse.device)
    empty = ref == math.inf
    assert torch.equal(lse[empty], ref[empty].float())
    return (lse.double() - ref)[~empty].abs().max().item()


def rel_l1(x, r):
    return ((x.double() - r).abs().sum() / r.abs().sum()).item()


def inputs(b, sq, sk, hq, hkv, d, dtype, offset=0.0, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(b, sq, hq, d, generator=g, device=DEVICE)
    k = torch.randn(b, sk, hkv, d, generator=g, device=DEVICE)
    v = torch.randn(b, sk, hkv, d, generator=g, device=DEVICE)
    k = k + offset * torch.randn(hkv, d, generator=g, device=DEVICE)
    return q.to(dtype), k.to(dtype), v.to(dtype)


SHAPES = [  # b, sq, sk, hq, hkv, d, causal
    pytest.param(2, 100, 100, 4, 2, 64, False, id="b2-s100-gqa2-d64"),
    pytest.param(1, 70, 90, 4, 4, 64, True, id="causal-sq70-sk90-d64"),
    pytest.param(1, 90, 70, 2, 1, 32, True, id="causal-sq90-sk70-mqa-d32"),
    pytest.param(1, 48, 48, 2, 2, 128, True, id="causal-s48-d128"),
]


@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,causal", SHAPES)
@pytest.mark.parametrize(
    "smooth_k,qk", [(False, "fp8"), (True, "fp8"), (True, "int8")], ids=["plain", "smooth", "int8"]
)
def test_fp16_pv_matches_dequantized_attention(b, sq, sk, hq, hkv, d, causal, smooth_k, qk):
    """With fp16 P @ V, out and lse are attention of the dequantized q, k (and v) up to fp16
    rounding: every scale, mask and the lse shift of K smoothing are right (Q.K^T in e4m3 or,
    SageAttention's format, int8)."""
    q, k, v = inputs(b, sq, sk, hq, hkv, d, torch.float16)
    z = fp8.quantize(q, k, v, block_q=32, block_k=24, smooth_k=smooth_k, pv="fp16", qk=qk)
    out, lse = fp8.fp8_attention(z, causal=causal)
    dq, dk, dv = fp8.dequantize(z)
    ref_out, ref_lse = reference(dq, dk, dv, causal)
    if smooth_k:  # the dequantized k is the smoothed one: lse moves by scale * q . mean(k)
        ref_lse = ref_lse + z.lse_shift.double() / math.sqrt(d)
    assert out.dtype == torch.float16 and out.shape == q.shape
    assert rel_l1(out, ref_out) < 2e-3
    assert lse_err(lse, ref_lse) < 1e-4
    # and against the unquantized inputs: the lse of the smoothed kernel is the true one
    true_out, true_lse = reference(q, k, v, causal)
    assert lse_err(lse, true_lse) < 0.25
    assert rel_l1(out, true_out) < 0.06


@pytest.mark.parametrize("b,sq,sk,hq,hkv,d,causal", SHAPES[:2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_fp8_pv_matches_dequantized_attention_up_to_p_rounding(
    b, sq, sk, hq, hkv, d, causal, dtype
):
    q, k, v = inputs(b, sq, sk, hq, hkv, d, dtype)
    z = fp8.quantize(q, k, v, block_q=16, block_k=128)
    out, lse = fp8.fp8_attention(z, causal=causal)
    ref_out, ref_lse = reference(*fp8.dequantize(z), causal)
    assert out.dtype == dtype
    # P in e4m3: about 2.5% relative L1 on its own (fp64 emulation); lse does not see it
    assert rel_l1(out, ref_out) < 0.035
    assert lse_err(lse, ref_lse) < 1e-4
    cos = torch.nn.functional.cosine_similarity(
        out.double().flatten(), reference(q, k, v, causal)[0].flatten(), dim=0
    )
    assert cos > 0.995


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "rotate,smooth_k,pv,qk",
    [
        (False, False, "fp8", "fp8"),
        (False, True, "fp16", "fp8"),
        (True, False, "fp8", "fp8"),
        (True, True, "fp8", "fp8"),
        (False, True, "fp16", "int8"),
    ],
    ids=["plain", "smooth-pv16", "rot", "rot-smooth", "int8-smooth-pv16"],
)
def test_triton_quantization_is_torchs_bit_for_bit(dtype, rotate, smooth_k, pv, qk):
    """The Triton pass gives torch's codes and scales exactly (blocks unlike the tiles, a length
    no block divides, GQA, a K offset for the smoothing); the lse shift is the same sum."""
    q, k, v = inputs(2, 100, 90, 4, 2, 64, dtype, offset=4.0)
    a = fp8.quantize(q, k, v, 32, 24, rotate=rotate, smooth_k=smooth_k, pv=pv, qk=qk)
    b = fp8.quantize_torch(q, k, v, 32, 24, rotate=rotate, smooth_k=smooth_k, pv=pv, qk=qk)
    assert a.q8.dtype == (torch.int8 if qk == "int8" else torch.float8_e4m3fn)
    for x, y in zip(a.tensors[:6], b.tensors[:6]):
        assert x.dtype == y.dtype and x.shape == y.shape
        bits = (lambda t: t.view(torch.uint8)) if x.dtype == torch.float8_e4m3fn else (lambda t: t)
        assert torch.equal(bits(x), bits(y))
    assert (a.lse_shift is None) == (not smooth_k)
    if smooth_k:
        assert torch.allclose(a.lse_shift, b.lse_shift, rtol=1e-5, atol=1e-4)


def test_rotation_is_exact_in_real_arithmetic_and_orthonormal():
    h = fp8.hadamard(64, DEVICE)
    assert torch.allclose(h @ h.T, torch.eye(64, device=DEVICE), atol=1e-6)
    with pytest.raises(ValueError, match="power-of-two"):
        fp8.hadamard(96, DEVICE)
    q, k, v = inputs(1, 64, 64, 2, 2, 64, torch.float32)
    z = fp8.quantize(q, k, v, rotate=True, pv="fp16")
    out, _ = fp8.fp8_attention(z, causal=False)
    assert rel_l1(out, reference(q, k, v, False)[0]) < 0.05


def test_k_smoothing_removes_a_shared_channel_offset():
    """A per-channel offset on K (shared by every token) leaves attention unchanged and ruins
    the plain quantization of the scores; smoothing removes it."""
    q, k, v = inputs(1, 64, 64, 2, 2, 64, torch.float16, offset=16.0)
    truth = reference(q, k, v, False)[0]
    plain = fp8.fp8_attention(fp8.quantize(q, k, v, pv="fp16"))[0]
    smooth = fp8.fp8_attention(fp8.quantize(q, k, v, smooth_k=True, pv="fp16"))[0]
    assert rel_l1(smooth, truth) < 0.05
    assert rel_l1(plain, truth) > 2 * rel_l1(smooth, truth)


def test_block_scales_and_saturation():
    x = torch.zeros(1, 5, 1, 4, device=DEVICE)
    x[0, 0, 0, 0], x[0, 3, 0, 1] = 2.0, -8.0
    s = fp8.quant.block_scales(x, 2)  # blocks {0,1}, {2,3}, {4}
    assert s.shape == (1, 1, 3)
    assert s[0, 0].tolist() == pytest.approx([2 / FP8_MAX, 8 / FP8_MAX, 1e-30])
    y = fp8.quant.to_fp8(torch.tensor([1000.0, -1000.0, 1.0]), torch.tensor(1.0))
    assert y.float().tolist() == [448.0, -448.0, 1.0]  # saturating, as cvt.satfinite


def test_bad_shapes_are_refused():
    q, k, v = inputs(1, 16, 16, 3, 2, 64, torch.float16)
    with pytest.raises(ValueError, match="must divide"):
        fp8.quantize(q, k, v)
    q, k, v = inputs(1, 16, 16, 2, 2, 80, torch.float16)
    with pytest.raises(ValueError, match="head dim 80"):
        fp8.fp8_attention(fp8.quantize(q, k, v))
    with pytest.raises(ValueError, match="pv must be"):
        fp8.quantize(q, k, v, pv="int4")


@pytest.mark.skipif(HAS_GPU, reason="the interpreter's FP8 down-cast")
def test_interpreter_fp8_downcast_rounds_to_nearest_and_saturates():
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, y_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(y_ptr + i, tl.load(x_ptr + i).to(tl.float8e4nv))

    x = torch.tensor([7.86, -1.9585, 0.4861, 1000.0, 0.0, 3e-3, 1.0625, 1.1875])
    y = torch.empty(8, dtype=torch.float8_e4m3fn)
    cast[(1,)](x, y, 8)
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert y.float().tolist() == want.float().tolist()  # 7.86 -> 8 (not 4), 1000 -> 448


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU with FP8 tensor cores")
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_fp8_bf16(d, causal):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need sm89+")
    q, k, v = inputs(2, 1000, 1000, 8, 2, d, torch.bfloat16)
    for pv, bound in (("fp8", 0.035), ("fp16", 2e-3)):
        z = fp8.quantize(q, k, v, pv=pv)
        out, lse = fp8.fp8_attention(z, causal=causal)
        ref_out, ref_lse = reference(*fp8.dequantize(z), causal)
        assert rel_l1(out, ref_out) < bound
        assert lse_err(lse, ref_lse) < 1e-3
