"""``@triton.jit`` pieces of FlashAttention-2's softmax shared by the Triton attention kernels.

Forward (Dao, 2023, arXiv:2307.08691, Algorithm 1): scores are kept in the log2 domain
(``t = s * log2(e)``, the host folds ``log2(e)`` into ``qk_scale = softmax_scale * LOG2E``);
:func:`softmax_step` updates the running row max ``m``, row sum ``l`` and the rescale of the
output, :func:`finish_rows` gives ``out = acc / l`` and the natural-log ``lse``.

Backward (Algorithm 2): ``P`` is recomputed per tile from the forward's lse (:func:`probs`, and
:func:`probs_t` for the transposed tile of the dK/dV pass), and ``delta_i = rowsum(dO_i * O_i)``
comes from :func:`bwd_preprocess` (fp32, the layout of ``lse``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import load_rows

LOG2E = 1.4426950408889634  # the host folds it into qk_scale = softmax_scale * log2(e)


@triton.jit
def softmax_step(
    qk, m_i, l_i, rows, cols, seqlen_k, shift, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr
):
    """One online-softmax step (log2 domain) on a score tile ``qk`` of rows x cols: the tile's
    probabilities, the rescale of the running sums and the new (l, m). Masked tiles hide keys
    past ``seqlen_k`` and, causal, keys right of the bottom-right diagonal."""
    if MASKED:
        visible = cols[None, :] < seqlen_k
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + shift)
        t = tl.where(visible, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(t - m_sub[:, None])
        alpha = tl.exp2(m_i - m_sub)
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, l_i, m_new


@triton.jit
def finish_rows(acc, l_i, m_i, LSE_FP64: tl.constexpr):
    """(out, lse) of a query tile from the online-softmax state: ``out = acc / l`` and the
    natural-log ``lse = (m + log2 l) * ln 2``; rows that saw no key give out 0, lse +inf.
    LSE_FP64: log2, sum and * ln 2 in fp64, once per row, so lse is rounded once, not three
    times. The piecewise kernel sets it for fp32 inputs (the one-ulp lse showed as 3.5x torch's
    dK2 error in an fp32 CPU case); triton_fa2 does not (with it, its fp32 varlen case's dQ
    error rose to 5.7x torch's): at fp32 both are ulp-level effects on a 3x rule."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    if LSE_FP64:
        lse2 = m_i.to(tl.float64) + tl.log2(l_safe.to(tl.float64))
        lse = (lse2 * 0.6931471805599453).to(tl.float32)
    else:
        lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453  # log2 -> ln
    lse = tl.where(empty, float("inf"), lse)
    return out, lse


@triton.jit
def probs(
    qk, lse2, rows, cols, seqlen_k, shift, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr
):
    """P of a score tile ``qk`` (rows x cols) from the forward's lse (log2 domain); 0 where a
    masked tile hides the key (past ``seqlen_k``, or right of the causal diagonal)."""
    p = tl.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        visible = cols[None, :] < seqlen_k
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + shift)
        p = tl.where(visible, p, 0.0)
    return p


@triton.jit
def probs_t(
    qk_t, lse2, rows, cols, seqlen_q, shift, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr
):
    """:func:`probs` transposed (a cols x rows tile, the dK/dV pass); rows past ``seqlen_q`` 0."""
    p_t = tl.exp2(qk_t * qk_scale - lse2[None, :])
    if MASKED:
        visible = rows[None, :] < seqlen_q
        if CAUSAL:
            visible = visible & (cols[:, None] <= rows[None, :] + shift)
        p_t = tl.where(visible, p_t, 0.0)
    return p_t


@triton.jit(do_not_specialize=["seqlen_q"])
def bwd_preprocess(
    Out,
    DO,
    Delta,
    cu_seqlens_q,
    stride_ob,
    stride_os,
    stride_oh,
    stride_dob,
    stride_dos,
    stride_doh,
    stride_lb,
    stride_lh,
    seqlen_q,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``delta = rowsum(dO * O)`` (fp32, the layout of ``lse``), one program per ``BLOCK_M``
    query rows of one (batch, head); packed varlen rows with ``IS_VARLEN``."""
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    if IS_VARLEN:
        q_start = tl.load(cu_seqlens_q + off_b)
        seqlen_q = tl.load(cu_seqlens_q + off_b + 1) - q_start
    else:
        q_start = off_b * 0
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    b64 = off_b.to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    o_base = Out + b64 * stride_ob + q_start.to(tl.int64) * stride_os + off_h * stride_oh
    do_base = DO + b64 * stride_dob + q_start.to(tl.int64) * stride_dos + off_h * stride_doh
    o = load_rows(
        o_base + rows[:, None] * stride_os + offs_d[None, :],
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
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(
        Delta + b64 * stride_lb + off_h * stride_lh + q_start + rows, delta, mask=rows < seqlen_q
    )
