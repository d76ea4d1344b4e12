"""The stable merge of partial attention results, in place, in one pass on the GPU.

A block over the same query rows gives ``out_b`` (any float dtype) and ``lse_b`` (fp32). The
running result (``out`` fp32 (B, S, H, D), ``lse`` fp32 (B, H, S)) becomes::

    lse' = log(e^lse + e^lse_b)
    out' = e^(lse - lse') out + e^(lse_b - lse') out_b

computed against ``m = max(lse, lse_b)`` so nothing overflows. Rows where a side has no visible
key (lse -inf; the reference writes +inf there, which is read as -inf) take the other side
unchanged; rows where neither has one get 0 and -inf.

On CUDA this is one Triton program per (rows, head, batch) that reads ``out``, ``lse``, the
block and writes ``out``/``lse`` back through their strides: one pass over fp32 ``out`` instead
of the half-dozen full-size temporaries the same formula costs in eager torch (a ring step at
8k tokens x 32 heads x D128 merges 134 MB of fp32; eager torch spent ~25% of the step on it).
Elsewhere (CPU, or a failed Triton import) the same maths runs in torch.
"""

from __future__ import annotations

import torch

try:  # triton is optional on CPU-only installs
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None

_NEG_INF = float("-inf")


def _torch_merge(out, lse, block_out, block_lse) -> None:
    bl = block_lse.float().masked_fill(torch.isposinf(block_lse), _NEG_INF)
    m = torch.maximum(lse, bl)
    m = m.masked_fill(torch.isneginf(m), 0.0)
    wa, wb = torch.exp(lse - m), torch.exp(bl - m)
    tot = wa + wb
    new = torch.where(tot > 0, m + torch.log(tot), torch.full_like(m, _NEG_INF))
    inv = torch.where(tot > 0, 1.0 / tot, torch.zeros_like(tot))
    ca = (wa * inv).transpose(1, 2)[..., None]
    cb = (wb * inv).transpose(1, 2)[..., None]
    bo = torch.where(cb > 0, block_out.float(), torch.zeros((), device=out.device))
    out.mul_(ca).add_(cb * bo)
    lse.copy_(new)


if triton is not None:

    @triton.jit
    def _merge_kernel(
        out_ptr,
        lse_ptr,
        bo_ptr,
        bl_ptr,
        so_b,
        so_s,
        so_h,
        sl_b,
        sl_h,
        sl_s,
        sbo_b,
        sbo_s,
        sbo_h,
        sbl_b,
        sbl_h,
        sbl_s,
        seqlen,
        heads,
        HEAD_DIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        pid_s = tl.program_id(0)
        h = tl.program_id(1)
        b = tl.program_id(2)
        rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < seqlen
        l_ptrs = lse_ptr + b * sl_b + h * sl_h + rows * sl_s
        la = tl.load(l_ptrs, mask=rmask, other=float("-inf"))
        lb = tl.load(bl_ptr + b * sbl_b + h * sbl_h + rows * sbl_s, mask=rmask, other=float("-inf"))
        lb = tl.where(lb == float("inf"), float("-inf"), lb)
        m = tl.maximum(la, lb)
        m = tl.where(m == float("-inf"), 0.0, m)
        wa = tl.exp(la - m)
        wb = tl.exp(lb - m)
        tot = wa + wb
        has = tot > 0
        inv = tl.where(has, 1.0 / tl.where(has, tot, 1.0), 0.0)
        ca = wa * inv
        cb = wb * inv
        new = tl.where(has, m + tl.log(tl.where(has, tot, 1.0)), float("-inf"))
        mask2 = rmask[:, None] & (cols[None, :] < HEAD_DIM)
        o_ptrs = out_ptr + b * so_b + h * so_h + rows[:, None] * so_s + cols[None, :]
        bo_ptrs = bo_ptr + b * sbo_b + h * sbo_h + rows[:, None] * sbo_s + cols[None, :]
        o = tl.load(o_ptrs, mask=mask2, other=0.0)
        bo = tl.load(bo_ptrs, mask=mask2, other=0.0).to(tl.float32)
        bo = tl.where(cb[:, None] > 0, bo, 0.0)
        o = o * ca[:, None] + bo * cb[:, None]
        tl.store(o_ptrs, o, mask=mask2)
        tl.store(l_ptrs, new, mask=rmask)


def _triton_merge(out, lse, block_out, block_lse) -> None:
    b, s, h, d = out.shape
    block_d = triton.next_power_of_2(d)
    block_s = max(1, min(64, 8192 // block_d))
    grid = (triton.cdiv(s, block_s), h, b)
    _merge_kernel[grid](
        out,
        lse,
        block_out,
        block_lse,
        *out.stride()[:3],
        *lse.stride(),
        *block_out.stride()[:3],
        *block_lse.stride(),
        s,
        h,
        HEAD_DIM=d,
        BLOCK_D=block_d,
        BLOCK_S=block_s,
    )


def use_triton(t: torch.Tensor) -> bool:
    """The fused kernel runs on CUDA tensors; elsewhere the torch form (tests force
    ``impl="triton"`` on the CPU under ``TRITON_INTERPRET=1``)."""
    return triton is not None and t.is_cuda


def merge_into(
    out: torch.Tensor,
    lse: torch.Tensor,
    block_out: torch.Tensor,
    block_lse: torch.Tensor,
    impl: str | None = None,
) -> None:
    """Merge a block into ``out`` (fp32 (B, S, H, D), last dim contiguous) and ``lse`` (fp32
    (B, H, S)) in place; both may be views (a slice of the rows). ``impl``: "triton", "torch" or
    None (triton on CUDA, torch elsewhere)."""
    if out.dtype != torch.float32 or lse.dtype != torch.float32:
        raise TypeError("merge_into: out and lse accumulate in float32")
    if out.stride(-1) != 1 or block_out.stride(-1) != 1:
        raise ValueError("merge_into: the head dim must be contiguous")
    impl = impl or ("triton" if use_triton(out) else "torch")
    if impl == "triton":
        _triton_merge(out, lse, block_out, block_lse.float())
    else:
        _torch_merge(out, lse, block_out, block_lse)


def start_from(out: torch.Tensor, lse: torch.Tensor, block_out, block_lse) -> None:
    """The first block of a row range: copied in (fp32; lse +inf read as -inf)."""
    out.copy_(block_out)
    lse.copy_(block_lse.float().masked_fill(torch.isposinf(block_lse), _NEG_INF))
