"""HBM traffic of the CUDA FlashAttention forwards (analysis, not a kernel).

Why FA1 is slower: HBM traffic of the forward, for one (batch, head) with Sq = Sk = N, head dim
d, element size e (2 bytes) and FA1's inner loop over Tc = N / Bc key blocks:

* FA2 (``cuda_fa2``, Br = 128): Q read once, O and lse written once, K and V read once per
  query block: ``bytes = 2 N d e + 4 N + (N / Br) * 2 N d e``.
* FA1 (``cuda_fa1``, Bc = 64, O/m/l in fp32): at every outer step the inner loop reads all of Q
  and reads and rewrites O, m, l: ``bytes = 2 N d e + Tc * (N d e + 2 * 4 N d + 4 * 4 N)``
  plus the final O conversion (``4 N d + N d e + 4 N``).

At N = 8192, d = 128 (bf16), per head: FA2 270 MB (its K/V re-reads mostly hit L2: one head's
K and V are 4 MB), FA1 1.36 GB (0.68 GB causal) of Q re-reads and fp32 O/m/l round trips that
do not fit in L2 (32 heads x 6 MB in flight), against 34 GFLOP: ~40 B/kFLOP, seven times the
H200's balance point (4.3 TB/s / 790 TFLOP/s = 5.4 B/kFLOP), so FA1 is memory-bound; and with
one thread block per (batch, head) it fills only B * H of the 132 SMs (32 at 16k tokens,
S = 8k, H = 16). :func:`fwd_hbm_bytes` evaluates the formulas.
"""

from __future__ import annotations

import torch

_FA2_BR, _FA1_BC = 128, 64


def fwd_hbm_bytes(case, kernel: str) -> int:
    """HBM bytes the forward moves (the module docstring's formulas; causal ~halves the
    K/V/O traffic, counted here as the fraction of visible (query block, key block) pairs)."""
    n_q, n_k, d = case.seqlen_q, case.seqlen_k, case.head_dim
    e = torch.finfo(case.torch_dtype).bits // 8
    frac = 0.5 if case.causal else 1.0
    heads = case.batch * case.heads_q
    if kernel == "fa2":
        per = 2 * n_q * d * e + 4 * n_q + frac * -(-n_q // _FA2_BR) * 2 * n_k * d * e
    elif kernel == "fa1":
        tc = -(-n_k // _FA1_BC)
        per = (
            2 * n_k * d * e
            + frac * tc * (n_q * d * e + 8 * n_q * d + 16 * n_q)
            + 4 * n_q * d
            + n_q * d * e
            + 4 * n_q
        )
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return int(heads * per)
