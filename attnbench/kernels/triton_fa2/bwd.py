"""FlashAttention-2 backward in Triton (Dao, 2023, arXiv:2307.08691, Algorithm 2), deterministic.

Nothing of the forward but ``out`` and the log-sum-exp is kept; ``P`` is recomputed per tile:
``p = exp2(t - lse * log2 e)`` with ``t = scale * log2(e) * q k^T``. With
``delta_i = rowsum(dO_i * O_i)`` (the preprocess kernel) the gradients are::

    dV = P^T dO          dP = dO V^T          dS = P * (dP - delta)
    dK = scale * dS^T Q  dQ = scale * dS K

Three kernels, none with atomics, so every run gives bit-identical gradients:

1. ``bwd_preprocess`` (every Triton kernel's, :mod:`attnbench.kernels._triton.softmax`):
   ``delta`` (fp32, the layout of ``lse``).
2. ``_bwd_dkdv_kernel``: one program per ``BLOCK_N`` keys of one (batch, kv head); dK and dV stay
   in registers while the program loops over the query heads of its GQA group (in order) and
   over their query blocks, so a kv head's gradient is summed over its group inside one program,
   deterministically, and written once.
3. ``_bwd_dq_kernel``: one program per ``BLOCK_M`` query rows of one (batch, query head), looping
   over key blocks like the forward; dQ is written once. This second pass recomputes ``q k^T``
   and ``dO V^T`` (7 matmuls per tile pair instead of the 5 of an atomic-add dQ), the price of
   having no races and no fp32 dQ accumulator in HBM.

Both loops split their range into unmasked tiles and masked ones (causal diagonal, sequence
ends), as in the forward (:mod:`attnbench.kernels._triton.tiles`). Rows with ``lse = +inf``
(no visible key) get ``p = 0``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import tuning
from .._triton.softmax import probs, probs_t
from .._triton.tiles import key_ranges, load_rows, row_values, store_rows
from . import configs


@triton.jit
def _dkdv_inner(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    l_base,
    d_base,
    stride_qs,
    stride_dos,
    cols,
    offs_m,
    offs_d,
    lo,
    hi,
    seqlen_q,
    shift,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Accumulate the query rows [lo, hi) of one head into this key block's dK, dV."""
    for start_m in tl.range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        q = load_rows(
            q_base + rows[:, None] * stride_qs + offs_d[None, :],
            rows,
            seqlen_q,
            offs_d,
            HEAD_DIM,
            HEAD_DIM_PAD,
            MASKED,
        )
        lse2 = row_values(l_base, rows, seqlen_q, float("inf"), MASKED) * 1.4426950408889634
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # (BLOCK_N, BLOCK_M)
        p_t = probs_t(qk_t, lse2, rows, cols, seqlen_q, shift, qk_scale, CAUSAL, MASKED)
        do = load_rows(
            do_base + rows[:, None] * stride_dos + offs_d[None, :],
            rows,
            seqlen_q,
            offs_d,
            HEAD_DIM,
            HEAD_DIM_PAD,
            MASKED,
        )
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
        delta = row_values(d_base, rows, seqlen_q, 0.0, MASKED)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@tuning.autotune(
    "bwd_dkdv",
    configs=configs.bwd_dkdv_configs(),
    key=["HEAD_DIM", "CAUSAL", "IS_VARLEN", "SEQ_BUCKET"],
    prune=configs.prune_dkdv,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group"])
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    Lse,
    Delta,
    DK,
    DV,
    cu_seqlens_q,
    cu_seqlens_k,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_dkb,
    stride_dks,
    stride_dkh,
    stride_dvb,
    stride_dvs,
    stride_dvh,
    stride_lb,
    stride_lh,
    seqlen_q,
    seqlen_k,
    group,
    qk_scale,
    sm_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    off_hk = tl.program_id(1)
    off_b = tl.program_id(2)
    if IS_VARLEN:
        q_start = tl.load(cu_seqlens_q + off_b)
        seqlen_q = tl.load(cu_seqlens_q + off_b + 1) - q_start
        k_start = tl.load(cu_seqlens_k + off_b)
        seqlen_k = tl.load(cu_seqlens_k + off_b + 1) - k_start
    else:
        q_start = off_b * 0
        k_start = off_b * 0
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return
    b64 = off_b.to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    k_base = K + b64 * stride_kb + k_start.to(tl.int64) * stride_ks + off_hk * stride_kh
    v_base = V + b64 * stride_vb + k_start.to(tl.int64) * stride_vs + off_hk * stride_vh
    k = load_rows(
        k_base + cols[:, None] * stride_ks + offs_d[None, :],
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
        True,
    )
    v = load_rows(
        v_base + cols[:, None] * stride_vs + offs_d[None, :],
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
        True,
    )
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PAD], dtype=tl.float32)
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
    # masked [m_lo, a), unmasked [a, m_full), masked [max(a, m_full), seqlen_q)
    a = tl.maximum(tl.minimum(m_diag, m_full), m_lo)
    b = tl.maximum(a, m_full)
    for g in range(0, group):
        off_h = off_hk * group + g
        q_base = Q + b64 * stride_qb + q_start.to(tl.int64) * stride_qs + off_h * stride_qh
        do_base = DO + b64 * stride_dob + q_start.to(tl.int64) * stride_dos + off_h * stride_doh
        l_base = Lse + b64 * stride_lb + off_h * stride_lh + q_start
        d_base = Delta + b64 * stride_lb + off_h * stride_lh + q_start
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            l_base,
            d_base,
            stride_qs,
            stride_dos,
            cols,
            offs_m,
            offs_d,
            m_lo,
            a,
            seqlen_q,
            shift,
            qk_scale,
            HEAD_DIM,
            HEAD_DIM_PAD,
            BLOCK_M,
            CAUSAL,
            True,
            DOT_PREC,
        )
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            l_base,
            d_base,
            stride_qs,
            stride_dos,
            cols,
            offs_m,
            offs_d,
            a,
            m_full,
            seqlen_q,
            shift,
            qk_scale,
            HEAD_DIM,
            HEAD_DIM_PAD,
            BLOCK_M,
            CAUSAL,
            False,
            DOT_PREC,
        )
        dk, dv = _dkdv_inner(
            dk,
            dv,
            k,
            v,
            q_base,
            do_base,
            l_base,
            d_base,
            stride_qs,
            stride_dos,
            cols,
            offs_m,
            offs_d,
            b,
            seqlen_q,
            seqlen_q,
            shift,
            qk_scale,
            HEAD_DIM,
            HEAD_DIM_PAD,
            BLOCK_M,
            CAUSAL,
            True,
            DOT_PREC,
        )
    dk_base = DK + b64 * stride_dkb + k_start.to(tl.int64) * stride_dks + off_hk * stride_dkh
    dv_base = DV + b64 * stride_dvb + k_start.to(tl.int64) * stride_dvs + off_hk * stride_dvh
    store_rows(
        dk_base + cols[:, None] * stride_dks + offs_d[None, :],
        (dk * sm_scale).to(DK.dtype.element_ty),
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    store_rows(
        dv_base + cols[:, None] * stride_dvs + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        cols,
        seqlen_k,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )


@triton.jit
def _dq_inner(
    dq,
    q,
    do,
    lse2,
    delta,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    rows,
    offs_n,
    offs_d,
    lo,
    hi,
    seqlen_k,
    shift,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Accumulate the keys [lo, hi) into this query block's dQ."""
    for start_n in tl.range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(
            k_base + cols[:, None] * stride_ks + offs_d[None, :],
            cols,
            seqlen_k,
            offs_d,
            HEAD_DIM,
            HEAD_DIM_PAD,
            MASKED,
        )
        v = load_rows(
            v_base + cols[:, None] * stride_vs + offs_d[None, :],
            cols,
            seqlen_k,
            offs_d,
            HEAD_DIM,
            HEAD_DIM_PAD,
            MASKED,
        )
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        p = probs(qk, lse2, rows, cols, seqlen_k, shift, qk_scale, CAUSAL, MASKED)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@tuning.autotune(
    "bwd_dq",
    configs=configs.bwd_dq_configs(),
    key=["HEAD_DIM", "CAUSAL", "IS_VARLEN", "SEQ_BUCKET"],
    prune=configs.prune_dq,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group"])
def _bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    Lse,
    Delta,
    DQ,
    cu_seqlens_q,
    cu_seqlens_k,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_dqb,
    stride_dqs,
    stride_dqh,
    stride_lb,
    stride_lh,
    seqlen_q,
    seqlen_k,
    group,
    qk_scale,
    sm_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    if CAUSAL:  # longest blocks first
        pid_m = tl.num_programs(0) - 1 - pid_m
    if IS_VARLEN:
        q_start = tl.load(cu_seqlens_q + off_b)
        seqlen_q = tl.load(cu_seqlens_q + off_b + 1) - q_start
        k_start = tl.load(cu_seqlens_k + off_b)
        seqlen_k = tl.load(cu_seqlens_k + off_b + 1) - k_start
    else:
        q_start = off_b * 0
        k_start = off_b * 0
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    off_hk = off_h // group
    b64 = off_b.to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    q_base = Q + b64 * stride_qb + q_start.to(tl.int64) * stride_qs + off_h * stride_qh
    do_base = DO + b64 * stride_dob + q_start.to(tl.int64) * stride_dos + off_h * stride_doh
    k_base = K + b64 * stride_kb + k_start.to(tl.int64) * stride_ks + off_hk * stride_kh
    v_base = V + b64 * stride_vb + k_start.to(tl.int64) * stride_vs + off_hk * stride_vh
    q = load_rows(
        q_base + rows[:, None] * stride_qs + offs_d[None, :],
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
        True,
    )
    do = load_rows(
        do_base + rows[:, None] * stride_dos + offs_d[None, :],
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
        True,
    )
    l_off = b64 * stride_lb + off_h * stride_lh + q_start + rows
    lse2 = tl.load(Lse + l_off, mask=rows < seqlen_q, other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + l_off, mask=rows < seqlen_q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    shift = seqlen_k - seqlen_q
    n_full, n_end = key_ranges(start_m, seqlen_k, shift, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        rows,
        offs_n,
        offs_d,
        0,
        n_full,
        seqlen_k,
        shift,
        qk_scale,
        HEAD_DIM,
        HEAD_DIM_PAD,
        BLOCK_N,
        CAUSAL,
        False,
        DOT_PREC,
    )
    dq = _dq_inner(
        dq,
        q,
        do,
        lse2,
        delta,
        k_base,
        v_base,
        stride_ks,
        stride_vs,
        rows,
        offs_n,
        offs_d,
        n_full,
        n_end,
        seqlen_k,
        shift,
        qk_scale,
        HEAD_DIM,
        HEAD_DIM_PAD,
        BLOCK_N,
        CAUSAL,
        True,
        DOT_PREC,
    )
    dq_base = DQ + b64 * stride_dqb + q_start.to(tl.int64) * stride_dqs + off_h * stride_dqh
    store_rows(
        dq_base + rows[:, None] * stride_dqs + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
