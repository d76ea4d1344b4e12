"""``piecewise_flex``: piecewise attention as two FlexAttention passes merged by their lse.

Pass A runs ``q1, k1`` on the block mask ``d(i, j) < w`` (and causal), pass B runs ``q2, k2``
on ``d(i, j) >= w``; each returns its log-sum-exp, and the exact result is
``out = e^(lA - l) oA + e^(lB - l) oB`` with ``l = logaddexp(lA, lB)`` (attention-gym's
``merge_attention``), differentiable end to end. Rows where both passes see nothing stay 0
(lse +inf, the project's convention). Block masks are built once per case in ``prepare``;
on CUDA the flex kernel is ``torch.compile``-d (first call per case, outside the timed
region: the accuracy check runs first). On CPU, inductor lowers flex for inference without lse
only, so the CPU runs flex eagerly (the same formulation, unfused), forward only.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

from .base import Backend, Capabilities, Prepared, register


def _raise_recompile_limit(n: int = 256) -> None:
    """Each case's block masks and shapes compile anew; keep dynamo from falling back to the
    (unfused, score-materialising) eager flex after its default 8 recompiles."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), n))


@functools.cache
def _compiled():
    _raise_recompile_limit()
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=8)
def block_masks(seqlen_q: int, seqlen_k: int, w: int, causal: bool, device: str):
    """(near, far) block masks: d(i, j) = i + Sk - Sq - j < w and >= w, causal j <= i + Sk - Sq."""
    off = seqlen_k - seqlen_q

    def near(b, h, i, j):
        d = i + off - j
        return (d < w) & (d >= 0) if causal else d < w

    def far(b, h, i, j):
        d = i + off - j
        return (d >= w) & (d >= 0) if causal else d >= w

    return tuple(
        create_block_mask(m, None, None, seqlen_q, seqlen_k, device=device) for m in (near, far)
    )


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

    def extra_check(self, case, device, mode):
        if device == "cpu" and mode != "fwd":
            return "unsupported: FlexAttention has no backward on CPU"
        return None

    def prepare(self, inp, case):
        cuda = inp.q1.is_cuda
        leaves = tuple(
            t.detach().transpose(1, 2).contiguous().requires_grad_(cuda) for t in inp.differentiable
        )
        dev = str(inp.q1.device)
        near, far = block_masks(case.seqlen_q, case.seqlen_k, case.dist_threshold, case.causal, dev)
        flex = _compiled() if cuda else flex_attention
        return Prepared(leaves, {"near": near, "far": far, "flex": flex})

    def forward(self, p, case):
        q1, k1, q2, k2, v = p.leaves
        flex, kw = p.args["flex"], dict(scale=case.scale, enable_gqa=case.gqa)
        o_a, aux_a = flex(
            q1, k1, v, block_mask=p.args["near"], return_aux=AuxRequest(lse=True), **kw
        )
        o_b, aux_b = flex(
            q2, k2, v, block_mask=p.args["far"], return_aux=AuxRequest(lse=True), **kw
        )
        out, lse = merge_by_lse(o_a, aux_a.lse, o_b, aux_b.lse)
        return out.transpose(1, 2), lse

    def grads(self, p):
        return tuple(t.grad.transpose(1, 2) for t in p.leaves)
