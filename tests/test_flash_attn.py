"""flash-attn backends: packing and varlen logic on CPU, every entry point vs the reference on GPU.

pytest tests/test_flash_attn.py            # CPU: packing, validation, reference semantics
pytest -m gpu tests/test_flash_attn.py     # GPU with flash-attn built: 2x/3x accuracy rule
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import pytest
import torch

from attnbench.backends import REGISTRY
from attnbench.backends import flash_attn as fa
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import alibi_slopes, attention_ref, case_kwargs
from attnbench.run.check import check_backend, make_truth, report_lines

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def _ids(cases):
    return [c.id for c in cases]


def _runs(entry: str, case: Case) -> bool:
    """Which (entry point, case) pairs flash-attn runs (its capabilities, written out)."""
    if case.varlen and "varlen" not in entry:
        return False
    if "qkvpacked" in entry:
        same_lens = case.k_lens == case.seqlens if case.varlen else case.seqlen_q == case.seqlen_k
        return not case.gqa and same_lens
    return True


def _pairs(cases):
    return [
        pytest.param(e, c, id=f"{e}-{c.id}") for e in fa.ENTRY_POINTS for c in cases if _runs(e, c)
    ]


# ---- CPU: packing round-trips and gradients through the packed leaf ---------------------------
PACK_CASES = [
    Case(2, 4, 4, 7, 7, 16, "fp32"),
    Case(2, 4, 4, 6, 6, 16, "fp32", causal=True),
    Case(2, 6, 2, 5, 9, 8, "fp32", causal=True),  # GQA, Sq != Sk
    Case(3, 4, 4, 9, 9, 8, "fp32", seqlens=(1, 9, 4)),
    Case(3, 4, 1, 9, 9, 8, "fp32", causal=True, seqlens=(3, 9, 2), seqlens_k=(5, 4, 2)),
]


def test_pack_unpack_functions_round_trip():
    g = torch.Generator().manual_seed(0)
    for shape_q, shape_kv in [((2, 5, 4, 8), (2, 5, 2, 8)), ((11, 4, 8), (11, 1, 8))]:
        q, k, v = (torch.randn(s, generator=g) for s in (shape_q, shape_kv, shape_kv))
        kv = fa.pack_kv(k, v)
        assert kv.shape == (*shape_kv[:-2], 2, *shape_kv[-2:])
        assert all(torch.equal(a, b) for a, b in zip(fa.unpack_kv(kv), (k, v), strict=True))
        qkv = fa.pack_qkv(q, q + 1, q + 2)
        assert qkv.shape == (*shape_q[:-2], 3, *shape_q[-2:])
        assert all(
            torch.equal(a, b) for a, b in zip(fa.unpack_qkv(qkv), (q, q + 1, q + 2), strict=True)
        )
    x = torch.randn(3, 5, 4, 8, generator=g)
    flat = fa.flatten_batch(x)
    assert flat.shape == (15, 4, 8) and torch.equal(flat[5:10], x[1])
    assert torch.equal(fa.unflatten_batch(flat, 3), x)
    assert fa.dense_cu_seqlens(3, 5).tolist() == [0, 5, 10, 15]
    assert fa.dense_cu_seqlens(3, 5).dtype == torch.int32


def _leaf_shapes(be, case):
    """The packed leaves each entry point takes, written out from flash-attn's docstrings."""
    b, hq, hkv, d = case.batch, case.heads_q, case.heads_kv, case.head_dim
    if be.varlen_api:
        tq = sum(case.seqlens) if case.varlen else b * case.seqlen_q
        tk = sum(case.k_lens) if case.varlen else b * case.seqlen_k
        sq, sk = (tq,), (tk,)
    else:
        sq, sk = (b, case.seqlen_q), (b, case.seqlen_k)
    if be.packing == "qkv":
        return [(*sq, 3, hq, d)]
    if be.packing == "kv":
        return [(*sq, hq, d), (*sk, 2, hkv, d)]
    return [(*sq, hq, d), (*sk, hkv, d), (*sk, hkv, d)]


@pytest.mark.parametrize("entry,case", _pairs(PACK_CASES))
def test_prepare_packs_and_grads_unpack(entry, case):
    """Build the packed leaves, unpack them to q, k, v, run the reference on those and backward:
    ``grads()`` must give exactly the reference's dq, dk, dv taken against the original q, k, v."""
    be = REGISTRY[entry]
    inp = make_inputs(case, "cpu", seed=1)
    p = be.prepare(inp, case)
    assert [tuple(t.shape) for t in p.leaves] == _leaf_shapes(be, case)
    if be.varlen_api:
        lens_q = case.seqlens if case.varlen else (case.seqlen_q,) * case.batch
        lens_k = case.k_lens if case.varlen else (case.seqlen_k,) * case.batch
        for name, lens in (("q", lens_q), ("k", lens_k)):
            cu = p.args[f"cu_seqlens_{name}"]
            assert cu.dtype == torch.int32 and cu.tolist() == np.cumsum((0, *lens)).tolist()
            assert p.args[f"max_seqlen_{name}"] == max(lens)
    assert all(t.is_leaf and t.requires_grad for t in p.leaves)
    assert all(t.data_ptr() != inp.q.data_ptr() for t in p.leaves)  # fresh tensors, no aliasing

    q, k, v = be.unpack(p.leaves, p.args)
    for got, want in zip((q, k, v), (inp.q, inp.k, inp.v), strict=True):
        assert torch.equal(got, want)
    kw = dict(
        alibi_slopes=inp.alibi_slopes,
        cu_seqlens_q=inp.cu_seqlens_q,
        cu_seqlens_k=inp.cu_seqlens_k,
        **case_kwargs(case),
    )
    out, _ = attention_ref(q, k, v, **kw)
    out.backward(inp.dout.to(out.dtype))

    leaves = tuple(t.detach().clone().requires_grad_() for t in (inp.q, inp.k, inp.v))
    out_ref, _ = attention_ref(*leaves, **kw)
    want = torch.autograd.grad(out_ref, leaves, inp.dout.to(out_ref.dtype))
    got = be.grads(p)
    for name, g_, w_ in zip("qkv", got, want, strict=True):
        assert g_.shape == w_.shape, name
        assert torch.equal(g_, w_), f"d{name}"


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_through_varlen_output_layout(causal):
    """A dense batch run as equal-length varlen sequences, converted back, is the dense result:
    out (B*S, H, D) -> (B, S, H, D) and lse (H, B*S) -> (B, H, S)."""
    case = Case(3, 4, 2, 6, 10, 8, "fp32", causal=causal)
    inp = make_inputs(case, "cpu")
    b = case.batch
    cu_q, cu_k = fa.dense_cu_seqlens(b, 6), fa.dense_cu_seqlens(b, 10)
    kw = case_kwargs(case)
    out_v, lse_v = attention_ref(
        fa.flatten_batch(inp.q),
        fa.flatten_batch(inp.k),
        fa.flatten_batch(inp.v),
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        **kw,
    )
    assert lse_v.shape == (4, b * 6)
    out_d, lse_d = attention_ref(inp.q, inp.k, inp.v, **kw)
    out, lse = fa.to_ref_layout(out_v, lse_v, b, None)
    torch.testing.assert_close(out, out_d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, lse_d, rtol=1e-6, atol=1e-6)


# ---- CPU: varlen validation ---------------------------------------------------------------------
VARLEN = Case(3, 2, 2, 9, 9, 8, "fp16", seqlens=(4, 9, 2))


@pytest.mark.parametrize("entry", [e for e in fa.ENTRY_POINTS if "varlen" in e])
@pytest.mark.parametrize(
    "which,bad,match",
    [
        ("cu_seqlens_q", [0, 4, 3, 15], "strictly increasing"),
        ("cu_seqlens_q", [0, 4, 4, 15], "strictly increasing"),
        ("cu_seqlens_k", [0, 4, 13, 14], "ends at 14 but the packed tensor has 15 tokens"),
        ("cu_seqlens_q", [1, 4, 13, 15], "must start at 0"),
        ("cu_seqlens_k", "int64", "must be int32, got torch.int64"),
        ("max_seqlen_q", 8, "longest sequence has 9 tokens but max_seqlen is 8"),
    ],
    ids=["decreasing", "empty-seq", "wrong-total", "nonzero-start", "int64", "max-seqlen"],
)
def test_bad_varlen_input_raises_before_running(entry, which, bad, match):
    inp = make_inputs(VARLEN, "cpu")
    if bad == "int64":
        setattr(inp, which, getattr(inp, which).long())
    elif isinstance(bad, list):
        setattr(inp, which, torch.tensor(bad, dtype=torch.int32))
    else:
        setattr(inp, which, bad)
    with pytest.raises(ValueError, match=match):
        REGISTRY[entry].prepare(inp, VARLEN)


def test_mismatched_sequence_counts_raise():
    inp = make_inputs(VARLEN, "cpu")
    inp.cu_seqlens_k = torch.tensor([0, 6, 15], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q has 3 sequences but cu_seqlens_k has 2"):
        REGISTRY["flash_attn_varlen_func"].prepare(inp, VARLEN)


# ---- CPU: the reference's masks and biases against an explicit double loop ---------------------
def _explicit(
    q, k, v, *, causal, scale, window=(-1, -1), softcap=0.0, slopes=None, alibi_plus_j=False
):
    """Attention of one sequence, float64, one (head, i, j) at a time. ``alibi_plus_j`` uses
    flash-attn's causal-path bias ``+slope * j`` instead of ``-slope * |i + Sk - Sq - j|``."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    out = np.zeros((sq, hq, d))
    lse = np.full((hq, sq), np.inf)
    for h in range(hq):
        hk = h // (hq // hkv)
        for i in range(sq):
            diag = i + sk - sq  # bottom-right alignment
            scores, vals = [], []
            for j in range(sk):
                if causal and j > diag:
                    continue
                if window[0] >= 0 and j < diag - window[0]:
                    continue
                if window[1] >= 0 and j > diag + window[1]:
                    continue
                s = scale * float(np.dot(q[i, h], k[j, hk]))
                if softcap > 0:
                    s = softcap * math.tanh(s / softcap)
                if slopes is not None:  # the bias is formed in fp32, as the reference does
                    slope = np.float32(slopes[h])
                    s += float(
                        slope * np.float32(j)
                        if alibi_plus_j
                        else -slope * np.float32(abs(diag - j))
                    )
                scores.append(s)
                vals.append(v[j, hk])
            if not scores:
                continue
            m = max(scores)
            w = [math.exp(s - m) for s in scores]
            total = sum(w)
            lse[h, i] = m + math.log(total)
            out[i, h] = sum(wi * vi for wi, vi in zip(w, vals, strict=True)) / total
    return out, lse


REF_CASES = [
    dict(sq=5, sk=9, causal=True),
    dict(sq=9, sk=5, causal=True),  # first rows see no key: out 0, lse +inf
    dict(sq=7, sk=7, window=(2, 1)),
    dict(sq=6, sk=11, causal=True, window=(3, -1)),
    dict(sq=8, sk=5, window=(-1, 0)),
    dict(sq=6, sk=6, softcap=0.7),
    dict(sq=5, sk=8, causal=True, alibi=True),
    dict(sq=8, sk=6, alibi=True),
    dict(sq=7, sk=10, causal=True, window=(4, 0), softcap=2.0, alibi=True),
]


@pytest.mark.parametrize("spec", REF_CASES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_reference_matches_explicit_loop(spec):
    spec = dict(spec)
    sq, sk = spec.pop("sq"), spec.pop("sk")
    alibi = spec.pop("alibi", False)
    g = torch.Generator().manual_seed(sq * 31 + sk)
    hq, hkv, d = 4, 2, 8
    # fp32 inputs: the reference then computes in float64, like the loop
    q = torch.randn(1, sq, hq, d, generator=g)
    k = torch.randn(1, sk, hkv, d, generator=g)
    v = torch.randn(1, sk, hkv, d, generator=g)
    slopes = alibi_slopes(hq) if alibi else None
    scale = 0.6
    out, lse = attention_ref(q, k, v, softmax_scale=scale, alibi_slopes=slopes, **spec)
    out_x, lse_x = _explicit(
        q[0],
        k[0],
        v[0],
        scale=scale,
        slopes=slopes,
        causal=spec.get("causal", False),
        window=spec.get("window", (-1, -1)),
        softcap=spec.get("softcap", 0.0),
    )
    np.testing.assert_allclose(out[0].numpy(), out_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse[0].numpy()), np.isinf(lse_x))
    np.testing.assert_allclose(lse[0].numpy(), lse_x, rtol=1e-6)  # lse is returned as fp32


@pytest.mark.parametrize("sq,sk", [(5, 8), (8, 5), (6, 6)])
def test_causal_alibi_lse_shift_maps_flash_attn_convention_to_reference(sq, sk):
    """flash-attn's causal ALiBi (+slope*j) gives the same out, and its lse plus
    ``causal_alibi_lse_shift`` is the reference's lse (dense and varlen layouts)."""
    g = torch.Generator().manual_seed(sq + 10 * sk)
    hq, d = 4, 8
    q, k, v = (torch.randn(s, hq, d, generator=g) for s in (sq, sk, sk))
    slopes = alibi_slopes(hq)
    out_fa, lse_fa = _explicit(q, k, v, causal=True, scale=0.5, slopes=slopes, alibi_plus_j=True)
    out_ref, lse_ref = attention_ref(
        q[None], k[None], v[None], causal=True, softmax_scale=0.5, alibi_slopes=slopes
    )
    np.testing.assert_allclose(out_fa, out_ref[0].numpy(), rtol=1e-10, atol=1e-12)
    shift = fa.causal_alibi_lse_shift(slopes, sq, sk, varlen=False)
    assert shift.shape == (1, hq, sq)
    fixed = torch.from_numpy(lse_fa)[None] + shift.double()  # shift is fp32, like the lse
    torch.testing.assert_close(fixed.float(), lse_ref, rtol=1e-6, atol=1e-6)
    if sq > sk:  # rows without a visible key stay +inf
        assert torch.isinf(fixed[..., : sq - sk]).all()
    # varlen: two sequences, per-sequence offsets, layout (Hq, total_q)
    shift_v = fa.causal_alibi_lse_shift(slopes, (sq, 3), (sk, 4), varlen=True)
    assert shift_v.shape == (hq, sq + 3)
    torch.testing.assert_close(shift_v[:, :sq], shift[0])
    torch.testing.assert_close(shift_v[:, sq:], fa.causal_alibi_lse_shift(slopes, 3, 4, False)[0])


def test_uses_causal_alibi_follows_flash_api_window_rules():
    assert fa.uses_causal_alibi(True, -1, -1, 100)
    assert fa.uses_causal_alibi(True, -1, 7, 100)  # causal overrides window_right
    assert fa.uses_causal_alibi(False, -1, 0, 100)  # window (-1, 0) is causal
    assert fa.uses_causal_alibi(True, 100, -1, 100)  # a window >= seqlen_k is no window
    assert not fa.uses_causal_alibi(True, 99, -1, 100)  # local path: |i - j| bias
    assert not fa.uses_causal_alibi(False, -1, -1, 100)
    assert not fa.uses_causal_alibi(False, -1, 1, 100)


def test_prepare_sets_lse_shift_only_on_flash_attn_causal_path():
    be = REGISTRY["flash_attn_func"]
    for case, has_shift in [
        (Case(1, 4, 4, 5, 8, 8, "fp16", causal=True, alibi=True), True),
        (Case(1, 4, 4, 5, 8, 8, "fp16", alibi=True), False),
        (Case(1, 4, 4, 5, 8, 8, "fp16", causal=True, window_left=3, alibi=True), False),
        (Case(1, 4, 4, 5, 8, 8, "fp16", causal=True), False),
    ]:
        p = be.prepare(make_inputs(case, "cpu"), case)
        assert (p.args["lse_shift"] is not None) == has_shift, case.id


# ---- CPU: without flash-attn ---------------------------------------------------------------------
@pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed here")
def test_registered_but_unavailable_without_flash_attn():
    case = Case(2, 4, 4, 128, 128, 64, "bf16", causal=True)
    assert fa.flash_attn_version() is None
    for entry in fa.ENTRY_POINTS:
        be = REGISTRY[entry]
        assert be.availability("cuda") == "flash-attn not installed"
        assert be.why_unsupported(case, "cuda", "fwd_bwd") == "flash-attn not installed"
        assert "does not run on cpu" in be.why_unsupported(case, "cpu")


@pytest.fixture
def pretend_available(monkeypatch):
    """Capability checks as on a GPU machine with flash-attn (availability forced to None)."""
    monkeypatch.setattr(fa.FlashAttn, "availability", lambda self, device: None)


UNSUPPORTED = [
    ("flash_attn_qkvpacked_func", Case(1, 8, 2, 64, 64, 64, "bf16"), "GQA/MQA"),
    ("flash_attn_qkvpacked_func", Case(1, 8, 8, 64, 128, 64, "bf16"), "seqlen_q != seqlen_k"),
    (
        "flash_attn_varlen_qkvpacked_func",
        Case(2, 8, 8, 9, 9, 64, "bf16", seqlens=(3, 9), seqlens_k=(4, 9)),
        "same q and k sequence lengths",
    ),
    ("flash_attn_func", Case(2, 8, 8, 9, 9, 64, "bf16", seqlens=(3, 9)), "unsupported: varlen"),
    ("flash_attn_kvpacked_func", Case(1, 8, 8, 64, 64, 64, "fp32"), "dtype fp32"),
    ("flash_attn_varlen_func", Case(1, 8, 8, 64, 64, 100, "fp16"), "not a multiple of 8"),
    ("flash_attn_func", Case(1, 8, 8, 64, 64, 264, "fp16"), "head dim 264 > 256"),
]


@pytest.mark.parametrize(
    "entry,case,reason", [pytest.param(*u, id=f"{u[0]}-{u[1].id}") for u in UNSUPPORTED]
)
def test_unsupported_reasons(pretend_available, entry, case, reason):
    why = REGISTRY[entry].why_unsupported(case, "cuda", "fwd_bwd")
    assert why is not None and reason in why


@pytest.mark.parametrize("entry", fa.ENTRY_POINTS)
def test_supported_cases(pretend_available, entry):
    cases = [
        Case(
            2,
            8,
            8,
            128,
            128,
            256,
            "fp16",
            causal=True,
            window_left=16,
            softcap=30.0,
            alibi=True,
            deterministic=True,
        ),
        Case(2, 8, 8, 128, 128, 8, "bf16"),
    ]
    if "qkvpacked" not in entry:
        cases.append(Case(2, 8, 2, 100, 300, 64, "bf16", causal=True))
    if "varlen" in entry:
        cases.append(Case(4, 8, 8, 1023, 1023, 64, "fp16", seqlens=(1, 300, 17, 1023)))
    for case in cases:
        assert REGISTRY[entry].why_unsupported(case, "cuda", "fwd_bwd") is None, case.id


# ---- GPU: every entry point against the reference (flash-attention's 2x / 3x rule) -------------
needs_flash_attn = pytest.mark.skipif(
    not (HAS_FLASH_ATTN and torch.cuda.is_available()), reason="needs a CUDA GPU and flash-attn"
)

AWKWARD = (1, 300, 17, 1023)
GPU_CASES = [
    c
    for dt in ("fp16", "bf16")
    for c in (
        Case(2, 4, 4, 256, 256, 64, dt),
        Case(2, 6, 6, 1000, 1000, 128, dt, causal=True),
        Case(2, 8, 2, 511, 1024, 64, dt, causal=True),  # GQA, Sq < Sk
        Case(1, 8, 1, 700, 300, 128, dt, causal=True),  # MQA, Sq > Sk: rows with no key
        Case(4, 4, 4, AWKWARD[-1], AWKWARD[-1], 64, dt, causal=True, seqlens=AWKWARD),
        Case(
            4, 8, 2, 1023, 1000, 128, dt, causal=True, seqlens=AWKWARD, seqlens_k=(5, 300, 40, 1000)
        ),
    )
] + [
    Case(3, 4, 4, 384, 384, 256, "fp16", window_left=64, window_right=16),
    Case(2, 4, 2, 384, 512, 96, "bf16", causal=True, window_left=100),
    Case(2, 4, 4, 300, 300, 64, "fp16", causal=True, softcap=30.0),
    Case(2, 4, 4, 300, 300, 128, "bf16", softcap=5.0),
    Case(2, 8, 8, 500, 700, 64, "fp16", causal=True, alibi=True),  # flash-attn's +slope*j path
    Case(2, 8, 8, 400, 400, 64, "bf16", alibi=True),
    Case(2, 8, 8, 400, 400, 64, "fp16", window_left=32, window_right=32, alibi=True),
    Case(4, 4, 4, 1023, 1023, 64, "bf16", causal=True, alibi=True, seqlens=AWKWARD),
    Case(2, 4, 4, 256, 256, 64, "fp16", causal=True, softmax_scale=0.5),
    Case(2, 4, 4, 512, 512, 128, "bf16", causal=True, deterministic=True),
]


@functools.cache
def _truth(case: Case):
    """fp32 reference and same-dtype torch errors for the case's seed-0 inputs (shared by the
    six entry points)."""
    return make_truth(make_inputs(case, "cuda", seed=0), case)


def _run(be, case, inp):
    p = be.prepare(inp, case)
    out, lse = be.forward(p, case)
    out.backward(inp.dout)
    return out.detach(), lse.detach(), *be.grads(p)


@pytest.mark.gpu
@needs_flash_attn
@pytest.mark.parametrize("entry,case", _pairs(GPU_CASES))
def test_entry_point_matches_reference(entry, case):
    """out and lse within 2x, dq/dk/dv within 3x the error of same-dtype torch (attnbench.run.check,
    the rule every accuracy run and perf verdict uses)."""
    be = REGISTRY[entry]
    assert be.why_unsupported(case, "cuda", "fwd_bwd") is None
    errors = check_backend(be, case, make_inputs(case, "cuda", seed=0), _truth(case))
    assert [e.tensor for e in errors] == ["out", "lse", "dq", "dk", "dv"]
    assert all(e.accuracy_ok for e in errors), "\n".join([case.id, *report_lines(errors)])


DET = Case(2, 4, 2, 512, 768, 128, "bf16", causal=True, deterministic=True)
DET_VARLEN = Case(4, 4, 4, 1023, 1023, 64, "fp16", causal=True, deterministic=True, seqlens=AWKWARD)


@pytest.mark.gpu
@needs_flash_attn
@pytest.mark.parametrize("entry,case", _pairs([DET, DET_VARLEN]))
def test_deterministic_backward_is_bitwise_repeatable(entry, case):
    be = REGISTRY[entry]
    inp = make_inputs(case, "cuda", seed=3)
    first, second = _run(be, case, inp), _run(be, case, inp)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), name
