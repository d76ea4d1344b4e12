"""Split-KV ("flash-decoding") attention over a KV cache, contiguous or paged, in Triton.

Two kernels:

- :func:`_split_kernel`, one program per (split, row block of a KV head, batch). Its rows are the
  ``G * q_len`` query rows of one KV head packed token-major (row ``r`` is token ``r // G`` of
  query head ``h_kv * G + r % G``), padded to ``BLOCK_M`` (a power of two >= 16, ``tl.dot``'s
  minimum): every K and V tile is read once for all the query heads that share it. The program
  streams the keys ``[split * split_len, (split + 1) * split_len)`` of its sequence in ``BLOCK_N``
  tiles with the online softmax of FlashAttention-2 (log2 domain, ``qk_scale`` holds
  ``log2(e)``) and writes its normalised partial output (fp32) and natural-log partial lse.
  ``split_len`` is the host's (a multiple of BLOCK_N; 0 allowed), raised per sequence to
  ``ceil(len / num_splits)`` in whole tiles, so the splits always cover the sequence.
  Splits that start past the sequence's length write lse ``-inf`` and nothing else; rows that
  see no key of a split (the causal mask among the new tokens) get out 0 and lse ``-inf``.
  With one split the host passes the final ``out`` (q's dtype) and ``lse`` as the workspace
  (split stride 0) and skips the combine.
- :func:`_combine_kernel`, one program per (query head, token, batch): merges the splits of one
  row by their lse, ``lse = log sum_s e^lse_s``, ``out = sum_s e^(lse_s - lse) out_s``; splits
  with lse ``-inf`` are never read.

Keys are addressed as (page, slot): paged caches look the page up in the block table
(``page = block_table[b, key // PAGE_SIZE]``, ``slot = key % PAGE_SIZE``), a contiguous cache is
one page per sequence (page ``b``, slot ``key``). When ``PAGE_SIZE`` is a multiple of
``BLOCK_N`` a key tile lies in one page: one table lookup per tile and contiguous rows.

Masks are paid only where needed: tiles whose keys every row sees (``key <= len - q_len``) run
an unmasked loop, the rest (the causal diagonal among the new tokens, the tail of the sequence)
a masked one. Causal is bottom-right: token ``i`` sees keys ``j <= len - q_len + i``.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _tile_rows(bt_row, b, start_n, offs_n, hi, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """(page, slot) of the keys ``start_n + offs_n``: page int64 (a scalar when the tile lies in
    one page), slot a vector; the key's row is ``page * stride_page + slot * stride_slot``."""
    cols = start_n + offs_n
    if PAGED:
        if PAGE_SIZE % BLOCK_N == 0:  # the tile is one page (start_n is a multiple of BLOCK_N)
            page = tl.load(bt_row + start_n // PAGE_SIZE).to(tl.int64)
            slot = start_n % PAGE_SIZE + offs_n
        else:
            if MASKED:
                page = tl.load(bt_row + cols // PAGE_SIZE, mask=cols < hi, other=0)
            else:
                page = tl.load(bt_row + cols // PAGE_SIZE)
            page = page.to(tl.int64)
            slot = cols % PAGE_SIZE
    else:
        page = b.to(tl.int64)
        slot = cols.to(tl.int64)
    return page, slot


@triton.jit
def _scan(acc, l_i, m_i, q, K, V, bt_row, b, lo, hi, last_key, stride_kp, stride_ks, stride_vp,
          stride_vs, qk_scale, offs_n, offs_d, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
          BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """Online softmax over the key tiles starting at ``lo, lo + BLOCK_N, ... < hi``. MASKED
    hides keys ``>= hi`` and, per row, keys ``> last_key``; unmasked tiles must be visible to
    every row and inside the sequence."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        page, slot = _tile_rows(bt_row, b, start_n, offs_n, hi, PAGED, PAGE_SIZE, BLOCK_N, MASKED)
        k_ptrs = K + (page * stride_kp + slot * stride_ks)[:, None] + offs_d[None, :]
        v_ptrs = V + (page * stride_vp + slot * stride_vs)[:, None] + offs_d[None, :]
        if MASKED:
            cols = start_n + offs_n
            in_seq = cols < hi
            k = tl.load(k_ptrs, mask=in_seq[:, None], other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            visible = (cols[None, :] <= last_key[:, None]) & in_seq[None, :]
            t = tl.where(visible, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(t, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            v = tl.load(v_ptrs, mask=in_seq[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            t = qk * qk_scale
            m_new = tl.maximum(m_i, tl.max(t, 1))
            m_sub = m_new
            v = tl.load(v_ptrs)
        p = tl.exp2(t - m_sub[:, None])
        alpha = tl.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["q_len", "split_len"])
def _split_kernel(
    Q, K, V, BlockTable, CacheLens, O, L,
    stride_qb, stride_qt, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_btb,
    stride_ob, stride_ot, stride_oh, stride_os,
    stride_lb, stride_lt, stride_lh, stride_ls,
    q_len, split_len, qk_scale,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGED: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    n_mblocks = tl.cdiv(q_len * GROUP, BLOCK_M)
    h_kv = tl.program_id(1) // n_mblocks
    m_block = tl.program_id(1) % n_mblocks
    b = tl.program_id(2)
    seq_len = tl.load(CacheLens + b)

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len * GROUP
    tok = rows // GROUP
    head = h_kv * GROUP + rows % GROUP
    b64 = b.to(tl.int64)
    o_rows = b64 * stride_ob + tok * stride_ot + head * stride_oh + split * stride_os
    l_ptrs = L + b64 * stride_lb + tok * stride_lt + head * stride_lh + split * stride_ls

    # at least ceil(seq_len / num_splits) keys per split, in whole tiles: the splits always cover
    # the sequence, whatever split_len the host passed (0: split each sequence evenly)
    even = tl.cdiv(tl.cdiv(seq_len, tl.num_programs(0)), BLOCK_N) * BLOCK_N
    split_len = tl.maximum(split_len, even)
    lo = split * split_len
    if lo >= seq_len:  # a split past this sequence's end (never split 0: seq_len >= 1)
        tl.store(l_ptrs, tl.full([BLOCK_M], float("-inf"), tl.float32), mask=row_ok)
        return
    hi = tl.minimum(lo + split_len, seq_len)

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows = b64 * stride_qb + tok * stride_qt + head * stride_qh
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    last_key = seq_len - q_len + tok  # the row's last visible key
    bt_row = BlockTable + b64 * stride_btb
    K += h_kv * stride_kh
    V += h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # keys [lo, n_full): whole tiles that every row sees
    n_full = lo + tl.maximum(tl.minimum(hi, seq_len - q_len + 1) - lo, 0) // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _scan(acc, l_i, m_i, q, K, V, bt_row, b, lo, n_full, last_key,
                          stride_kp, stride_ks, stride_vp, stride_vs, qk_scale, offs_n, offs_d,
                          PAGED, PAGE_SIZE, BLOCK_N, False, DOT_PREC)  # fmt: skip
    acc, l_i, m_i = _scan(acc, l_i, m_i, q, K, V, bt_row, b, n_full, hi, last_key,
                          stride_kp, stride_ks, stride_vp, stride_vs, qk_scale, offs_n, offs_d,
                          PAGED, PAGE_SIZE, BLOCK_N, True, DOT_PREC)  # fmt: skip

    empty = l_i == 0.0  # no key of this split visible to the row
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * LN2)
    tl.store(
        O + o_rows[:, None] + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=row_ok[:, None],
    )
    tl.store(l_ptrs, lse, mask=row_ok)


@triton.jit
def _combine_kernel(
    OP, LP, Out, Lse,
    stride_pb, stride_pt, stride_ph, stride_ps,
    stride_lpb, stride_lpt, stride_lph, stride_lps,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_lt,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    t = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    lp = LP + b * stride_lpb + t * stride_lpt + h * stride_lph
    lse_s = tl.load(lp + offs_s * stride_lps, mask=offs_s < num_splits, other=float("-inf"))
    used = lse_s > float("-inf")  # split 0 always holds key 0, so one split at least is used
    m = tl.max(lse_s, 0)
    w = tl.where(used, tl.exp(lse_s - m), 0.0)
    total = tl.sum(w, 0)
    op = OP + b * stride_pb + t * stride_pt + h * stride_ph
    o_s = tl.load(op + offs_s[:, None] * stride_ps + offs_d[None, :], mask=used[:, None], other=0.0)
    out = tl.sum(o_s * w[:, None], 0) / total
    tl.store(
        Out + b * stride_ob + t * stride_ot + h * stride_oh + offs_d,
        out.to(Out.dtype.element_ty),
    )
    tl.store(Lse + b * stride_lb + h * stride_lh + t * stride_lt, m + tl.log(total))
