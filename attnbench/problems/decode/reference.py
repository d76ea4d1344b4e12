"""The one reference of decode attention: sequence by sequence, the cache gathered to its
``len_b`` keys, fp32 (fp64 for fp32 inputs) when ``upcast``, else in the input dtype (the
same-dtype baseline, and the ``decode_naive`` backend). Query token ``i`` of a sequence of cache
length ``n`` sees keys ``j <= n - q_len + i``. GQA: query head ``h`` reads KV head
``h // (Hq / Hkv)`` (the query heads of a KV head are folded into its rows, so K and V are never
repeated). Returns out (B, q_len, Hq, D) in the compute dtype and lse (B, Hq, q_len), natural
log of the scaled scores, fp32 (fp64 in the fp64 truth of fp32 inputs: the truth's lse is not
rounded to fp32, or a case with a handful of lse values could find the same-dtype baseline
exact by chance and fail a kernel 1 ulp off); every row sees at least one key
(``q_len <= len_b``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention.reference import masked_softmax, ref_dtype, visible_mask
from .case import DecodeCase
from .inputs import DecodeInputs


@dataclass
class DecodeRef:
    out: torch.Tensor
    lse: torch.Tensor


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the lse computed in ``dtype``: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sequence_attention(q, k, v, scale: float, dtype: torch.dtype):
    """One sequence: q (q_len, Hq, D), k and v (n, Hkv, D) -> out (q_len, Hq, D) in ``dtype``,
    lse (Hq, q_len) fp32 (fp64 when ``dtype`` is); bottom-right causal among the q_len new tokens
    (attention's :func:`~attnbench.problems.attention.reference.masked_softmax` on the scores of
    the query heads folded into their KV head's rows)."""
    q_len, hq, d = q.shape
    n, hkv, _ = k.shape
    q = q.to(dtype).view(q_len, hkv, hq // hkv, d)
    k, v = k.to(dtype), v.to(dtype)
    s = torch.einsum("thgd,nhd->hgtn", q * scale, k)
    mask = visible_mask(q_len, n, True, device=q.device) if q_len > 1 else None
    p, lse = masked_softmax(s, mask, _lse_dtype(dtype))  # lse (Hkv, G, q_len)
    out = torch.einsum("hgtn,nhd->thgd", p, v).reshape(q_len, hq, d)
    return out, lse.reshape(hq, q_len)


def decode_ref(inp: DecodeInputs, softmax_scale: float, *, upcast: bool = True):
    """``(out, lse)`` of every sequence of ``inp`` (see the module docstring)."""
    q = inp.q
    dtype = ref_dtype(q.dtype, upcast)
    b, q_len, hq, d = q.shape
    out = torch.empty(b, q_len, hq, d, dtype=dtype, device=q.device)
    lse = torch.empty(b, hq, q_len, dtype=_lse_dtype(dtype), device=q.device)
    with torch.no_grad():
        for i in range(b):
            k, v = inp.sequence_kv(i)
            out[i], lse[i] = sequence_attention(q[i], k, v, softmax_scale, dtype)
    return out, lse


def reference(inp: DecodeInputs, case: DecodeCase, *, upcast=True, grads=False) -> DecodeRef:
    """Reference out and lse of a whole case (decode grades no gradients: ``grads`` is
    ignored)."""
    return DecodeRef(*decode_ref(inp, case.scale, upcast=upcast))
