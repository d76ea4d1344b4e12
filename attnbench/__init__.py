"""attnbench: accuracy and performance benchmarks for attention kernels.

Usage::

    attnbench list                      # every backend, available or not, and why
    attnbench accuracy --suite basic    # max/mean error of out, lse, dq, dk, dv vs the fp32 reference
    attnbench perf --sweep seqlen       # median TFLOP/s for fwd, bwd, fwd_bwd (with an accuracy verdict)
    attnbench plot results/             # PNGs under results/_plots/<run_id>/

No speed is reported without an accuracy verdict for the same case.
"""

__version__ = "0.1.0"
