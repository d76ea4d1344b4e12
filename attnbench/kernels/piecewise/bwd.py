"""Fused piecewise-attention backward in Triton (FlashAttention-2's Algorithm 2), deterministic.

``P`` is recomputed per tile from the forward's log-sum-exp, with the score of each pair taken
from ``q1 . k1`` (near, ``d < w``) or ``q2 . k2`` (far, ``d >= w``) as in :mod:`.fwd`. With
``delta_i = rowsum(dO_i * O_i)`` (the shared preprocess kernel,
:func:`attnbench.kernels._triton.softmax.bwd_preprocess`)::

    dV = P^T dO      dP = dO V^T      dS = P * (dP - delta)
    dS1 = dS on near pairs, dS2 = dS on far pairs (0 elsewhere)
    dQ1 = scale * dS1 K1   dK1 = scale * dS1^T Q1   dQ2 = scale * dS2 K2   dK2 = scale * dS2^T Q2

Two passes and no atomics (bit-identical gradients run to run), as in triton_fa2:

1. ``_bwd_dkdv_kernel``: one program per ``BLOCK_N`` keys of one (batch, kv head), looping over
   the query heads of its GQA group and their query blocks. Along the query axis a key block
   sees near tiles first, then the threshold band, then far tiles (``query_classes``); the
   program runs the three classes in that order (each over every head of the group, then
   unmasked/masked as in triton_fa2), so ``dk1`` is written after the band and ``dk2`` is only
   born there: the three fp32 accumulators are live together only in the band.
2. ``_bwd_dq_kernel``: one program per ``BLOCK_M`` query rows, walking the keys like the
   forward: far tiles (``dq2``), the band (both), ``dq2`` written, then near tiles (``dq1``).
3. ``SPLIT_BAND`` (a config option of both kernels, default off): the band's tiles are run twice
   as one-product tiles instead of once with both products, each pass keeping one side of the
   threshold (``keep_side``: ``p = 0`` on the other side, hence ``dS = 0`` there too). dK/dV:
   near tiles and the band's near pairs (``k1``, ``dk1``, ``dv``), ``dk1`` written, ``k2`` loaded,
   the band's far pairs and the far tiles (``k2``, ``dk2``, ``dv``); dQ mirrored (``q2``/``dq2``
   first, then ``q1``/``dq1``). One key (query) tile and two fp32 accumulators are live at a
   time, as in FA2, at the price of the band's tiles being loaded and multiplied twice.
   ``SPLIT_BAND=2`` (merged split): each pass is one class, the pure tiles of its side and the
   band together with the band's mask on every tile (a no-op on the pure ones): dK/dV near and
   band keeping the near pairs, then band and far keeping the far pairs (dQ: far and band, then
   band and near). Each class is 3 pipelined loops per head (:func:`_dkdv_class`), and in
   Triton 3.6 every loop costs registers: 6 loops against the split's 12 (dK/dV 64x128 w8 s2
   at head dim 128, sm_90: 320 B of spill stack against 536).

Rows with ``lse = +inf`` (no visible key) get ``p = 0``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import tuning
from .._triton.softmax import probs, probs_t
from .._triton.tiles import key_ranges, load_rows, row_values, store_rows
from . import configs
from .fwd import key_classes, scores


@triton.jit
def query_classes(start_n, shift, w, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(e1, s2): query tiles [0, e1) are all near for keys [start_n, start_n + BLOCK_N), tiles
    from s2 on are all far; multiples of BLOCK_M."""
    e1 = tl.maximum(start_n + w - shift, 0) // BLOCK_M * BLOCK_M
    s2 = (tl.maximum(start_n + BLOCK_N - 1 + w - shift, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    return e1, s2


@triton.jit
def keep_side(p, far, MODE: tl.constexpr):
    """``p`` on this loop's side of the threshold alone (a split band's tile, run once per
    side): the near pairs in MODE 1, the far pairs in MODE 2; 0 on the other side, so
    ``ds = p * (dp - delta)`` and the ``p``-weighted sums count every pair exactly once.
    Callers compare a row vector with a column vector (``rows >= cols + w - shift``) rather
    than build ``rows + shift - cols`` per element: at 64x128 d128 the per-element form, hoisted
    out of the loop, doubled the dK/dV kernel's spills (stack 992 B against 536 B)."""
    if MODE == 1:
        p = tl.where(far, 0.0, p)
    else:
        p = tl.where(far, p, 0.0)
    return p


@triton.jit
def _dkdv_inner(
    dk1,
    dk2,
    dv,
    k1,
    k2,
    v,
    q1_base,
    q2_base,
    do_base,
    l_base,
    d_base,
    stride_qs,
    cols,
    offs_m,
    offs_d,
    lo,
    hi,
    seqlen_q,
    shift,
    w,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BAND_STAGES: tl.constexpr,
    BAND: tl.constexpr,
):
    """Accumulate the query rows [lo, hi) of one head into this key block's dK1, dK2, dV
    (MODE 1: q1 . k1 pairs into dK1, 2: q2 . k2 into dK2, 3: both, selected per pair; BAND with
    MODE 1/2: only that side's pairs of each tile count: the split band's tiles, or every tile
    of a merged split's class)."""
    for start_m in tl.range(lo, hi, BLOCK_M, num_stages=BAND_STAGES if MODE == 3 else None):
        rows = start_m + offs_m
        q_off = rows[:, None] * stride_qs + offs_d[None, :]
        if MODE == 1:
            q1 = load_rows(q1_base + q_off, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            qk_t = tl.dot(k1, tl.trans(q1), input_precision=DOT_PREC)  # (BLOCK_N, BLOCK_M)
        elif MODE == 2:
            q2 = load_rows(q2_base + q_off, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            qk_t = tl.dot(k2, tl.trans(q2), input_precision=DOT_PREC)
        else:
            q1 = load_rows(q1_base + q_off, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            q2 = load_rows(q2_base + q_off, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            qk1_t = tl.dot(k1, tl.trans(q1), input_precision=DOT_PREC)
            qk2_t = tl.dot(k2, tl.trans(q2), input_precision=DOT_PREC)
            far_t = (rows[None, :] + shift - cols[:, None]) >= w
            qk_t = tl.where(far_t, qk2_t, qk1_t)
        lse2 = row_values(l_base, rows, seqlen_q, float("inf"), MASKED) * 1.4426950408889634
        p_t = probs_t(qk_t, lse2, rows, cols, seqlen_q, shift, qk_scale, CAUSAL, MASKED)
        if BAND:  # a split band: this side's pairs alone (far: rows + shift - cols >= w)
            p_t = keep_side(p_t, rows[None, :] >= (cols + (w - shift))[:, None], MODE)
        do = load_rows(do_base + q_off, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
        delta = row_values(d_base, rows, seqlen_q, 0.0, MASKED)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        if MODE == 1:
            dk1 = tl.dot(ds_t.to(q1.dtype), q1, dk1, input_precision=DOT_PREC)
        elif MODE == 2:
            dk2 = tl.dot(ds_t.to(q2.dtype), q2, dk2, input_precision=DOT_PREC)
        else:
            ds1_t = tl.where(far_t, 0.0, ds_t).to(q1.dtype)
            ds2_t = tl.where(far_t, ds_t, 0.0).to(q2.dtype)
            dk1 = tl.dot(ds1_t, q1, dk1, input_precision=DOT_PREC)
            dk2 = tl.dot(ds2_t, q2, dk2, input_precision=DOT_PREC)
    return dk1, dk2, dv


@triton.jit
def _dkdv_class(
    dk1,
    dk2,
    dv,
    k1,
    k2,
    v,
    Q1,
    Q2,
    DO,
    Lse,
    Delta,
    b64,
    off_hk,
    group,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_lb,
    stride_lh,
    cols,
    offs_m,
    offs_d,
    c_lo,
    c_hi,
    m_lo,
    a,
    m_full,
    b,
    seqlen_q,
    shift,
    w,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BAND_STAGES: tl.constexpr,
    BAND: tl.constexpr,
):
    """The query tiles [c_lo, c_hi) of one class, for every query head of the group in order:
    masked [m_lo, a), unmasked [a, m_full), masked [b, seqlen_q) (triton_fa2's split)."""
    for g in range(0, group):
        off_h = off_hk * group + g
        q_off = b64 * stride_qb + off_h * stride_qh
        l_off = b64 * stride_lb + off_h * stride_lh
        dk1, dk2, dv = _dkdv_inner(
            dk1, dk2, dv, k1, k2, v, Q1 + q_off, Q2 + q_off, DO + q_off, Lse + l_off,
            Delta + l_off, stride_qs, cols, offs_m, offs_d,
            tl.maximum(c_lo, m_lo), tl.minimum(c_hi, a), seqlen_q, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, True, MODE, DOT_PREC, BAND_STAGES, BAND,
        )  # fmt: skip
        dk1, dk2, dv = _dkdv_inner(
            dk1, dk2, dv, k1, k2, v, Q1 + q_off, Q2 + q_off, DO + q_off, Lse + l_off,
            Delta + l_off, stride_qs, cols, offs_m, offs_d,
            tl.maximum(c_lo, a), tl.minimum(c_hi, m_full), seqlen_q, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, False, MODE, DOT_PREC, BAND_STAGES, BAND,
        )  # fmt: skip
        dk1, dk2, dv = _dkdv_inner(
            dk1, dk2, dv, k1, k2, v, Q1 + q_off, Q2 + q_off, DO + q_off, Lse + l_off,
            Delta + l_off, stride_qs, cols, offs_m, offs_d,
            tl.maximum(c_lo, b), tl.minimum(c_hi, seqlen_q), seqlen_q, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, True, MODE, DOT_PREC, BAND_STAGES, BAND,
        )  # fmt: skip
    return dk1, dk2, dv


@tuning.autotune(
    "piecewise_bwd_dkdv",
    configs=configs.bwd_dkdv_configs(),
    key=["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"],
    prune=configs.prune_dkdv,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group", "w"])
def _bwd_dkdv_kernel(
    Q1,
    K1,
    Q2,
    K2,
    V,
    DO,
    Lse,
    Delta,
    DK1,
    DK2,
    DV,
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
    sm_scale,
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
    """q1, q2, dO share one layout; k1, k2, v, dk1, dk2, dv another; Lse and Delta a third.
    SPLIT_BAND: False fused band, True split, 2 merged split (module docstring)."""
    pid_n = tl.program_id(0)
    off_hk = tl.program_id(1)
    off_b = tl.program_id(2)
    start_n = pid_n * BLOCK_N
    b64 = off_b.to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    k_off = b64 * stride_kb + off_hk * stride_kh
    k_ptrs = cols[:, None] * stride_ks + offs_d[None, :]
    # k1, v now, k2 after the near tiles (k1 and k2 live together only across the fused band;
    # split, k2 replaces k1 once dk1 is written)
    k1 = load_rows(K1 + k_off + k_ptrs, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    k2 = k1  # placeholder for the near loop (MODE 1 never reads k2)
    v = load_rows(V + k_off + k_ptrs, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    dk1 = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    dk2 = dk1  # placeholder for the near loop (MODE 1 never updates dk2)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)

    shift = seqlen_k - seqlen_q
    m_full = seqlen_q // BLOCK_M * BLOCK_M  # query blocks [0, m_full) are inside seqlen_q
    if CAUSAL:
        # first row that sees key start_n, and first row that sees the whole key block
        m_lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        m_diag = tl.maximum(start_n + BLOCK_N - 1 - shift, 0)
        m_diag = (m_diag + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        m_lo = tl.minimum(m_lo, seqlen_q)
    else:
        m_lo = 0
        m_diag = 0
    # masked [m_lo, a), unmasked [a, m_full), masked [b, seqlen_q)
    a = tl.maximum(tl.minimum(m_diag, m_full), m_lo)
    b = tl.maximum(a, m_full)
    e1, s2 = query_classes(start_n, shift, w, BLOCK_M, BLOCK_N)
    MERGED: tl.constexpr = SPLIT_BAND == 2
    # near tiles (q1 . k1), the threshold band (both, selected; or split: its near pairs with
    # k1, its far pairs with k2 once dk1 is written), far tiles (q2 . k2); merged split: near
    # tiles and band as one class keeping the near pairs, then band and far tiles keeping far
    dk1, dk2, dv = _dkdv_class(
        dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse, Delta, b64, off_hk, group,
        stride_qb, stride_qs, stride_qh, stride_lb, stride_lh, cols, offs_m, offs_d,
        0, s2 if MERGED else e1, m_lo, a, m_full, b, seqlen_q, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, 1, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip
    if not SPLIT_BAND:
        k2 = load_rows(K2 + k_off + k_ptrs, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        dk2 = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    if not MERGED:
        dk1, dk2, dv = _dkdv_class(
            dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse, Delta, b64, off_hk, group,
            stride_qb, stride_qs, stride_qh, stride_lb, stride_lh, cols, offs_m, offs_d,
            e1, s2, m_lo, a, m_full, b, seqlen_q, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, 1 if SPLIT_BAND else 3, DOT_PREC,
            BAND_STAGES, SPLIT_BAND,
        )  # fmt: skip
    dk_ptrs = DK1 + k_off + k_ptrs
    store_rows(
        dk_ptrs,
        (dk1 * sm_scale).to(DK1.dtype.element_ty),
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    if SPLIT_BAND:  # k1 and dk1 are dead: k2 for the far pairs (split: the band again first)
        k2 = load_rows(K2 + k_off + k_ptrs, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        dk2 = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
    if SPLIT_BAND == 1:
        dk1, dk2, dv = _dkdv_class(
            dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse, Delta, b64, off_hk, group,
            stride_qb, stride_qs, stride_qh, stride_lb, stride_lh, cols, offs_m, offs_d,
            e1, s2, m_lo, a, m_full, b, seqlen_q, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, 2, DOT_PREC, BAND_STAGES, True,
        )  # fmt: skip
    dk1, dk2, dv = _dkdv_class(
        dk1, dk2, dv, k1, k2, v, Q1, Q2, DO, Lse, Delta, b64, off_hk, group,
        stride_qb, stride_qs, stride_qh, stride_lb, stride_lh, cols, offs_m, offs_d,
        e1 if MERGED else s2, seqlen_q, m_lo, a, m_full, b, seqlen_q, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, CAUSAL, 2, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip
    store_rows(
        DK2 + k_off + k_ptrs,
        (dk2 * sm_scale).to(DK2.dtype.element_ty),
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    store_rows(
        DV + k_off + k_ptrs,
        dv.to(DV.dtype.element_ty),
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )


@triton.jit
def _dq_inner(
    dq1,
    dq2,
    q1,
    q2,
    do,
    lse2,
    delta,
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
    """Accumulate the keys [lo, hi) into this query block's dQ1, dQ2 (MODE and BAND as in
    :func:`_dkdv_inner`)."""
    for start_n in tl.range(lo, hi, BLOCK_N, num_stages=BAND_STAGES if MODE == 3 else None):
        cols = start_n + offs_n
        kv_off = cols[:, None] * stride_ks + offs_d[None, :]
        qk, k1, k2, far = scores(
            q1, q2, k1_base, k2_base, kv_off, rows, cols, seqlen_k, offs_d, shift, w,
            HEAD_DIM, HEAD_DIM_PAD, MASKED, MODE, DOT_PREC,
        )  # fmt: skip
        v = load_rows(v_base + kv_off, cols, seqlen_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
        p = probs(qk, lse2, rows, cols, seqlen_k, shift, qk_scale, CAUSAL, MASKED)
        if BAND:  # a split band: this side's pairs alone (far: rows + shift - cols >= w)
            p = keep_side(p, (rows + (shift - w))[:, None] >= cols[None, :], MODE)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        if MODE == 1:
            dq1 = tl.dot(ds.to(k1.dtype), k1, dq1, input_precision=DOT_PREC)
        elif MODE == 2:
            dq2 = tl.dot(ds.to(k2.dtype), k2, dq2, input_precision=DOT_PREC)
        else:
            dq1 = tl.dot(tl.where(far, 0.0, ds).to(k1.dtype), k1, dq1, input_precision=DOT_PREC)
            dq2 = tl.dot(tl.where(far, ds, 0.0).to(k2.dtype), k2, dq2, input_precision=DOT_PREC)
    return dq1, dq2


@triton.jit
def _dq_class(
    dq1,
    dq2,
    q1,
    q2,
    do,
    lse2,
    delta,
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
    dq1, dq2 = _dq_inner(
        dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows, offs_n,
        offs_d, c_lo, tl.minimum(c_hi, n_full), seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, False, MODE, DOT_PREC, BAND_STAGES, BAND,
    )  # fmt: skip
    dq1, dq2 = _dq_inner(
        dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows, offs_n,
        offs_d, tl.maximum(c_lo, n_full), tl.minimum(c_hi, n_end), seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, True, MODE, DOT_PREC, BAND_STAGES, BAND,
    )  # fmt: skip
    return dq1, dq2


@tuning.autotune(
    "piecewise_bwd_dq",
    configs=configs.bwd_dq_configs(),
    key=["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"],
    prune=configs.prune_dq,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group", "w"])
def _bwd_dq_kernel(
    Q1,
    K1,
    Q2,
    K2,
    V,
    DO,
    Lse,
    Delta,
    DQ1,
    DQ2,
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
    sm_scale,
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
    """q1, q2, dO, dq1, dq2 share one layout; k1, k2, v another; Lse and Delta a third.
    SPLIT_BAND as in :func:`_bwd_dkdv_kernel`."""
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
    # q2 now, q1 after the far tiles (both live only across the fused band; split, q1 replaces
    # q2 once dq2 is written)
    q2 = load_rows(Q2 + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    q1 = q2  # placeholder for the far loop (MODE 2 never reads q1)
    do = load_rows(DO + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    l_off = b64 * stride_lb + off_h * stride_lh + rows
    lse2 = tl.load(Lse + l_off, mask=rows < seqlen_q, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + l_off, mask=rows < seqlen_q, other=0.0)
    dq1 = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    shift = seqlen_k - seqlen_q
    n_full, n_end = key_ranges(start_m, seqlen_k, shift, BLOCK_M, BLOCK_N, CAUSAL)
    e2, s1 = key_classes(start_m, shift, w, BLOCK_M, BLOCK_N)
    MERGED: tl.constexpr = SPLIT_BAND == 2
    k1_base = K1 + k_off
    k2_base = K2 + k_off
    v_base = V + k_off
    # far tiles (dq2), the threshold band (both; or split: its far pairs with q2, its near pairs
    # with q1 once dq2 is written), near tiles (dq1); merged split: far tiles and band as one
    # class keeping the far pairs, then band and near tiles keeping the near pairs
    dq1, dq2 = _dq_class(
        dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows, offs_n,
        offs_d, 0, s1 if MERGED else e2, n_full, n_end, seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 2, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip
    if not SPLIT_BAND:
        q1 = load_rows(Q1 + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    if not MERGED:
        dq1, dq2 = _dq_class(
            dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows,
            offs_n, offs_d, e2, s1, n_full, n_end, seqlen_k, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 2 if SPLIT_BAND else 3, DOT_PREC,
            BAND_STAGES, SPLIT_BAND,
        )  # fmt: skip
    store_rows(
        DQ2 + q_off + q_ptrs,
        (dq2 * sm_scale).to(DQ2.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    if SPLIT_BAND:  # q2 and dq2 are dead: q1 for the near pairs (split: the band again first)
        q1 = load_rows(Q1 + q_off + q_ptrs, rows, seqlen_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
    if SPLIT_BAND == 1:
        dq1, dq2 = _dq_class(
            dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows,
            offs_n, offs_d, e2, s1, n_full, n_end, seqlen_k, shift, w, qk_scale,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 1, DOT_PREC, BAND_STAGES, True,
        )  # fmt: skip
    dq1, dq2 = _dq_class(
        dq1, dq2, q1, q2, do, lse2, delta, k1_base, k2_base, v_base, stride_ks, rows, offs_n,
        offs_d, e2 if MERGED else s1, n_end, n_full, n_end, seqlen_k, shift, w, qk_scale,
        HEAD_DIM, HEAD_DIM_PAD, BLOCK_N, CAUSAL, 1, DOT_PREC, BAND_STAGES, MERGED,
    )  # fmt: skip
    store_rows(
        DQ1 + q_off + q_ptrs,
        (dq1 * sm_scale).to(DQ1.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
