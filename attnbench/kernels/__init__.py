"""In-repo attention kernels, installed as ``attnbench.kernels`` (never a top-level ``kernels``).

- ``triton_fa2/``: FlashAttention-2 in Triton (backend ``triton_fa2``).
- ``piecewise/``: fused piecewise attention in Triton (backend ``piecewise_triton``).
- ``decode/``: split-KV paged decode attention in Triton.
- ``_triton/``: what the Triton kernels share (tile I/O, softmax steps, config pruning, the
  autotuning kept across runs and the tuning choices shipped for known GPUs); the kernel
  packages import from it, never from each other.
- ``cuda/``: FlashAttention-1/-2 in CUDA, built on first use, and their autograd interface
  (backends ``cuda_fa1``, ``cuda_fa2``, ``cuda_fa2_simt``).
- ``switches``: the switches the kernels obey (autotuning, re-tuning, the tuning file), pinned
  by the harness; nothing here imports the harness.
"""
