"""``naive``: the reference attention run in the input dtype (same-dtype torch).

It is also the baseline of flash-attention's accuracy rule, so its error ratio is 1 by
construction; it is listed so its speed and memory appear next to the kernels. Its block forward
serves the distributed strategies (their backward: the fp32 recomputation).
"""

import torch

from ..problems.attention.reference import (
    attention_ref,
    case_kwargs,
    repeat_kv,
    softmax_rows,
    visible_mask,
)
from .base import Backend, Capabilities, register


@register
class Naive(Backend):
    name = "naive"
    description = "reference attention in the input dtype (materialises S and P)"
    caps = Capabilities(
        devices={"cpu", "cuda"},
        varlen=True,
        lse=True,
        window=True,
        softcap=True,
        alibi=True,
        deterministic=True,
        block=True,
    )

    def forward(self, p, case):
        q, k, v = p.leaves
        inp = p.args["inputs"]
        return attention_ref(
            q,
            k,
            v,
            upcast=False,
            alibi_slopes=inp.alibi_slopes,
            cu_seqlens_q=inp.cu_seqlens_q,
            cu_seqlens_k=inp.cu_seqlens_k,
            **case_kwargs(case),
        )

    def block_forward(self, q, k, v, causal, softmax_scale):
        """The reference in the input dtype (same scores, softmax and out as ``forward``), with
        the lse reduced in fp32: a distributed merge weights each block by exp(lse_b - lse), so
        an lse rounded to bf16 (up to 0.03 off) cost the merged out a few percent per block."""
        with torch.no_grad():
            k, v = repeat_kv(q.shape[2], k, v)
            s = torch.einsum("bqhd,bkhd->bhqk", q * softmax_scale, k)
            mask = visible_mask(q.shape[1], k.shape[1], causal, device=q.device)
            out, _ = softmax_rows(s, v, mask)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            lse = torch.logsumexp(s.float(), dim=-1)
        return out, lse.masked_fill(torch.isneginf(lse), float("inf"))
