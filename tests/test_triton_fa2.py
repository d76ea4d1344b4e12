"""Tests of the ``triton_fa2`` backend through the harness (flash-attention's accuracy rule).

CPU: the kernels run in Triton's interpreter. Without a GPU this module sets
``TRITON_INTERPRET=1`` before the kernels are imported (the README's test command exports it for
the whole run anyway). fp16 and fp32 only: the interpreter's bf16 ``tl.dot`` is wrong.
GPU (``pytest -m gpu``): bigger shapes, bf16, head dim 256, determinism.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from attnbench.backends import REGISTRY  # noqa: E402
from attnbench.problems.attention import AttentionCase as Case  # noqa: E402
from attnbench.problems.attention.inputs import make_inputs  # noqa: E402
from attnbench.run.check import check_backend, make_truth, report_lines  # noqa: E402

BACKEND = REGISTRY["triton_fa2"]
CPU_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


def _case(b, hq, hkv, sq, sk, d, dtype, causal, scale=None, seqlens=None, seqlens_k=None):
    return Case(
        batch=b,
        heads_q=hq,
        heads_kv=hkv,
        seqlen_q=sq,
        seqlen_k=sk,
        head_dim=d,
        dtype=dtype,
        causal=causal,
        softmax_scale=scale,
        seqlens=seqlens,
        seqlens_k=seqlens_k,
    )


def _varlen(lens, lens_k, hq, hkv, d, dtype, causal):
    return _case(
        len(lens),
        hq,
        hkv,
        max(lens),
        max(lens_k or lens),
        d,
        dtype,
        causal,
        seqlens=tuple(lens),
        seqlens_k=tuple(lens_k) if lens_k else None,
    )


# Each case is a few interpreter seconds: tiles are 32x16, so 67/130 rows leave ragged edges,
# and the causal diagonal crosses several key tiles.
CPU_CASES = [
    _case(2, 2, 2, 67, 67, 32, "fp16", False),
    _case(1, 4, 2, 67, 130, 64, "fp32", True),  # GQA 4/2, Sq < Sk, bottom-right causal
    _case(1, 4, 1, 130, 67, 96, "fp16", True),  # MQA, Sq > Sk: rows with no visible key
    _case(1, 2, 2, 130, 67, 64, "fp16", False),
    _case(2, 2, 2, 40, 40, 128, "fp16", True, scale=0.3),
    _varlen([1, 37, 80], None, 4, 2, 64, "fp16", True),
    _varlen([5, 37, 80], [20, 3, 90], 2, 2, 32, "fp32", False),
]

GPU_CASES = [
    _case(2, 8, 8, 1000, 1000, 64, "bf16", True),
    _case(2, 8, 2, 1000, 1000, 128, "fp16", False),
    _case(1, 6, 2, 777, 1537, 96, "bf16", True),
    _case(1, 6, 6, 1537, 777, 128, "bf16", True),
    _case(2, 4, 1, 513, 513, 256, "bf16", True),
    _case(2, 4, 4, 600, 600, 256, "fp16", False),
    _case(1, 4, 4, 300, 300, 64, "fp32", True),
    _case(4, 16, 16, 2048, 2048, 128, "bf16", True),
    _varlen([1, 129, 1000, 333], None, 8, 2, 128, "bf16", True),
    _varlen([300, 17, 900], [500, 64, 700], 4, 4, 64, "fp16", False),
]


def _grade(case, device):
    why = BACKEND.why_unsupported(case, device, "fwd_bwd")
    assert why is None, why
    inp = make_inputs(case, device, seed=0)
    truth = make_truth(inp, case)
    errors = check_backend(BACKEND, case, inp, truth)
    assert {e.tensor for e in errors} == {"out", "lse", "dq", "dk", "dv"}
    bad = [e for e in errors if not e.accuracy_ok]
    assert not bad, f"{case.id}\n" + "\n".join(report_lines(errors))


@pytest.mark.skipif(CPU_DEVICE is None, reason="needs TRITON_INTERPRET=1 (set without a GPU)")
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_accuracy_interpreter(case):
    _grade(case, "cpu")


@pytest.mark.skipif(CPU_DEVICE is None, reason="needs TRITON_INTERPRET=1 (set without a GPU)")
def test_interpreter_refuses_bf16():
    case = _case(1, 2, 2, 16, 16, 32, "bf16", False)
    assert "bf16" in BACKEND.why_unsupported(case, "cpu", "fwd")


def test_capabilities():
    caps = BACKEND.caps
    assert caps.varlen and caps.lse and caps.gqa and caps.backward and caps.seqlen_q_ne_k
    assert caps.max_head_dim == 256 and "cuda" in caps.devices
    assert ("cpu" in caps.devices) == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.id)
def test_accuracy_gpu(case):
    _grade(case, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_deterministic_gpu(causal):
    from attnbench.kernels.triton_fa2 import flash_attn

    case = _case(2, 8, 2, 1024, 1024, 128, "bf16", causal)
    inp = make_inputs(case, "cuda", seed=1)
    grads = []
    for _ in range(2):
        q, k, v = (t.detach().clone().requires_grad_() for t in (inp.q, inp.k, inp.v))
        out, _ = flash_attn(q, k, v, causal=causal)
        out.backward(inp.dout)
        grads.append((q.grad, k.grad, v.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_block_backward_is_the_kernel_backward():
    """The block backward used by ring/zigzag attention equals autograd through the kernel."""
    from attnbench.backends import REGISTRY
    from attnbench.problems.attention.inputs import make_inputs

    be = REGISTRY["triton_fa2"]
    case = Case(2, 4, 2, 40, 40, 32, "fp16", causal=True)
    if be.why_unsupported(case, "cpu" if not torch.cuda.is_available() else "cuda"):
        pytest.skip("triton_fa2 not runnable here")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    inp = make_inputs(case, dev)
    p = be.prepare(inp, case)
    out, lse = be.forward(p, case)
    out.backward(inp.dout)
    got = be.block_backward(
        inp.dout, inp.q, inp.k, inp.v, out.detach(), lse.detach(), True, case.scale
    )
    for g, w in zip(got, be.grads(p)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
