"""The ``fa4_fp8`` backend (FlashAttention-4's FP8 forward) on the CPU: registration, why it
cannot run (no flash-attn-4, an FA4 before its FP8 forward, any GPU but sm100), the cases it
refuses, and, with a FAKE ``flash_attn.cute.interface._flash_attn_fwd`` that checks its inputs
as FA4's interface.py does and computes attention from the dequantized FP8 operands (bf16 out,
natural-log lse), that the glue quantizes to e4m3 with per-(batch, kv head) descales, passes
them with the scale, causal flag and window, leaves the harness's inputs alone, and is graded by
the lossy fp8 rule. The fake proves the glue, not FA4 (that needs an sm100 GPU)."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import replace

import pytest
import torch

from attnbench.backends import REGISTRY, fa4_fp8
from attnbench.backends import fa4 as fa4_mod
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import attention_ref
from attnbench.rule import lossy_tolerance
from attnbench.run.check import check_backend, make_truth
from attnbench.run.runner import classify

BE = REGISTRY["fa4_fp8"]
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _module(name, package=False):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        mod.__path__ = []
    return mod


def fake_fa4(with_fp8=True):
    """``flash_attn.cute`` and its ``interface`` whose ``_flash_attn_fwd`` takes the descales
    (``with_fp8``) or not (an FA4 before its FP8 forward)."""

    def _flash_attn_fwd(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None,
                        seqused_k=None, max_seqlen_q=None, max_seqlen_k=None, page_table=None,
                        softmax_scale=None, causal=False, softcap=None, window_size_left=None,
                        window_size_right=None, learnable_sink=None, num_splits=1, pack_gqa=None,
                        return_lse=False, q_descale=None, k_descale=None, v_descale=None):  # fmt: skip
        calls.append(dict(locals()))
        # interface.py's checks for these arguments
        assert v.dtype in [torch.float16, torch.bfloat16, *FP8]
        assert q.dtype == k.dtype == v.dtype
        is_fp8 = v.dtype in FP8
        if is_fp8 and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError("FA4 CuTe FP8 backward is not supported yet (forward-only).")
        b, hkv = q.shape[0], k.shape[2]
        if is_fp8:
            for t in (q_descale, k_descale, v_descale):
                assert t is None or (t.shape == (b, hkv) and t.dtype == torch.float32)
        else:
            assert q_descale is None and k_descale is None and v_descale is None
        g = q.shape[2] // hkv

        def deq(x, d, per_q_head=False):
            x = x.float()
            if d is None:
                return x
            d = d.repeat_interleave(g, 1) if per_q_head else d
            return x * d[:, None, :, None]

        window = (
            -1 if window_size_left is None else window_size_left,
            -1 if window_size_right is None else window_size_right,
        )
        out, lse = attention_ref(
            deq(q, q_descale, True), deq(k, k_descale), deq(v, v_descale),
            causal=causal, softmax_scale=softmax_scale, window=window,
        )  # fmt: skip
        out = out.to(torch.bfloat16 if is_fp8 else q.dtype)
        return out, (lse.float() if return_lse else None), None, None

    def _old_flash_attn_fwd(q, k, v, softmax_scale=None, causal=False, return_lse=False):
        raise AssertionError("never called")

    calls: list[dict] = []
    cute = _module("flash_attn.cute", package=True)
    iface = _module("flash_attn.cute.interface")
    iface._flash_attn_fwd = _flash_attn_fwd if with_fp8 else _old_flash_attn_fwd
    cute.interface = iface
    cute.flash_attn_func = object()
    cute.calls = calls
    return cute, iface


@pytest.fixture
def no_fa4(monkeypatch):
    for name in ("flash_attn", "flash_attn.cute", "flash_attn.cute.interface"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(fa4_mod, "_module", None)
    monkeypatch.setattr(fa4_mod, "_import_error", None)


def _install(monkeypatch, with_fp8=True):
    cute, iface = fake_fa4(with_fp8)
    monkeypatch.setattr(fa4_mod, "_module", cute)
    monkeypatch.setattr(fa4_mod, "_import_error", None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", iface)
    return cute


@pytest.fixture
def fa4(monkeypatch):
    return _install(monkeypatch)


# ---- registration, availability ----------------------------------------------------------------
def test_registered_as_a_forward_only_fp8_backend():
    c = BE.caps
    assert c.precision == "fp8" and c.devices == {"cuda"} and c.dtypes == {"bf16"}
    assert not c.backward and c.lse and c.causal and c.gqa and c.window and c.seqlen_q_ne_k
    assert not c.varlen and not c.softcap and not c.alibi


def test_why_it_cannot_run(no_fa4, monkeypatch):
    assert BE.availability("cuda") == "flash-attn-4 not installed"
    _install(monkeypatch, with_fp8=False)
    why = BE.availability("cuda")
    assert "flash_attn.cute.interface._flash_attn_fwd takes no q_descale/k_descale/v_descale" in (
        why
    )
    _install(monkeypatch)
    assert BE.availability("cuda") is None  # no GPU here: nothing more to say
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for cc, ok in (((9, 0), False), ((10, 0), True), ((10, 3), True), ((11, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, cc=cc: cc)
        why = BE.availability("cuda")
        if ok:
            assert why is None, cc
        else:
            assert why.startswith(
                f"flash_attn.cute's FP8 forward runs on sm100 only (this GPU is sm{cc[0]}{cc[1]})"
            ), why
    case = Case(1, 2, 2, 128, 128, 64, "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert "runs on sm100 only (this GPU is sm90)" in BE.why_unsupported(case, "cuda")


REFUSALS = [
    (Case(2, 8, 2, 128, 200, 64, "bf16", causal=True), None),
    (Case(1, 4, 4, 128, 128, 256, "bf16"), None),
    (Case(1, 4, 4, 128, 128, 128, "bf16", window_left=16, window_right=0), None),
    (Case(1, 4, 4, 128, 128, 64, "fp16"), "unsupported: dtype fp16 (supports bf16)"),
    (Case(1, 4, 4, 128, 128, 72, "bf16"),
     "unsupported: head dim 72 not a multiple of 16 (FP8: 16-byte alignment)"),
    (Case(1, 4, 4, 128, 128, 192, "bf16"),
     "unsupported: head dim 192 (FA4 on sm100: up to 128, or 256)"),
    (Case(2, 4, 4, 1, 1, 64, "bf16", seqlens=(70, 128)), "unsupported: varlen"),
    (Case(1, 4, 4, 128, 128, 64, "bf16", softcap=30.0), "unsupported: softcap"),
]  # fmt: skip


@pytest.mark.parametrize("case,expected", REFUSALS, ids=[c.id for c, _ in REFUSALS])
def test_refusals(case, expected, fa4):
    assert BE.why_unsupported(case, "cuda", "fwd") == expected
    if expected is None:
        assert BE.why_unsupported(case, "cuda", "fwd_bwd") == "unsupported: backward"
    assert "does not run on cpu" in BE.why_unsupported(case, "cpu", "fwd")


def test_library_refusals_are_unsupported_rows():
    try:
        exec(compile("raise AssertionError('FP8 is only supported on SM100')",
                     "/site/flash_attn/cute/interface.py", "exec"))  # fmt: skip
    except AssertionError as e:
        err = e
    assert classify(err, BE) == (
        "unsupported",
        "unsupported: flash_attn.cute refused: FP8 is only supported on SM100",
    )
    assert classify(RuntimeError("CUDA error"), BE)[0] == "error"


# ---- quantization ------------------------------------------------------------------------------
def test_quantize_per_batch_and_kv_head():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 8, 64, generator=g).to(torch.bfloat16)
    x[1, :, 6:8] *= 10  # the last kv head of batch 1 (query heads 6, 7 with 4 kv heads)
    x8, d = fa4_fp8.quantize(x, heads_kv=4)
    assert x8.dtype == torch.float8_e4m3fn and x8.shape == x.shape
    assert d.shape == (2, 4) and d.dtype == torch.float32 and d.is_contiguous()
    grouped = x.float().reshape(2, 50, 4, 2, 64)
    assert torch.allclose(d, grouped.abs().amax(dim=(1, 3, 4)) / 448)
    assert d[1, 3] > 5 * d[1, 2]
    # each (batch, kv head) uses e4m3's whole range, and dequantizes to within its rounding
    amax8 = x8.float().reshape(2, 50, 4, 2, 64).abs().amax(dim=(1, 3, 4))
    assert torch.equal(amax8, torch.full_like(amax8, 448.0))
    back = (x8.float().reshape(2, 50, 4, 2, 64) * d[:, None, :, None, None]).reshape(x.shape)
    assert ((back - x.float()).abs() <= x.float().abs() / 16 + d.max() / 2**9).all()
    zeros, dz = fa4_fp8.quantize(torch.zeros(1, 4, 2, 16, dtype=torch.bfloat16), 2)
    assert torch.equal(dz, torch.ones(1, 2)) and not zeros.float().any()


# ---- the glue, with the fake ----------------------------------------------------------------------
GLUE = [
    Case(2, 8, 2, 128, 200, 64, "bf16", causal=True),  # GQA, bottom-right causal, Sq != Sk
    Case(1, 4, 4, 160, 160, 128, "bf16", window_left=24, window_right=8),
    Case(2, 4, 1, 96, 144, 64, "bf16"),  # MQA, no mask
]


# e4m3 operands cost what they cost even computed exactly from them (this fake): on standard
# normal inputs, cos ~0.9990 and rL1 ~0.045 for out, inside the default fp8 tolerance (rule.py:
# cos >= 0.998, rL1 <= 0.07, the e4m3 floor with margin); the glue is graded by that default.


@pytest.mark.parametrize("case", GLUE, ids=[c.id for c in GLUE])
def test_arguments_and_the_lossy_verdict(case, fa4):
    inp = make_inputs(case, "cpu", seed=0)
    before = [t.clone() for t in (inp.q, inp.k, inp.v)]
    errs = check_backend(BE, case, inp, make_truth(inp, case, grads=False), grads=False)
    assert {e.tensor for e in errs} == {"out", "lse"}
    for e in errs:
        assert e.precision == "fp8" and e.tolerance == lossy_tolerance("fp8")
        assert e.accuracy_ok, vars(e)
    (call,) = fa4.calls
    for name in ("q", "k", "v"):
        assert call[name].dtype == torch.float8_e4m3fn and not call[name].requires_grad
        assert call[name].shape == getattr(inp, name).shape  # (B, S, H, D)
        d = call[f"{name}_descale"]
        assert d.shape == (case.batch, case.heads_kv) and d.dtype == torch.float32
    assert call["softmax_scale"] == case.scale and call["causal"] is case.causal
    assert call["return_lse"] is True
    assert (call["window_size_left"], call["window_size_right"]) == fa4_mod.window_size(case)
    assert call["cu_seqlens_q"] is None and call["page_table"] is None
    for t, t0 in zip((inp.q, inp.k, inp.v), before, strict=True):
        assert torch.equal(t, t0)
    # the quantization, timed apart by perf: the same operands again from the inputs
    p = BE.prepare(inp, case)
    again = BE.quant_fn(p, case)()
    for (x8, d), leaf, name in zip(again, p.leaves, ("q", "k", "v"), strict=True):
        assert torch.equal(x8.view(torch.uint8), leaf.view(torch.uint8))
        assert torch.equal(d, p.args[f"{name}_descale"])


def test_k_outlier_channels_fail_the_fp8_rule(fa4):
    """No K smoothing in FA4's FP8 path: a per-channel offset shared by every token (softmax
    unchanged) costs e4m3 its precision on the part that matters, and the rule says so."""
    std = Case(1, 4, 4, 128, 128, 64, "bf16")
    out = {}
    for case in (std, replace(std, k_channel_offset=4.0)):
        inp = make_inputs(case, "cpu", seed=0)
        errs = check_backend(BE, case, inp, make_truth(inp, case, grads=False), grads=False)
        out[case.k_channel_offset] = {e.tensor: e for e in errs}["out"]
    assert out[4.0].rel_l1 > 2 * out[0.0].rel_l1 and out[4.0].cos_sim < out[0.0].cos_sim
    assert not out[4.0].accuracy_ok and out[4.0].tolerance == lossy_tolerance("fp8")
