"""Fused piecewise-attention forward in Triton (FlashAttention-2's Algorithm 1 with two score
sources; Dao, 2023, arXiv:2307.08691; the operator is FlagAttention's piecewise attention).

With ``shift = seqlen_k - seqlen_q`` and the signed distance ``d(i, j) = i + shift - j``
(bottom-right aligned, like causal), the score of query ``i`` and key ``j`` is::

    s(i, j) = scale * q2_i . k2_j   if d(i, j) >= w        ("far" pairs)
              scale * q1_i . k1_j   otherwise               ("near" pairs, and future keys)

and the rest is softmax attention over ``v`` (online softmax in the log2 domain, as in
:mod:`attnbench.kernels._triton.softmax`). One program owns ``BLOCK_M`` query rows of one
(batch, query head) and walks the keys of its kv head (GQA: ``h_kv = h_q // group``).

Tile classification. Since ``d`` falls as ``j`` grows, the key axis of a query block splits into

    [0, e2)   every pair far:  only q2 . k2          (MODE 2)
    [e2, s1)  the threshold crosses the tile: both products and a select (MODE 3)
    [s1, ..)  every pair near: only q1 . k1          (MODE 1)

with ``e2`` and ``s1`` rounded to key tiles; the band is ``BLOCK_M / BLOCK_N + 1`` tiles wide at
most, so the common tiles carry one product and no select. Independently the range splits into
unmasked tiles (fully visible, inside ``seqlen_k``) and masked ones (causal diagonal, ragged
end), exactly as in triton_fa2 (:func:`attnbench.kernels._triton.tiles.key_ranges`); each class
runs its unmasked then its masked tiles (six loops, each specialised at compile time). Tiles above the causal diagonal are never visited. ``w`` is a
run-time argument (clamped by the host to ``[1 - seqlen_q, seqlen_k]``, where every threshold
outside gives the same scores), so a new threshold never recompiles.

``SPLIT_BAND`` (a config option, default off; as in :mod:`.bwd`): the band's tiles are run twice
as one-product tiles, after the far tiles with ``q2`` (MODE 2, near pairs' scores set to -inf)
and, once ``q1`` replaces ``q2``, with ``q1`` (MODE 1, far pairs -inf) before the near tiles: one
query tile resident and two key tiles streamed per stage (k and v), FA2's shared memory, into
the same online softmax, at the price of the band's tiles being loaded and multiplied twice.
``SPLIT_BAND=2`` merges each pass into one class: keys [0, s1) with ``q2`` keeping the far pairs,
then [e2, ..) with ``q1`` keeping the near ones, the side's mask applied to every tile (a compare
and select each): four pipelined loops instead of six (fused) or eight (``sp``), and fewer
registers (every pipelined loop costs registers in Triton 3.6).

Rows that see no key (causal with ``seqlen_q > seqlen_k``) give ``out = 0`` and ``lse = +inf``
(the project's convention, :mod:`attnbench.reference`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import tuning
from .._triton.softmax import finish_rows, softmax_step
from .._triton.tiles import key_ranges, load_rows, store_rows
from . import configs


@triton.jit
def key_classes(start_m, shift, w, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(e2, s1): key tiles [0, e2) are all far for rows [start_m, start_m + BLOCK_M), tiles
    from s1 on are all near; multiples of BLOCK_N."""
    e2 = tl.maximum(start_m + shift - w + 1, 0) // BLOCK_N * BLOCK_N
    s1 = (tl.maximum(start_m + BLOCK_M + shift - w, 0) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    return e2, s1


@triton.jit
def scores(
    q1,
    q2,
    k1_base,
    k2_base,
    kv_off,
    rows,
    cols,
    seqlen_k,
    offs_d,
    shift,
    w,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """(qk, k1, k2, far) of one key tile: the unscaled scores of the rows x cols tile, from
    q1 . k1 (MODE 1, near), q2 . k2 (MODE 2, far) or both selected by ``far`` (MODE 3, the
    band); the key tiles loaded (a tile the mode does not load is returned in its place, as is
    ``far`` outside the band: placeholders the caller never reads)."""
    if MODE == 1:
        k1 = load_rows(k1_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        qk = tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC)
        k2 = k1
        far = qk != qk
    elif MODE == 2:
        k2 = load_rows(k2_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        qk = tl.dot(q2, tl.trans(k2), input_precision=DOT_PREC)
        k1 = k2
        far = qk != qk
    else:
        k1 = load_rows(k1_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        k2 = load_rows(k2_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        qk1 = tl.dot(q1, tl.trans(k1), input_precision=DOT_PREC)
        qk2 = tl.dot(q2, tl.trans(k2), input_precision=DOT_PREC)
        far = (rows[:, None] + shift - cols[None, :]) >= w
        qk = tl.where(far, qk2, qk1)
    return qk, k1, k2, far


@triton.jit
def keep_side(qk, far, MODE: tl.constexpr):
    """Scores of this loop's side of the threshold alone (a split band's tile, run once per
    side): the near pairs in MODE 1, the far pairs in MODE 2; -inf on the other side (exp 0,
    and the running max ignores them), so every pair is counted exactly once."""
    if MODE == 1:
        qk = tl.where(far, float("-inf"), qk)
    else:
        qk = tl.where(far, qk, float("-inf"))
    return qk


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q1,
    q2,
    k1_base,
    k2_base,
    v_base,
    stride_ks,
    rows,
    offs_n,
    offs_d,
    lo,
    hi,
    seqlen_k,
    shift,
    w,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BAND_STAGES: tl.constexpr,
    BAND: tl.constexpr,
):
    """The key tiles [lo, hi) into the online softmax (MODE as in :func:`scores`; BAND with
    MODE 1/2: only that side's pairs of a split band's tile count)."""
    for start_n in tl.range(lo, hi, BLOCK_N, num_stages=BAND_STAGES if MODE == 3 else None):
        cols = start_n + offs_n
        kv_off = cols[:, None] * stride_ks + offs_d[None, :]
        qk, k1, k2, far = scores(
            q1, q2, k1_base, k2_base, kv_off, rows, cols, seqlen_k, offs_d, shift, w,
            HEAD_DIM, HEAD_DIM_PAD, MASKED, MODE, DOT_PREC,
        )  # fmt: skip
        if BAND:
            # a split band: the other side's pairs get -inf, then the masked softmax step (its
            # rows with nothing visible yet keep m = -inf, l = 0, acc = 0 and give no NaN)
            qk = keep_side(qk, (rows + (shift - w))[:, None] >= cols[None, :], MODE)
        p, alpha, l_i, m_new = softmax_step(
            qk, m_i, l_i, rows, cols, seqlen_k, shift, qk_scale, CAUSAL, MASKED or BAND
        )
        v = load_rows(v_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_class(
    acc,
    l_i,
    m_i,
    q1,
    q2,
    k1_base,
    k2_base,
    v_base,
    stride_ks,
    rows,
    offs_n,
    offs_d,
    c_lo,
    c_hi,
    n_full,
    n_end,
    seqlen_k,
    shift,
    w,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BAND_STAGES: tl.constexpr,
    BAND: tl.constexpr,
):
    """The key tiles [c_lo, c_hi) of one class: the unmasked ones, then the masked ones."""
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
        c_lo, tl.minimum(c_hi, n_full), seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, False, MODE, DOT_PREC, BAND_STAGES, BAND,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
        tl.maximum(c_lo, n_full), tl.minimum(c_hi, n_end), seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, True, MODE, DOT_PREC, BAND_STAGES, BAND,
    )  # fmt: skip
    return acc, l_i, m_i


@tuning.autotune(
    "piecewise_fwd",
    configs=configs.fwd_configs(),
    key=["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"],
    prune=configs.prune_fwd,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group", "w"])
def _fwd_kernel(
    Q1,
    K1,
    Q2,
    K2,
    V,
    Out,
    Lse,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_lb,
    stride_lh,
    seqlen_q,
    seqlen_k,
    group,
    w,
    qk_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BAND_STAGES: tl.constexpr,
    SPLIT_BAND: tl.constexpr = False,
):
    """q1, q2, out share one layout (strides ``stride_q*``); k1, k2, v share another."""
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    if CAUSAL:  # longest blocks first
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    off_hk = off_h // group
    b64 = off_b.to(tl.int64)
    q_off = b64 * stride_qb + off_h * stride_qh
    k_off = b64 * stride_kb + off_hk * stride_kh

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    q_ptrs = rows[:, None] * stride_qs + offs_d[None, :]
    # q2 now, q1 after the far tiles: both are live only across the fused band (split, q1
    # replaces q2 after the band's far pairs)
    q2 = load_rows(Q2 + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    q1 = q2  # placeholder for the far loop (MODE 2 never reads q1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    shift = seqlen_k - seqlen_q
    n_full, n_end = key_ranges(start_m, seqlen_k, shift, BLOCK_M, BLOCK_N, CAUSAL)
    e2, s1 = key_classes(start_m, shift, w, BLOCK_M, BLOCK_N)
    k1_base = K1 + k_off
    k2_base = K2 + k_off
    v_base = V + k_off
    # far tiles (q2 . k2), the threshold band (both, selected; or split: its far pairs with q2,
    # then its near pairs with q1), near tiles (q1 . k1)
    # merged split: [0, s1) with q2 keeping the far pairs, then [e2, n_end) with q1 keeping the
    # near ones (every tile of a pass masked by its side: a compare and select each)
    MERGED: tl.constexpr = SPLIT_BAND == 2
    acc, l_i, m_i = _fwd_class(
        acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
        0, s1 if MERGED else e2, n_full, n_end, seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 2, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip
    if SPLIT_BAND == 1:
        acc, l_i, m_i = _fwd_class(
            acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
            e2, s1, n_full, n_end, seqlen_k, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 2, DOT_PREC, BAND_STAGES, True,
        )  # fmt: skip
    q1 = load_rows(Q1 + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    if not MERGED:
        acc, l_i, m_i = _fwd_class(
            acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
            e2, s1, n_full, n_end, seqlen_k, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 1 if SPLIT_BAND else 3, DOT_PREC,
            BAND_STAGES, SPLIT_BAND,
        )  # fmt: skip
    acc, l_i, m_i = _fwd_class(
        acc, l_i, m_i, q1, q2, k1_base, k2_base, v_base, stride_ks, rows, offs_n, offs_d,
        e2 if MERGED else s1, n_end, n_full, n_end, seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 1, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip

    out, lse = finish_rows(acc, l_i, m_i, Out.dtype.element_ty == tl.float32)
    store_rows(
        Out + q_off + q_ptrs,
        out.to(Out.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    tl.store(Lse + b64 * stride_lb + off_h * stride_lh + rows, lse, mask=rows < seqlen_q)
