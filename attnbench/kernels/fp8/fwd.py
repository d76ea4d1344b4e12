"""FP8 (e4m3) attention forward in Triton, FlashAttention-3's FP8 recipe on the FA2 loop.

Shah, Bikshandi, Zhang, Thakkar, Ramani, Dao, "FlashAttention-3: Fast and Accurate Attention
with Asynchrony and Low-precision" (2024, arXiv:2407.08608), section 3.3: block-wise scales,
FP8 tensor-core products with fp32 accumulation, optional Hadamard rotation of Q and K
(:mod:`.quant`). One program owns ``BLOCK_M`` query rows of one (batch, query head) and streams
the keys of its kv head in ``BLOCK_N`` tiles::

    s   = (q8 @ k8^T) * qs_i * ks_j          # fp32; qs carries softmax_scale * log2(e)
    m'  = max(m, rowmax(s));  p = exp2(s - m')
    l   = l * exp2(m - m') + rowsum(p)       # from the unrounded p
    acc = acc * exp2(m - m') + e4m3(p * 2^8) @ v8
    out = acc / l * vs / 2^8,  lse = (m + log2 l) * ln 2 (+ the shift of K smoothing)

``qs_i`` / ``ks_j`` are the block scales of query row i and key j (gathered per row and column
from the quantization blocks, which need not match the tiles), ``vs`` the per-channel scale of
V. With fp16 V (``pv="fp16"``), P is rounded to fp16 instead and ``vs`` is 1. V comes transposed, (D, Sk) per head, so that both FP8 products read K-major operands, as
Hopper's FP8 ``wgmma`` requires. Masking, the bottom-right causal diagonal and the online softmax
are every Triton kernel's (:mod:`attnbench.kernels._triton`).

On sm_90 Triton leaves FP8 products in the tensor cores' reduced-precision accumulation
(``max_num_imprecise_acc`` defaults to 2^30 there; DeepSeek-V3 measured about 14 bits on H800),
and P @ V accumulates into the running output, which the online rescale (``acc * alpha``) reads
and writes in fp32 registers between key tiles. How much that costs is GPU-only (the interpreter
accumulates in fp32): ``tests/test_fp8_kernel.py``'s GPU test and ``tools/gpu/fp8_check.py``
measure the kernel against fp64 attention of its own codes; if it shows, ``tl.dot(...,
max_num_imprecise_acc=BLOCK_N)`` promotes every tile.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton import tuning
from .._triton.configs import ARCH, SMEM_BYTES, tune_on
from .._triton.softmax import finish_rows, softmax_step
from .._triton.tiles import key_ranges, load_rows, store_rows

P_SCALE = tl.constexpr(
    256.0
)  # P in [0, 1] is quantized as e4m3(p * 2^8): up to 256, inside e4m3's 448
ENV_TUNE = "fp8_tune"  # the switch (attnbench.kernels.switches)

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Hopper: 128-row tiles over two warpgroups (the
# shapes of FlashAttention-3's FP8 forward and of Triton's fused-attention tutorial); untuned on
# a GPU yet. The interpreter's key tile is smaller than its query tile, so the causal diagonal
# spans several key tiles and both loops run in the tests.
_FWD = {
    "hopper": [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)],
    "ampere": [(128, 64, 4, 2), (64, 64, 4, 2)],
    "interpret": [(32, 16, 4, 1)],
}


def fwd_configs(arch: str | None = None) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in _FWD[arch or ARCH]
    ]


def smem_estimate(cfg: triton.Config, d: int, v_bytes: int = 1) -> int:
    """Bytes of shared memory: Q resident (1-byte), K (1-byte) and V (``v_bytes``) streamed
    through ``num_stages`` buffers. Matches Triton's count (``python -m
    attnbench.kernels.resources fp8 fwd,fwd_pv16``: d128 128x128 s3 113 / 161 KiB)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    return d * (bm + bn * st * (1 + v_bytes))


def fits_registers(cfg: triton.Config, d: int) -> bool:
    """Head dim 256 spills with 128 x 128 tiles or 4 warps (ptxas on sm_90: 200-664 bytes of
    stack); 128 x 64 with 8 warps does not."""
    return d < 256 or (cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] <= 8192 and cfg.num_warps >= 8)


def prune_fwd(configs, named_args, **kwargs):
    """The autotuner's pruning: configs that fit shared memory (V's element size from the
    launch) and registers; only the first unless the ``fp8_tune`` switch is on."""
    d = named_args.get("HEAD_DIM", kwargs.get("HEAD_DIM"))
    vt = named_args.get("VT8")
    v_bytes = vt.element_size() if vt is not None else 1
    keep = [
        c
        for c in configs
        if smem_estimate(c, d, v_bytes) <= SMEM_BYTES[ARCH] and fits_registers(c, d)
    ]
    keep = keep or [min(configs, key=lambda c: smem_estimate(c, d, v_bytes))]
    return keep if tune_on(ENV_TUNE) else keep[:1]


prune_fwd.tune_env = ENV_TUNE


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    qs,
    k_base,
    ks_base,
    vt_base,
    stride_ks,
    stride_vd,
    rows,
    offs_n,
    offs_d,
    lo,
    hi,
    seqlen_k,
    shift,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
):
    for start_n in tl.range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(
            k_base + cols[:, None] * stride_ks + offs_d[None, :],
            cols,
            seqlen_k,
            offs_d,
            HEAD_DIM,
            HEAD_DIM,
            MASKED,
        )
        if MASKED:
            ks = tl.load(ks_base + cols // BLOCK_K, mask=cols < seqlen_k, other=0.0)
            vt = tl.load(
                vt_base + offs_d[:, None] * stride_vd + cols[None, :],
                mask=cols[None, :] < seqlen_k,
                other=0.0,
            )
        else:
            ks = tl.load(ks_base + cols // BLOCK_K)
            vt = tl.load(vt_base + offs_d[:, None] * stride_vd + cols[None, :])
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * qs[:, None] * ks[None, :]  # int8: int32
        p, alpha, l_i, m_new = softmax_step(
            s, m_i, l_i, rows, cols, seqlen_k, shift, 1.0, CAUSAL, MASKED
        )
        acc = acc * alpha[:, None]
        acc = tl.dot((p * P_SCALE).to(vt.dtype), tl.trans(vt), acc)
        m_i = m_new
    return acc, l_i, m_i


@tuning.autotune(
    "fp8_fwd", configs=fwd_configs(), key=["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"], prune=prune_fwd
)
@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "group"])
def _fwd_kernel(
    Q8,
    K8,
    VT8,
    QS,
    KS,
    VS,
    LseShift,
    Out,
    Lse,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vh,
    stride_vd,
    stride_ob,
    stride_os,
    stride_oh,
    seqlen_q,
    seqlen_k,
    group,
    heads_q,
    qk_scale,
    sm_scale,
    SEQ_BUCKET,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    LSE_SHIFT: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    off_h = tl.program_id(1)
    off_b = tl.program_id(2)
    if CAUSAL:  # longest blocks first
        pid_m = tl.num_programs(0) - 1 - pid_m
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    off_hk = off_h // group
    heads_kv = heads_q // group
    b64 = off_b.to(tl.int64)
    q_base = Q8 + b64 * stride_qb + off_h * stride_qh
    k_base = K8 + b64 * stride_kb + off_hk * stride_kh
    vt_base = VT8 + b64 * stride_vb + off_hk * stride_vh
    o_base = Out + b64 * stride_ob + off_h * stride_oh
    n_qblocks = (seqlen_q + BLOCK_Q - 1) // BLOCK_Q
    n_kblocks = (seqlen_k + BLOCK_K - 1) // BLOCK_K
    qs_base = QS + (b64 * heads_q + off_h) * n_qblocks
    ks_base = KS + (b64 * heads_kv + off_hk) * n_kblocks
    vs_base = VS + (b64 * heads_kv + off_hk) * HEAD_DIM
    l_base = Lse + (b64 * heads_q + off_h) * seqlen_q

    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = load_rows(
        q_base + rows[:, None] * stride_qs + offs_d[None, :],
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM,
        True,
    )
    qs = tl.load(qs_base + rows // BLOCK_Q, mask=rows < seqlen_q, other=0.0) * qk_scale

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    shift = seqlen_k - seqlen_q
    n_full, n_end = key_ranges(start_m, seqlen_k, shift, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        qs,
        k_base,
        ks_base,
        vt_base,
        stride_ks,
        stride_vd,
        rows,
        offs_n,
        offs_d,
        0,
        n_full,
        seqlen_k,
        shift,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_K,
        CAUSAL,
        False,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        qs,
        k_base,
        ks_base,
        vt_base,
        stride_ks,
        stride_vd,
        rows,
        offs_n,
        offs_d,
        n_full,
        n_end,
        seqlen_k,
        shift,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_K,
        CAUSAL,
        True,
    )
    out, lse = finish_rows(acc, l_i, m_i, False)
    if LSE_SHIFT:  # K smoothing moved every score of a row by sm_scale * q . mean(k)
        lse += (
            tl.load(
                LseShift + (b64 * heads_q + off_h) * seqlen_q + rows,
                mask=rows < seqlen_q,
                other=0.0,
            )
            * sm_scale
        )
    vs = tl.load(vs_base + offs_d) * (1.0 / P_SCALE)
    out = out * vs[None, :]
    store_rows(
        o_base + rows[:, None] * stride_os + offs_d[None, :],
        out.to(Out.dtype.element_ty),
        rows,
        seqlen_q,
        offs_d,
        HEAD_DIM,
        HEAD_DIM,
    )
    tl.store(l_base + rows, lse, mask=rows < seqlen_q)
