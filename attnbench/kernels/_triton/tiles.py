"""``@triton.jit`` helpers of every Triton attention kernel: tile loads and stores, per-row loads
and the causal key range.

Causal is bottom-right aligned: with ``shift = seqlen_k - seqlen_q``, query ``i`` sees keys
``j <= i + shift``. A loop over key tiles (forward, dQ pass) runs the tiles that every row of its
query block sees and that lie inside ``seqlen_k`` without a mask, then the few on the diagonal or
past the end with one (:func:`key_ranges`). The dK/dV passes split their query range the same
way from the keys' side, written out in each kernel: as a helper here it left the PTX unchanged
but moved ptxas's spills by 8-16 bytes on two piecewise dK/dV tiles (its line info changes).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(
    ptrs,
    rows,
    n_rows,
    offs_d,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
):
    """Load a (rows, HEAD_DIM_PAD) tile; masks only what the constexprs say can be out of range."""
    if CHECK_ROWS:
        if HEAD_DIM == HEAD_DIM_PAD:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(
                ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0
            )
    else:
        if HEAD_DIM == HEAD_DIM_PAD:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def store_rows(ptrs, x, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
    if HEAD_DIM == HEAD_DIM_PAD:
        tl.store(ptrs, x, mask=rows[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def row_values(ptr, rows, n_rows, other, MASKED: tl.constexpr):
    """Per-row values (lse, delta) of a tile's rows; rows past ``n_rows`` read ``other``."""
    if MASKED:
        x = tl.load(ptr + rows, mask=rows < n_rows, other=other)
    else:
        x = tl.load(ptr + rows)
    return x


@triton.jit
def key_ranges(
    start_m, seqlen_k, shift, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr
):
    """(n_full, n_end) for the query rows [start_m, start_m + BLOCK_M): keys [0, n_full) are
    visible to every row and inside seqlen_k (unmasked tiles); [n_full, n_end) need the mask."""
    if CAUSAL:
        n_full = tl.maximum(start_m + shift + 1, 0) // BLOCK_N * BLOCK_N
        n_full = tl.minimum(n_full, seqlen_k // BLOCK_N * BLOCK_N)
        n_end = tl.minimum(seqlen_k, start_m + BLOCK_M + shift)
    else:
        n_full = seqlen_k // BLOCK_N * BLOCK_N
        n_end = seqlen_k
    return n_full, n_end
