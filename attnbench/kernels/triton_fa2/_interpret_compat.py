"""Moved to :mod:`attnbench.kernels._triton.interpret_compat`; this name stays for the decode
kernel, which imports it from here (``from .._triton.interpret_compat import install`` once it
switches, and this module can go)."""

from .._triton.interpret_compat import install

__all__ = ["install"]
