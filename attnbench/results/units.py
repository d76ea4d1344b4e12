"""Units of the metric columns (numbers or pandas columns)."""

from __future__ import annotations


def tflops(flops, ms):
    """TFLOP/s of ``flops`` done in ``ms`` milliseconds (numbers or pandas columns)."""
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes, ms):
    """GB/s of ``nbytes`` moved in ``ms`` milliseconds (None when the bytes are unknown)."""
    return None if nbytes is None else nbytes / (ms * 1e-3) / 1e9
