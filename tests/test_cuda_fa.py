"""In-repo CUDA FlashAttention (cuda_fa2, cuda_fa1: out, lse, dq, dk, dv; cuda_fa2_simt: out, lse)
against the fp32 reference with flash-attention's rule (<= 2x same-dtype torch for out/lse,
<= 3x for gradients), on awkward shapes: sequence lengths off the block sizes, Sq != Sk causal
(including rows with no visible key), GQA, batch > 1, head dims 64/128, fp16/bf16.

pytest -m gpu tests/test_cuda_fa.py      # builds the extension on first use (~1-2 minutes)
"""

from __future__ import annotations

import functools

import pytest
import torch

from attnbench.backends import REGISTRY
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.run.check import check_backend, make_truth, report_lines

pytestmark = pytest.mark.gpu

CASES = [
    Case(2, 4, 4, 1000, 1000, 64, "fp16"),
    Case(2, 4, 4, 1000, 1000, 128, "bf16", causal=True),
    Case(2, 8, 2, 1000, 1000, 64, "bf16", causal=True),  # GQA 4:1
    Case(2, 6, 3, 4001, 4001, 128, "fp16"),  # GQA 2:1, long, off the block sizes
    Case(1, 4, 4, 4001, 4001, 64, "bf16", causal=True),
    Case(2, 4, 2, 1000, 4001, 128, "fp16", causal=True),  # Sq < Sk, bottom-right diagonal
    Case(2, 4, 4, 4001, 1000, 64, "fp16", causal=True),  # Sq > Sk: 3001 rows see no key
    Case(2, 4, 4, 333, 77, 128, "bf16"),
    Case(1, 2, 1, 1, 130, 64, "fp16", causal=True),  # single query row
    Case(1, 2, 2, 200, 200, 64, "bf16", softmax_scale=0.3),
]
BACKENDS = ("cuda_fa2", "cuda_fa1", "cuda_fa2_simt")


@functools.lru_cache(maxsize=4)
def _truth(case: Case):
    inp = make_inputs(case, "cuda", seed=0)
    return inp, make_truth(inp, case, grads=True)


def _require(name: str, case: Case, mode: str):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    why = REGISTRY[name].why_unsupported(case, "cuda", mode)
    if why:
        pytest.fail(f"{name} cannot run {case.id}: {why}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("name", BACKENDS)
def test_accuracy(name, case):
    be = REGISTRY[name]
    grads = be.caps.backward
    _require(name, case, "fwd_bwd" if grads else "fwd")
    inp, truth = _truth(case)
    errors = check_backend(be, case, inp, truth, grads=grads)
    assert {e.tensor for e in errors} == (
        {"out", "lse", "dq", "dk", "dv"} if grads else {"out", "lse"}
    )
    bad = [e.tensor for e in errors if not e.accuracy_ok]
    assert not bad, f"{name} {case.id}: {bad} fail the rule\n" + "\n".join(report_lines(errors))


@pytest.mark.parametrize("name", ["cuda_fa2", "cuda_fa1"])
def test_empty_rows_and_determinism(name):
    """Rows with no visible key give out 0 and lse +inf; two backward runs are bitwise equal."""
    case = Case(1, 4, 2, 300, 100, 64, "bf16", causal=True)
    _require(name, case, "fwd_bwd")
    be = REGISTRY[name]
    inp = make_inputs(case, "cuda", seed=1)
    runs = []
    for _ in range(2):
        p = be.prepare(inp, case)
        out, lse = be.forward(p, case)
        out.backward(inp.dout)
        runs.append((out.detach(), lse, *be.grads(p)))
    out, lse = runs[0][0], runs[0][1]
    empty = case.seqlen_q - case.seqlen_k  # rows i < Sq - Sk see no key
    assert torch.all(out[:, :empty] == 0)
    assert torch.all(torch.isinf(lse[:, :, :empty])) and torch.all(lse[:, :, :empty] > 0)
    assert torch.isfinite(lse[:, :, empty:]).all()
    for a, b in zip(runs[0], runs[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", BACKENDS)
def test_strided_inputs(name):
    """Non-contiguous q/k/v views (a packed qkv tensor) give the same result as contiguous."""
    case = Case(2, 4, 4, 257, 257, 64, "fp16", causal=True)
    _require(name, case, "fwd")
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2, 257, 3, 4, 64, device="cuda", generator=g).half()
    q, k, v = qkv.unbind(2)
    from attnbench.kernels.cuda.interface import flash_attn_cuda

    kernel = REGISTRY[name].kernel
    o1, l1 = flash_attn_cuda(q, k, v, causal=True, kernel=kernel)
    o2, l2 = flash_attn_cuda(
        q.contiguous(), k.contiguous(), v.contiguous(), causal=True, kernel=kernel
    )
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
