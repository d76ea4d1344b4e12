"""``flag_attn_flash``: FlagAttention's ``flag_attn.flash_attention`` (its FlashAttention-2 in
Triton, forward and backward), benchmarked as shipped on the attention problem (a comparison
target; nothing of it is part of attnbench). Not on the package registry: put its ``src`` on
``PYTHONPATH`` (see ``flag_attn_piecewise``); without it: ``flag_attn not installed``.

``flash_attention(q, k, v, causal=False, sm_scale=None, dropout_p=0.0,
return_log_normalizer=False, return_total_attention=False, return_seed_offset=False)``
(``flash.py``), called with ``return_log_normalizer=True``, returns ``(out, log_normalizer,
None, None, None)``:

- Layout (B, H, S, D): ``prepare`` makes transposed contiguous copies, the leaves (gradients
  are taken against them); ``forward`` and ``grads`` transpose back.
- The log-normalizer (B, Hq, Sq) is ``m * sm_scale + log(l)``: the natural-log lse, graded.
- Causal is bottom-right (``P_SEQ = N - M``; rows with no visible key get out 0 and lse -inf),
  so seqlen_q != seqlen_k runs. GQA/MQA native (``H % Hk == 0``; dk/dv summed over the group).
- Head dims 16/32/64/128 (``assert Dk in {16, 32, 64, 128}``); fp16/bf16 (its README: "float16
  and bfloat16 for Ampere Nvidia GPUs"). No varlen, window, softcap or ALiBi. Dropout is left
  at 0. Deterministic: its backward is two kernels (dk/dv, then dq) with no atomic additions
  (README: "This alternation avoids atomic additions").
- With few (batch x heads x q-blocks) programs its forward switches to its split-KV kernels,
  whose partials are hard-coded fp16 (the same as ``flag_attn_split_kv``): in the graded out.
- Its tile configs exist for sm80/sm86 only; elsewhere it runs 32x32 tiles, 1 stage.
- Tensors of 2^31 elements or more are refused (int32 offsets in its kernels would wrap).
"""

from __future__ import annotations

from .base import Backend, Capabilities, Prepared, register
from .flag_attn_decode import INT32_ELEMENTS, flag_attn_availability, flag_attn_refusal


@register
class FlagAttnFlash(Backend):
    name = "flag_attn_flash"
    description = "FlagAttention's flash_attention (Triton FA2 fwd+bwd), as shipped"
    caps = Capabilities(
        problem="attention",
        devices={"cuda"},
        dtypes={"fp16", "bf16"},
        head_dims={16, 32, 64, 128},
        causal=True,
        gqa=True,
        seqlen_q_ne_k=True,
        varlen=False,
        backward=True,
        lse=True,
        deterministic=True,
    )

    def availability(self, device):
        return flag_attn_availability(device, "flash_attention")

    def extra_check(self, case, device, mode):
        big = max(case.seqlen_q * case.heads_q, case.seqlen_k * case.heads_q)
        n = case.batch * big * case.head_dim  # its dk/dv are (B, Hq, Sk, D) before the sum
        if n >= INT32_ELEMENTS:
            return (
                f"unsupported: {n} elements in one tensor (>= 2^31): FlagAttention's Triton "
                "kernels compute offsets in int32, which would wrap"
            )
        return None

    def refusal(self, e):
        return flag_attn_refusal(e)

    def prepare(self, inp, case):
        leaves = tuple(
            t.detach().transpose(1, 2).contiguous().requires_grad_() for t in inp.differentiable
        )
        return Prepared(leaves)

    def forward(self, p, case):
        import flag_attn

        res = flag_attn.flash_attention(
            *p.leaves, causal=case.causal, sm_scale=case.scale, return_log_normalizer=True
        )
        out, lse = res[0], res[1]
        return out.transpose(1, 2), lse

    def grads(self, p):
        return tuple(t.grad.transpose(1, 2) for t in p.leaves)
