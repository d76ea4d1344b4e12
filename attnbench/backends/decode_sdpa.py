"""``decode_sdpa``: torch's ``scaled_dot_product_attention`` (its own kernel choice) on the KV
cache gathered to a contiguous, zero-padded (B, Hkv, S, D) copy in ``prepare``.

The gather is outside the timed region: the timing is SDPA's alone, on a cache a paged
system would not have contiguous (it measures the attention, not the paging). GQA is folded
into the query rows: the G = Hq / Hkv query heads of a KV head and the q_len new tokens become
G x q_len rows of one (B, Hkv, G x q_len, D) query, so K and V are never repeated. The mask,
built in ``prepare``, is additive in the input dtype (B, 1, G x q_len, S): the per-sequence
length and the bottom-right causal mask of the new tokens (row ``g * q_len + i`` of a sequence
of length ``n`` sees keys ``j <= n - q_len + i``); S is ``cache_len`` rounded up to a multiple
of 16 (the memory-efficient kernel's mask alignment), the padding masked. No lse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Backend, Capabilities, Prepared, register
from .sdpa import _AtenOps

ALIGN = 16


@register
class DecodeSdpa(Backend):
    name = "decode_sdpa"
    description = (
        "torch SDPA (its kernel choice) on the cache gathered to contiguous in prepare (untimed), "
        "length + bottom-right causal mask, GQA folded into query rows"
    )
    caps = Capabilities(
        problem="decode",
        devices={"cpu", "cuda"},
        backward=False,
        features={"paged", "q_len_gt_1"},
    )

    def prepare(self, inp, case):
        b, q_len, hq, d = inp.q.shape
        hkv = inp.k_cache.shape[2]
        g = hq // hkv
        slots = -(-inp.max_cache_len // ALIGN) * ALIGN
        # (B, Hkv, S, D), zeros past each length (never the NaN of the cache: a masked NaN key
        # still poisons the row); gathered sequence by sequence, one copy of the cache at a time
        k = inp.k_cache.new_zeros(b, hkv, slots, d)
        v = inp.v_cache.new_zeros(b, hkv, slots, d)
        for i, n in enumerate(inp.lens):
            ks, vs = inp.sequence_kv(i)
            k[i, :, :n], v[i, :, :n] = ks.transpose(0, 1), vs.transpose(0, 1)
        # rows g * q_len + i: query head h_kv * G + g, new token i
        q = inp.q.view(b, q_len, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * q_len, d)
        dev = inp.q.device
        lens = torch.tensor(inp.lens, device=dev)
        tok = torch.arange(g * q_len, device=dev) % q_len
        last = lens[:, None] - q_len + tok[None, :]  # (B, rows): each row's last visible key
        visible = torch.arange(slots, device=dev)[None, None, :] <= last[:, :, None]
        mask = torch.zeros(b, 1, g * q_len, slots, dtype=inp.q.dtype, device=dev)
        mask.masked_fill_(~visible[:, None], float("-inf"))
        return Prepared((q,), {"k": k, "v": v, "mask": mask, "shape": (b, q_len, hkv, g, d)})

    def _call(self, p, case):
        (q,) = p.leaves
        return F.scaled_dot_product_attention(
            q, p.args["k"], p.args["v"], attn_mask=p.args["mask"], scale=case.scale
        )

    def forward(self, p, case):
        b, q_len, hkv, g, d = p.args["shape"]
        out = self._call(p, case).view(b, hkv, g, q_len, d).permute(0, 3, 1, 2, 4)
        return out.reshape(b, q_len, hkv * g, d), None

    def kernel_config(self, p, case, mode):
        """The aten kernel SDPA dispatched to (one forward, watched by a dispatch mode)."""
        with _AtenOps() as ops:
            self._call(p, case)
        fused = [o for o in ops.names if "scaled_dot_product" in o]
        return fused[0].removeprefix("aten._scaled_dot_product_") if fused else "math (aten ops)"
