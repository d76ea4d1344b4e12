"""The reference attention against an independent float64 loop, and its chunked form."""

import math

import pytest
import torch

from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.case import attended_pairs
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import attention_ref, case_kwargs, reference


def loop_attention(q, k, v, causal, scale, hq_per_kv):
    """Textbook attention, one (b, h, i) row at a time in float64, bottom-right causal."""
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    out = torch.zeros(b, sq, hq, d, dtype=torch.float64)
    lse = torch.full((b, hq, sq), math.inf, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            kh = h // hq_per_kv
            for i in range(sq):
                keys = [j for j in range(sk) if not causal or j <= i + sk - sq]
                if not keys:
                    continue
                s = torch.tensor(
                    [float(q[bi, i, h].double() @ k[bi, j, kh].double()) * scale for j in keys],
                    dtype=torch.float64,
                )
                m = s.max()
                w = torch.exp(s - m)
                lse[bi, h, i] = m + torch.log(w.sum())
                out[bi, i, h] = (w[:, None] * v[bi, keys, kh].double()).sum(0) / w.sum()
    return out, lse


SHAPES = [
    Case(2, 2, 2, 5, 5, 8, "fp32", causal=False),
    Case(2, 4, 2, 7, 7, 8, "fp32", causal=True),
    Case(1, 2, 1, 3, 9, 8, "fp32", causal=True, softmax_scale=0.3),  # Sq < Sk: bottom-right
    Case(1, 2, 2, 9, 4, 8, "fp32", causal=True),  # Sq > Sk: first rows see nothing
]


@pytest.mark.parametrize("case", SHAPES, ids=lambda c: c.id)
def test_reference_matches_loop(case):
    inp = make_inputs(case)
    out, lse = attention_ref(inp.q, inp.k, inp.v, causal=case.causal, softmax_scale=case.scale)
    out_l, lse_l = loop_attention(
        inp.q, inp.k, inp.v, case.causal, case.scale, case.heads_q // case.heads_kv
    )
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, out_l, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse.double(), lse_l, rtol=1e-6, atol=1e-6)
    if case.seqlen_q > case.seqlen_k and case.causal:
        assert torch.isinf(lse[:, :, 0]).all() and (out[:, 0] == 0).all()


def test_same_dtype_is_lower_precision():
    case = Case(2, 4, 4, 64, 64, 32, "bf16", causal=True)
    inp = make_inputs(case)
    hi, _ = attention_ref(inp.q, inp.k, inp.v, causal=True)
    lo, _ = attention_ref(inp.q, inp.k, inp.v, causal=True, upcast=False)
    assert hi.dtype == torch.float32 and lo.dtype == torch.bfloat16
    err = (lo.float() - hi).abs().max().item()
    assert 1e-4 < err < 5e-2


def test_varlen_is_per_sequence():
    case = Case(3, 4, 2, 20, 20, 16, "fp32", causal=True, seqlens=(1, 20, 7))
    inp = make_inputs(case)
    out, lse = attention_ref(
        inp.q,
        inp.k,
        inp.v,
        causal=True,
        cu_seqlens_q=inp.cu_seqlens_q,
        cu_seqlens_k=inp.cu_seqlens_k,
    )
    c = inp.cu_seqlens_q.tolist()
    for i in range(3):
        s = slice(c[i], c[i + 1])
        o, l = attention_ref(inp.q[None, s], inp.k[None, s], inp.v[None, s], causal=True)
        torch.testing.assert_close(out[s], o[0])
        torch.testing.assert_close(lse[:, s], l[0])


@pytest.mark.parametrize(
    "case",
    [Case(3, 4, 2, 33, 40, 16, "fp16", causal=True), Case(2, 6, 3, 17, 17, 8, "fp32")],
    ids=lambda c: c.id,
)
def test_chunked_reference_equals_whole(case):
    """reference() splits (batch, kv head) into chunks; results and grads must not change."""
    inp = make_inputs(case)
    whole = reference(inp, case, budget_bytes=1 << 40)
    chunked = reference(inp, case, budget_bytes=1)  # one (batch, kv head) per chunk
    for t in ("out", "lse", "dq", "dk", "dv"):  # same math, summation order may differ
        torch.testing.assert_close(getattr(chunked, t), getattr(whole, t), rtol=1e-5, atol=1e-6)
    # and the grads are autograd's of the dense reference
    q, k, v = (t.detach().double().requires_grad_() for t in (inp.q, inp.k, inp.v))
    out, _ = attention_ref(q, k, v, alibi_slopes=inp.alibi_slopes, **case_kwargs(case))
    out.backward(inp.dout.double())
    for name, leaf in (("dq", q), ("dk", k), ("dv", v)):
        torch.testing.assert_close(getattr(whole, name).double(), leaf.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "sq,sk,causal,wl,wr",
    [
        (7, 7, True, -1, -1),
        (3, 9, True, -1, -1),
        (9, 3, True, -1, -1),
        (10, 10, False, 2, 1),
        (5, 12, True, 3, -1),
        (8, 8, False, -1, -1),
    ],
)
def test_attended_pairs_counts_the_mask(sq, sk, causal, wl, wr):
    from attnbench.problems.attention.reference import visible_mask

    m = visible_mask(sq, sk, causal, wl, wr)
    expected = sq * sk if m is None else int(m.sum())
    assert attended_pairs(sq, sk, causal, wl, wr) == expected
