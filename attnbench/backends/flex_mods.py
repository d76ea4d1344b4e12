"""FlexAttention's ``mask_mod`` and ``score_mod`` for an attnbench case (used by ``flex`` and
``flex_fa4``): small functions of the case, tested against the reference's masks and biases.

Causal and the sliding window are bottom-right aligned (``kv <= q + Sk - Sq + window_right``,
``kv >= q + Sk - Sq - window_left``); varlen is a document mask over the packed sequence (batch 1,
per-token tables). Softcap and ALiBi act on the already scaled score: ``c * tanh(s / c)`` then
``- slope_h * |q + Sk - Sq - kv|`` (the reference's and flash-attn's convention).

The per-token tables are int32 and every lookup is indexed by ``q_idx`` or ``kv_idx`` only, never
by a value loaded from another table. FlexAttention's FLASH lowering (CuTe DSL, torch 2.11:
``torch/_inductor/codegen/cutedsl/cutedsl_kernel.py``, ``load``) stores every load index into an
``Int32`` fragment (``ssa_to_indexable(..., cutlass.Int32)``): an index loaded from an int64 table
(the earlier ``offs[q_doc[q_idx]]``) failed with "Type mismatch, store Int64 (-> Int64) to Tensor
with element type Int32" (torch fixed that cast later: pytorch/pytorch#188876).
"""

from __future__ import annotations

import torch


def mask_mod_for(case, device, cu_q=None, cu_k=None):
    """The case's ``mask_mod(b, h, q_idx, kv_idx)`` (None: every key visible). Varlen cases are
    one packed batch with ``cu_q``/``cu_k``: same sequence, and causal/window within it."""
    wl, wr = case.window_left, 0 if case.causal else case.window_right
    if not case.varlen:
        if wl < 0 and wr < 0:
            return None
        off = case.seqlen_k - case.seqlen_q

        def dense(b, h, q_idx, kv_idx):
            diag = q_idx + off
            ok = (kv_idx <= diag + wr) if wr >= 0 else kv_idx >= 0
            return ok & (kv_idx >= diag - wl) if wl >= 0 else ok

        return dense
    q_doc, q_diag, k_doc, k_pos = packed_positions(cu_q, cu_k, device)

    def document(b, h, q_idx, kv_idx):
        ok = q_doc[q_idx] == k_doc[kv_idx]
        if wr >= 0:
            ok = ok & (k_pos[kv_idx] <= q_diag[q_idx] + wr)
        if wl >= 0:
            ok = ok & (k_pos[kv_idx] >= q_diag[q_idx] - wl)
        return ok

    return document


def packed_positions(cu_q, cu_k, device):
    """Per token, int32: q's and k's sequence id, q's diagonal (its position in its sequence
    + that sequence's Sk - Sq, the bottom-right alignment) and k's position in its sequence."""
    lq, lk = cu_q.diff().long().to(device), cu_k.diff().long().to(device)

    def ids(lens):
        doc = torch.repeat_interleave(torch.arange(len(lens), device=device), lens)
        start = torch.cumsum(lens, 0) - lens
        return doc, torch.arange(int(lens.sum()), device=device) - start[doc]

    (q_doc, q_pos), (k_doc, k_pos) = ids(lq), ids(lk)
    q_diag = q_pos + (lk - lq)[q_doc]
    return tuple(t.to(torch.int32) for t in (q_doc, q_diag, k_doc, k_pos))


def score_mod_for(case, slopes=None, cu_q=None, cu_k=None, device=None):
    """Softcap then ALiBi on the scaled score, as the reference does (None: neither)."""
    cap = case.softcap
    if not cap and not case.alibi:
        return None
    if case.alibi and slopes is None:
        raise ValueError("ALiBi needs the slopes")
    if case.alibi and case.varlen:
        _, q_diag, _, k_pos = packed_positions(cu_q, cu_k, device)

        def dist(q_idx, kv_idx):
            return (q_diag[q_idx] - k_pos[kv_idx]).abs()
    else:
        off = case.seqlen_k - case.seqlen_q

        def dist(q_idx, kv_idx):
            return (q_idx + off - kv_idx).abs()

    def mod(score, b, h, q_idx, kv_idx):
        if cap:
            score = cap * torch.tanh(score / cap)
        if case.alibi:
            score = score - slopes[h] * dist(q_idx, kv_idx)
        return score

    return mod
