"""The one reference attention of attnbench, used by accuracy runs, perf verdicts, tests and
the distributed checks.

``attention_ref(..., upcast=True)`` is the truth: computed in fp32 (fp64 for fp32 inputs).
``attention_ref(..., upcast=False)`` is "same-dtype torch", the baseline of flash-attention's rule
(a kernel may be at most k times worse than plain torch in the input dtype).

Semantics (flash-attn's): layout (B, S, H, D); GQA by repeating each kv head over
``heads_q // heads_kv`` query heads; causal and the sliding window aligned bottom-right;
``softcap`` applies ``softcap * tanh(s / softcap)`` to the scaled scores; ALiBi adds
``-slope_h * |i + Sk - Sq - j|``. The log-sum-exp is natural-log, fp32, shape (B, Hq, Sq)
(varlen: (Hq, total_q)); rows with no visible key give out = 0 and lse = +inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .case import AttentionCase


def ref_dtype(dtype: torch.dtype, upcast: bool) -> torch.dtype:
    if not upcast:
        return dtype
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def visible_mask(
    seqlen_q: int,
    seqlen_k: int,
    causal: bool,
    window_left: int = -1,
    window_right: int = -1,
    device=None,
    q_start: int = 0,
    q_rows: int | None = None,
) -> torch.Tensor | None:
    """Bool (Sq, Sk) mask of visible keys, bottom-right aligned; None when all are visible.
    ``q_start``/``q_rows`` select rows ``[q_start, q_start + q_rows)`` of the full mask."""
    if causal:
        window_right = 0
    if window_left < 0 and window_right < 0:
        return None
    rows = seqlen_q - q_start if q_rows is None else q_rows
    i = torch.arange(q_start, q_start + rows, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    mask = torch.ones(rows, seqlen_k, dtype=torch.bool, device=device)
    if window_right >= 0:
        mask &= j <= i + window_right
    if window_left >= 0:
        mask &= j >= i - window_left
    return mask


def alibi_bias(
    slopes: torch.Tensor, seqlen_q: int, seqlen_k: int, q_start: int = 0, q_rows: int | None = None
) -> torch.Tensor:
    """(Hq or B,Hq) slopes -> additive bias broadcastable to (B, Hq, Sq, Sk)."""
    rows = seqlen_q - q_start if q_rows is None else q_rows
    i = torch.arange(q_start, q_start + rows, device=slopes.device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=slopes.device)[None, :]
    dist = (i - j).abs().to(slopes.dtype)
    if slopes.dim() == 1:
        slopes = slopes[None]
    return -slopes[:, :, None, None] * dist


def alibi_slopes(heads: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes (fp32, shape (heads,))."""
    import math

    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        s = pow2(heads)
    else:
        p = 2 ** math.floor(math.log2(heads))
        s = pow2(p) + pow2(2 * p)[0::2][: heads - p]
    return torch.tensor(s, dtype=torch.float32)


def _dense(q, k, v, *, causal, scale, window, softcap, slopes, dtype, q_start=0, seqlen_q=None):
    b, rows, hq, d = q.shape
    sk = k.shape[1]
    sq = rows if seqlen_q is None else seqlen_q  # rows [q_start, q_start + rows) of sq
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    k, v = repeat_kv(hq, k, v)
    s = torch.einsum("bqhd,bkhd->bhqk", q * scale, k)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        s = s + alibi_bias(slopes.to(s.device), sq, sk, q_start, rows).to(dtype)
    mask = visible_mask(sq, sk, causal, window[0], window[1], q.device, q_start, rows)
    return softmax_rows(s, v, mask)


def masked_softmax(
    s: torch.Tensor, mask: torch.Tensor | None, lse_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one masked softmax of the references: ``(p, lse)`` of scaled scores ``s`` (any
    leading dims, keys last), keys outside the bool ``mask`` (broadcast against ``s``; None:
    every key visible) hidden. ``p`` is in the dtype of ``s``; ``lse`` is the natural-log
    log-sum-exp over the keys, computed in the dtype of ``s`` and then cast to ``lse_dtype``.
    Rows with no visible key give p = 0 (so out = 0) and lse = +inf."""
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf on rows without a visible key
    empty = torch.isneginf(lse)
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = p.masked_fill(empty[..., None], 0)  # softmax of an all -inf row is NaN
    return p, lse.to(lse_dtype).masked_fill(empty, float("inf"))


def softmax_rows(s: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
    """``(out, lse)`` from scaled scores ``s`` (B, H, Sq, Sk) and ``v`` (B, Sk, H, D), keys
    outside ``mask`` hidden (:func:`masked_softmax`, lse fp32); rows with no visible key give
    out = 0 and lse = +inf."""
    p, lse = masked_softmax(s, mask, torch.float32)
    return torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v), lse


def repeat_kv(hq: int, *kvs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """GQA: each kv head of (B, S, Hkv, D) tensors repeated over ``hq // Hkv`` query heads."""
    return tuple(
        t.repeat_interleave(hq // t.shape[2], dim=2) if t.shape[2] != hq else t for t in kvs
    )


def attention_ref(
    q,
    k,
    v,
    *,
    causal=False,
    softmax_scale=None,
    window=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    upcast=True,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    q_start=0,
    seqlen_q=None,
):
    """Differentiable reference attention. Returns ``(out, lse)``.

    Dense inputs are (B, S, H, D); varlen inputs are (total, H, D) with int32 ``cu_seqlens_q``
    and ``cu_seqlens_k`` (length B + 1), computed sequence by sequence.
    ``out`` is in the compute dtype (fp32/fp64 when ``upcast``, else the input dtype).
    Dense ``q`` may be rows ``[q_start, q_start + rows)`` of a query sequence of length
    ``seqlen_q`` (masks and ALiBi stay aligned to the whole sequence): this is how
    :func:`reference` evaluates long cases block by block.
    """
    dtype = ref_dtype(q.dtype, upcast)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    kw = dict(causal=causal, scale=scale, window=tuple(window), softcap=softcap, dtype=dtype)
    if cu_seqlens_q is None:
        return _dense(q, k, v, slopes=alibi_slopes, q_start=q_start, seqlen_q=seqlen_q, **kw)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for i in range(len(cq) - 1):
        sl = None
        if alibi_slopes is not None:
            sl = alibi_slopes if alibi_slopes.dim() == 1 else alibi_slopes[i]
        o, l = _dense(
            q[None, cq[i] : cq[i + 1]],
            k[None, ck[i] : ck[i + 1]],
            v[None, ck[i] : ck[i + 1]],
            slopes=sl,
            **kw,
        )
        outs.append(o[0])
        lses.append(l[0])
    return torch.cat(outs, 0), torch.cat(lses, 1)


def case_kwargs(case: AttentionCase) -> dict:
    return dict(
        causal=case.causal,
        softmax_scale=case.scale,
        window=(case.window_left, case.window_right),
        softcap=case.softcap,
    )


@dataclass
class RefResult:
    out: torch.Tensor
    lse: torch.Tensor
    dq: torch.Tensor | None = None
    dk: torch.Tensor | None = None
    dv: torch.Tensor | None = None


def _ref_call(fn, qs, kvs, dout, dtype, grads, **where):
    """``fn(qs, kvs, **where) -> (out, lse)`` and, with ``grads``, the gradients of every input
    for ``dout`` (leaves in the compute dtype, so gradients are not rounded to the input dtype)."""
    if not grads:
        with torch.no_grad():
            o, l = fn(qs, kvs, **where)
        return o, l, ()
    leaves = tuple(t.detach().to(dtype).requires_grad_() for t in (*qs, *kvs))
    with torch.enable_grad():
        o, l = fn(leaves[: len(qs)], leaves[len(qs) :], **where)
        gs = torch.autograd.grad(o, leaves, dout.to(o.dtype))
    return o.detach(), l.detach(), gs


def chunked_reference(fn, qs, kvs, dout, *, upcast, grads, budget_bytes=None, score_mats=1):
    """A reference for a whole dense case, in chunks: ``(out, lse, grads of qs + kvs)``.

    ``fn(qs, kvs, *, bs, hqs, q_start, seqlen_q) -> (out, lse)`` computes the rows
    ``[q_start, q_start + rows)`` of batch slice ``bs`` and query heads ``hqs`` from query-like
    tensors ``qs`` (B, Sq, Hq, D) and key/value-like tensors ``kvs`` (B, Sk, Hkv, D), the value
    last. Attention-like problems are independent per (batch, kv-head group) and each query row's
    softmax needs only its own scores, so the work is split into chunks whose ``score_mats``
    score matrices fit ``budget_bytes``; each chunk runs ``fn`` forward and autograd backward, and
    the kv gradients sum the contributions of the row chunks (in the compute dtype). This keeps
    16k-32k-token cases within memory while staying the same function as the unchunked one.
    """
    q, k, v = qs[0], kvs[0], kvs[-1]
    dtype = ref_dtype(q.dtype, upcast)
    if budget_bytes is None:
        budget_bytes = (4 << 30) if q.is_cuda else (1 << 30)
    b, sq, hq, _ = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    per_row = g * sk * torch.finfo(dtype).bits // 8 * (4 if grads else 2) * score_mats
    rows = max(1, min(sq, budget_bytes // max(per_row, 1)))
    units = max(1, budget_bytes // max(per_row * sq, 1)) if rows == sq else 1
    hstep = max(1, min(hkv, units))
    bstep = max(1, units // hkv) if hstep == hkv else 1
    out = torch.empty(b, sq, hq, v.shape[-1], dtype=dtype, device=q.device)
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    dqs = [torch.empty(t.shape, dtype=dtype, device=q.device) for t in qs] if grads else []
    dkvs = [torch.zeros(t.shape, dtype=dtype, device=q.device) for t in kvs] if grads else []
    for b0 in range(0, b, bstep):
        bs = slice(b0, b0 + bstep)
        for h0 in range(0, hkv, hstep):
            hk = slice(h0, h0 + hstep)
            hqs = slice(h0 * g, (h0 + hstep) * g)
            for r0 in range(0, sq, rows):
                rs = slice(r0, r0 + rows)
                o, l, gs = _ref_call(
                    fn,
                    tuple(t[bs, rs, hqs] for t in qs),
                    tuple(t[bs, :, hk] for t in kvs),
                    dout[bs, rs, hqs] if grads else None,
                    dtype,
                    grads,
                    bs=bs,
                    hqs=hqs,
                    q_start=r0,
                    seqlen_q=sq,
                )
                out[bs, rs, hqs] = o
                lse[bs, hqs, rs] = l
                for acc, gr in zip(dqs, gs[: len(qs)]):
                    acc[bs, rs, hqs] = gr
                for acc, gr in zip(dkvs, gs[len(qs) :]):
                    acc[bs, :, hk] += gr
    return out, lse, (*dqs, *dkvs)


def reference(
    inp,
    case: AttentionCase,
    *,
    upcast: bool = True,
    grads: bool = True,
    budget_bytes: int | None = None,
) -> RefResult:
    """Reference out, lse (and dq, dk, dv for ``inp.dout``) for a whole case; dense cases in
    chunks (:func:`chunked_reference`), varlen ones sequence by sequence."""
    kw = case_kwargs(case)
    slopes = inp.alibi_slopes

    def fn(qs, kvs, *, bs=None, hqs=None, **extra):
        sl = slopes
        if sl is not None and hqs is not None:
            sl = sl[hqs] if sl.dim() == 1 else sl[bs, hqs]
        return attention_ref(*qs, *kvs, alibi_slopes=sl, upcast=upcast, **kw, **extra)

    if case.varlen:
        dtype = ref_dtype(inp.q.dtype, upcast)
        extra = dict(cu_seqlens_q=inp.cu_seqlens_q, cu_seqlens_k=inp.cu_seqlens_k)
        o, l, gs = _ref_call(fn, (inp.q,), (inp.k, inp.v), inp.dout, dtype, grads, **extra)
        return RefResult(o, l, *gs)
    out, lse, gs = chunked_reference(
        fn,
        (inp.q,),
        (inp.k, inp.v),
        inp.dout,
        upcast=upcast,
        grads=grads,
        budget_bytes=budget_bytes,
    )
    return RefResult(out, lse, *gs)
