"""``naive``: the reference attention run in the input dtype (same-dtype torch).

It is also the baseline of flash-attention's accuracy rule, so its error ratio is 1 by
construction; it is listed so its speed and memory appear next to the kernels. Its block forward
serves the distributed strategies (their backward: the fp32 recomputation).
"""

import torch

from ..problems.attention.reference import attention_ref, case_kwargs
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
        with torch.no_grad():
            out, lse = attention_ref(
                q, k, v, causal=causal, softmax_scale=softmax_scale, upcast=False
            )
        return out, lse.float()
