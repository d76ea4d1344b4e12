"""``piecewise_flex``: piecewise attention as two FlexAttention passes merged by their lse.

Pass A runs ``q1, k1`` on the block mask ``d(i, j) < w`` (and causal), pass B runs ``q2, k2``
on ``d(i, j) >= w``; each returns its log-sum-exp, and the exact result is
``out = e^(lA - l) oA + e^(lB - l) oB`` with ``l = logaddexp(lA, lB)`` (attention-gym's
``merge_attention``), differentiable end to end. Rows where both passes see nothing stay 0
(lse +inf, the project's convention). Block masks are built once per case in ``prepare``;
on CUDA the flex kernel is ``torch.compile``-d (first call per case, outside the timed
region: the accuracy check runs first). On CPU, inductor lowers flex for inference without lse
only, so the CPU runs flex eagerly (the same formulation, unfused), forward only. In fp32 that
eager lse arrives up to ~3 ulp off (torch computes ``logsumexp((q @ k^T) * scale)`` in fp32, then
divides and multiplies it by ln 2); the merge adds no error of its own (tests/test_piecewise.py).
"""

from __future__ import annotations

import functools

import torch

from .base import Backend, Capabilities, Prepared, register
from .flex import compiled_flex, flex_api, flex_call, flex_limits, to_flex_layout


@functools.lru_cache(maxsize=8)
def block_masks(seqlen_q: int, seqlen_k: int, w: int, causal: bool, device: str):
    """(near, far) block masks: d(i, j) = i + Sk - Sq - j < w and >= w, causal j <= i + Sk - Sq.
    The threshold is a captured 0-d tensor, not a Python int: dynamo guards on an int in a
    mask's closure and compiles anew for every threshold, but only on a tensor's metadata, so
    cases of one shape share their compiled passes (CPU, torch 2.13: 3 thresholds, 5 graphs in
    18 s as ints, 2 in 5 s as a tensor, outputs equal to eager)."""
    off = seqlen_k - seqlen_q
    wt = torch.tensor(w, device=device)

    def near(b, h, i, j):
        d = i + off - j
        return (d < wt) & (d >= 0) if causal else d < wt

    def far(b, h, i, j):
        d = i + off - j
        return (d >= wt) & (d >= 0) if causal else d >= wt

    make = flex_api().create_block_mask
    return tuple(make(m, None, None, seqlen_q, seqlen_k, device=device) for m in (near, far))


def merge_by_lse(o_a, l_a, o_b, l_b):
    """Exact merge of two attention passes over disjoint keys, (B, H, S, D) outs, (B, H, S)
    lse (-inf: the pass saw no key). Returns (out, lse) with lse +inf where neither saw any."""
    empty = torch.isneginf(l_a) & torch.isneginf(l_b)
    l_a, l_b = (torch.where(empty, 0.0, t) for t in (l_a, l_b))  # no NaN, no NaN gradient
    lse = torch.logaddexp(l_a, l_b)
    w_a, w_b = ((t - lse).exp().masked_fill(empty, 0.0)[..., None] for t in (l_a, l_b))
    out = w_a * o_a.float() + w_b * o_b.float()
    return out.to(o_a.dtype), lse.masked_fill(empty, float("inf"))


@register
class PiecewiseFlex(Backend):
    name = "piecewise_flex"
    description = "FlexAttention, two passes (q1.k1 near, q2.k2 far) merged by lse"
    caps = Capabilities(problem="piecewise", devices={"cpu", "cuda"}, lse=True)

    def availability(self, device):
        return None if flex_api() else f"torch {torch.__version__} has no FlexAttention"

    def extra_check(self, case, device, mode):
        return flex_limits(case, device, mode)

    def prepare(self, inp, case):
        cuda = inp.q1.is_cuda  # the CPU's flex is inference only: inputs must not need grad
        leaves = tuple(to_flex_layout(t, False).requires_grad_(cuda) for t in inp.differentiable)
        dev = str(inp.q1.device)
        near, far = block_masks(case.seqlen_q, case.seqlen_k, case.dist_threshold, case.causal, dev)
        attend = compiled_flex(differentiable_lse=True) if cuda else flex_call(True)
        return Prepared(leaves, {"near": near, "far": far, "attend": attend})

    def forward(self, p, case):
        q1, k1, q2, k2, v = p.leaves
        attend = p.args["attend"]
        o_a, l_a = attend(q1, k1, v, None, p.args["near"], case.scale, case.gqa, None, True)
        o_b, l_b = attend(q2, k2, v, None, p.args["far"], case.scale, case.gqa, None, True)
        out, lse = merge_by_lse(o_a, l_a, o_b, l_b)
        return out.transpose(1, 2), lse

    def grads(self, p):
        return tuple(t.grad.transpose(1, 2) for t in p.leaves)
