"""``flag_attn_piecewise``: FlagAttention's own ``flag_attn.piecewise_attention``, benchmarked
as shipped (a comparison target; nothing of it is part of attnbench).

FlagAttention is not on the package registry: put its ``src`` on ``PYTHONPATH`` (see the README).
It takes (B, H, S, D) tensors, head dims 16/32/64/128, the same heads for q and k/v, returns
the output only (no lse), and compiles its kernels per threshold (``w`` is a constexpr).
"""

from __future__ import annotations

import importlib.util

from .base import Backend, Capabilities, Prepared, register


@register
class FlagAttnPiecewise(Backend):
    name = "flag_attn_piecewise"
    description = "FlagAttention's piecewise_attention (Triton), as shipped"
    caps = Capabilities(
        problem="piecewise", dtypes={"fp16", "bf16"}, head_dims={16, 32, 64, 128}, gqa=False
    )

    def availability(self, device):
        if importlib.util.find_spec("flag_attn") is None:
            return "flag_attn not installed"
        try:
            import flag_attn  # noqa: F401
        except Exception as e:
            return f"flag_attn not importable: {type(e).__name__}: {e}"
        return None

    def prepare(self, inp, case):
        leaves = tuple(
            t.detach().transpose(1, 2).contiguous().requires_grad_() for t in inp.differentiable
        )
        return Prepared(leaves)

    def forward(self, p, case):
        import flag_attn

        out = flag_attn.piecewise_attention(
            *p.leaves, case.dist_threshold, causal=case.causal, sm_scale=case.scale
        )
        return out.transpose(1, 2), None

    def grads(self, p):
        return tuple(t.grad.transpose(1, 2) for t in p.leaves)
