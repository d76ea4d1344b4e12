"""``flash_attn_kvcache``: upstream flash-attn 2's ``flash_attn_with_kvcache``, its decode entry
point (the split-KV "flash-decoding" kernel), on the decode problem's cache as it is::

    attnbench perf --sweep decode_seqlen --only flash_attn_kvcache,decode_triton

The call, in the layouts :class:`~attnbench.problems.decode.DecodeInputs` already has (nothing
is copied; ``prepare`` only hands the tensors over)::

    out, lse = flash_attn_with_kvcache(
        q,                        # (B, q_len, Hq, D)
        k_cache, v_cache,         # (B, S_max, Hkv, D), or pages (num_pages, page_size, Hkv, D)
        cache_seqlens=cache_lens, # int32 (B,): keys per sequence, the q_len new tokens included
        block_table=block_table,  # int32 (B, max_pages), None for a contiguous cache
        softmax_scale=scale, causal=True, return_softmax_lse=True, num_splits=0)

- ``causal=True`` is flash-attn's bottom-right alignment against each sequence's
  ``cache_seqlens`` (its docstring: "the causal mask is aligned to the bottom right corner"),
  which is the decode problem's convention: token ``i`` of a length-``n`` sequence sees keys
  ``j <= n - q_len + i``. No ``k``/``v`` are passed, so nothing is appended to the cache.
- ``out`` is (B, q_len, Hq, D) in q's dtype and ``lse`` fp32 (B, Hq, q_len), natural log
  ("the logsumexp of each row of the matrix QK^T * scaling"): both already attnbench's layout.
- ``num_splits=0`` lets flash-attn's heuristic choose the number of KV splits inside the C++
  call; it does not report its choice, so ``kernel_config`` is None.
- Paged caches: flash-attn 2 takes pages that are a multiple of 256 keys only. The rule, as
  read in upstream's sources (Dao-AILab/flash-attention, main branch):
  ``csrc/flash_attn/flash_api.cpp`` ``mha_fwd_kvcache`` checks
  ``TORCH_CHECK(!paged_KV || page_block_size % 256 == 0, "Paged KV cache block size must be
  divisible by 256")``, and ``flash_attn_with_kvcache``'s docstring says "page_block_size must
  be a multiple of 256". Other page sizes are ``unsupported`` rows before anything runs (forks
  such as vLLM's relax it to 16; this backend is upstream's).
- Head dims that are not a multiple of 8 are refused: ``mha_fwd_kvcache`` would pad the whole
  K and V caches (a copy of the cache) inside the timed call.
- fp16/bf16 only, head dim <= 256, sm80 or newer, flash-attn >= 2.6: the availability of the
  ``flash_attn_func`` backend (:mod:`attnbench.backends.flash_attn`) is this one's too.
"""

from __future__ import annotations

import inspect

from ..problems.decode import page_size_refusal
from . import flash_attn as fa2
from .base import Backend, Capabilities, Prepared, Unsupported, exception_chain, register

PAGE_MULTIPLE = 256  # flash_api.cpp mha_fwd_kvcache: page_block_size % 256 == 0 (see above)

# flash-attn's TORCH_CHECKs that refuse a case (RuntimeError text), not a broken run
_REFUSALS = (
    "Paged KV cache block size must be divisible by",
    "FlashAttention only supports",
    "FlashAttention only support fp16 and bf16",
    "FlashAttention forward only supports head dimension",
    "Number of heads in key/value must divide",
)

_FA2_ENTRY = fa2.FlashAttn("flash_attn_func")  # not registered: its availability rules only


@register
class FlashAttnKVCache(Backend):
    name = "flash_attn_kvcache"
    description = (
        "flash-attn 2 flash_attn_with_kvcache (split-KV decode; contiguous, or pages of a "
        "multiple of 256 keys)"
    )
    caps = Capabilities(
        problem="decode",
        devices={"cuda"},
        dtypes={"fp16", "bf16"},
        max_head_dim=256,
        backward=False,
        lse=True,
        features={"paged", "q_len_gt_1"},
    )

    def availability(self, device):
        why = _FA2_ENTRY.availability(device)
        if why:
            return why
        fn = getattr(fa2._flash_attn(), "flash_attn_with_kvcache", None)
        if fn is None:
            return "flash-attn has no flash_attn_with_kvcache"
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # not introspectable: let the call say
            return None
        if "return_softmax_lse" not in params:
            version = fa2.flash_attn_version()
            return f"flash-attn {version}: flash_attn_with_kvcache has no return_softmax_lse"
        return None

    def extra_check(self, case, device, mode):
        if case.head_dim % 8:
            return (
                f"unsupported: head dim {case.head_dim} not a multiple of 8 (flash-attn would "
                "pad the whole KV cache inside the timed call)"
            )
        why = page_size_refusal(case, lambda ps: ps % PAGE_MULTIPLE == 0)
        if why:
            return f"{why} (flash_attn_with_kvcache pages must be a multiple of {PAGE_MULTIPLE})"
        return None

    def refusal(self, e):
        for err in exception_chain(e):
            text = str(err).strip()
            if isinstance(err, RuntimeError) and any(r in text for r in _REFUSALS):
                return f"unsupported: flash-attn refused: {text.splitlines()[0][:300]}"
        return None

    def prepare(self, inp, case):
        return Prepared((inp.q,), {"inputs": inp})

    def forward(self, p, case):
        mod = fa2._flash_attn()
        if mod is None:
            raise Unsupported(fa2._import_error)
        (q,) = p.leaves
        inp = p.args["inputs"]
        out, lse = mod.flash_attn_with_kvcache(
            q,
            inp.k_cache,
            inp.v_cache,
            cache_seqlens=inp.cache_lens,
            block_table=inp.block_table,
            softmax_scale=case.scale,
            causal=True,
            return_softmax_lse=True,
            num_splits=0,
        )
        return out, lse
