"""In-repo attention kernels, installed as ``attnbench.kernels`` (never a top-level ``kernels``).

- ``triton_fa2/``: FlashAttention-2 in Triton (backend ``triton_fa2``).
- ``cuda/``: FlashAttention-1/-2 in CUDA, built on first use (backends ``cuda_fa1``, ``cuda_fa2``,
  ``cuda_fa2_simt``).
"""
