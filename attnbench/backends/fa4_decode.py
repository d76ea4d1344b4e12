"""``fa4_decode``: FlashAttention-4 (``flash_attn.cute``) on the decode problem, through
``flash_attn_varlen_func``'s batch layout with per-sequence key counts and, for a paged cache,
its page table::

    out, lse = flash_attn_varlen_func(
        q,                      # (B, q_len, Hq, D): no cu_seqlens_q, the batch layout
        k, v,                   # (B, S_max, Hkv, D), or pages (num_pages, page_size, Hkv, D)
        seqused_k=cache_lens,   # int32 (B,): keys per sequence, the q_len new tokens included
        max_seqlen_k=max_len,   # host int: the longest cache (its split heuristic's bound)
        page_table=block_table, # int32 (B, max_pages), None for a contiguous cache
        softmax_scale=scale, causal=True, num_splits=..., return_lse=True)

What the rules come from (``flash_attn/cute/interface.py`` of flash-attn-4 4.0.0b36, the
version ``tools/gpu`` installs; ``availability`` checks that the installed
``flash_attn_varlen_func`` takes ``seqused_k``, ``page_table`` and ``num_splits``):

- Causal is bottom-right against each sequence's ``seqused_k`` (flash-attn's convention), the
  decode problem's. out (B, q_len, Hq, D), lse fp32 (B, Hq, q_len), natural log.
- Split-KV: ``_flash_attn_fwd`` asserts "SplitKV not supported on SM 9.0", so on Hopper the
  backend passes ``num_splits=1``; on sm100/sm110 it passes 0, the library's own split
  heuristic (``num_splits < 1``). ``kernel_config`` says which.
- Pages: any page size is taken (a page of exactly the kernel's key tile loads by TMA, others
  by cp.async: ``paged_kv_non_tma``). The docstring of ``flash_attn_varlen_func`` says of TMA
  loads that "a tile loads every row of its block, including rows past seqused_k in a
  sequence's last, partially used page. Their scores are masked, but P = 0 times a NaN V row
  is still NaN, so those rows must be finite (their values do not matter)". The decode inputs
  hold NaN exactly there (and past each length in a contiguous cache, where the same TMA tiles
  run past ``seqused_k``), so ``prepare`` gives this backend its own copy of the caches with
  those slots zeroed (untimed; the copy doubles the cache's memory). Pages no sequence owns,
  table entries past a sequence's pages, stay NaN ("pages a sequence does not use may hold
  anything, including NaN"). Zeros are not neutral: a kernel that attended to them (ignoring
  ``seqused_k``) would still fail accuracy.
- fp16/bf16; head dims multiples of 8 (16-byte alignment), up to 256 on sm90, up to 128 or
  exactly 256 on sm100/sm110 (``_validate_head_dims``): an assert of the library on the GPU at
  hand becomes an ``unsupported`` row with its message (:func:`.fa4.fa4_refusal`), as does any
  other input check of its wrapper.
- Its kernels are JIT-compiled by the CuTe DSL on the first call of each configuration: that
  call is the row's ``first_call_s``.
"""

from __future__ import annotations

import inspect

import torch

from .base import Backend, Capabilities, Prepared, register
from .fa4 import fa4_availability, fa4_module, fa4_refusal

NEEDED_PARAMS = ("seqused_k", "page_table", "num_splits", "return_lse")


def num_splits_for(device: torch.device) -> int:
    """``num_splits`` for flash_attn.cute on ``device``: 1 on sm90 (the library asserts
    "SplitKV not supported on SM 9.0"), else 0 (its split heuristic)."""
    if device.type != "cuda":
        return 1
    major, _ = torch.cuda.get_device_capability(device)
    return 1 if major == 9 else 0


def finite_tails(inp) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V caches for flash_attn.cute: copies of ``inp``'s with the slots past each
    sequence's length that its TMA tiles read (the rest of a sequence's last page; in a
    contiguous cache, every slot past the length) set to zero. Pages no sequence owns keep
    their NaN. The inputs themselves are never written."""
    k, v = inp.k_cache.clone(), inp.v_cache.clone()
    if inp.paged:
        ps = inp.page_size
        table = inp.block_table.tolist()  # prepare is untimed: the host may wait here
        for b, n in enumerate(inp.lens):
            if n % ps:
                page = table[b][(n - 1) // ps]
                k[page, n % ps :] = 0
                v[page, n % ps :] = 0
    else:
        for b, n in enumerate(inp.lens):
            k[b, n:] = 0
            v[b, n:] = 0
    return k, v


@register
class FA4Decode(Backend):
    name = "fa4_decode"
    description = (
        "FlashAttention-4 flash_attn.cute.flash_attn_varlen_func with seqused_k and page_table "
        "(contiguous or paged; no split-KV on sm90)"
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
        why = fa4_availability(device)
        if why:
            return why
        fn = getattr(fa4_module(), "flash_attn_varlen_func", None)
        if fn is None:
            return "flash-attn-4 has no flash_attn_varlen_func"
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return None
        missing = [n for n in NEEDED_PARAMS if n not in params]
        if missing:
            return (
                f"flash-attn-4: flash_attn_varlen_func takes no {', '.join(missing)} "
                "(4.0.0b36 has them)"
            )
        return None

    def extra_check(self, case, device, mode):
        if case.head_dim % 8:
            return f"unsupported: head dim {case.head_dim} not a multiple of 8"
        return None

    def refusal(self, e):
        return fa4_refusal(e)

    def prepare(self, inp, case):
        k, v = finite_tails(inp)
        args = dict(
            k=k,
            v=v,
            seqused_k=inp.cache_lens,
            page_table=inp.block_table,
            max_seqlen_k=inp.max_cache_len,
            num_splits=num_splits_for(inp.q.device),
        )
        return Prepared((inp.q,), args)

    def forward(self, p, case):
        (q,) = p.leaves
        a = p.args
        res = fa4_module().flash_attn_varlen_func(
            q,
            a["k"],
            a["v"],
            max_seqlen_k=a["max_seqlen_k"],
            seqused_k=a["seqused_k"],
            page_table=a["page_table"],
            softmax_scale=case.scale,
            causal=True,
            num_splits=a["num_splits"],
            return_lse=True,
        )
        out, lse = res if isinstance(res, tuple) else (res, None)
        return out, lse

    def kernel_config(self, p, case, mode):
        n = p.args["num_splits"]
        return "num_splits 1 (no split-KV on sm90)" if n == 1 else "num_splits auto (library)"
