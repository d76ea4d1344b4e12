"""FlashAttention-2 forward in Triton (Dao, 2023, arXiv:2307.08691, Algorithm 1).

One program owns ``BLOCK_M`` query rows of one (batch, query head) and streams the keys of the
matching kv head (``h_kv = h_q // group``, GQA/MQA) in ``BLOCK_N`` tiles. With
``s = scale * q k^T`` kept in the log2 domain (``t = s * log2(e)``, the scale folded into one
multiplier), each tile updates the running row max ``m``, row sum ``l`` and output ``acc``::

    m'  = max(m, rowmax(t))
    p   = exp2(t - m')                  # never written to HBM
    l   = l * exp2(m - m') + rowsum(p)
    acc = acc * exp2(m - m') + p @ V

and at the end ``out = acc / l``, ``lse = (m + log2 l) * ln 2`` (natural log, fp32); the
softmax steps are every Triton kernel's (:mod:`attnbench.kernels._triton.softmax`).

Masking is paid only where needed: the key range is split into fully visible, in-bounds tiles
(an unmasked loop, no ``where`` on the score tile) and the few tiles on the causal diagonal or
past ``seqlen_k`` (a masked loop). Causal is bottom-right aligned: query ``i`` sees keys
``j <= i + seqlen_k - seqlen_q``; tiles above the diagonal are never visited. Rows that see no
key (``seqlen_q > seqlen_k``) keep ``l = 0`` and give ``out = 0``, ``lse = +inf``.
Causal query blocks are scheduled longest first (reversed ``program_id(0)``), so the short
blocks fill the tail of the grid.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import tuning
from .._triton.softmax import finish_rows, softmax_step
from .._triton.tiles import key_ranges, load_rows, store_rows
from . import configs


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
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
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        p, alpha, l_i, m_new = softmax_step(
            qk, m_i, l_i, rows, cols, seqlen_k, shift, qk_scale, CAUSAL, MASKED
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
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@tuning.autotune(
    "fwd",
    configs=configs.fwd_configs(),
    key=["HEAD_DIM", "CAUSAL", "IS_VARLEN", "SEQ_BUCKET"],
    prune=configs.prune_fwd,
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group"])
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    Lse,
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
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    seqlen_q,
    seqlen_k,
    group,
    qk_scale,
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
    q_base = Q + b64 * stride_qb + q_start.to(tl.int64) * stride_qs + off_h * stride_qh
    k_base = K + b64 * stride_kb + k_start.to(tl.int64) * stride_ks + off_hk * stride_kh
    v_base = V + b64 * stride_vb + k_start.to(tl.int64) * stride_vs + off_hk * stride_vh
    o_base = Out + b64 * stride_ob + q_start.to(tl.int64) * stride_os + off_h * stride_oh
    l_base = Lse + b64 * stride_lb + off_h * stride_lh + q_start

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    q = load_rows(
        q_base + rows[:, None] * stride_qs + offs_d[None, :],
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
        True,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    shift = seqlen_k - seqlen_q
    # keys [0, n_full): visible to every row of the block and inside seqlen_k
    n_full, n_end = key_ranges(start_m, seqlen_k, shift, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
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
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
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

    out, lse = finish_rows(acc, l_i, m_i, False)
    store_rows(
        o_base + rows[:, None] * stride_os + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM_PAD,
    )
    tl.store(l_base + rows, lse, mask=rows < seqlen_q)
