"""What the backends of attnbench's own Triton kernels (``triton_fa2``, ``piecewise_triton``,
``decode_triton``) share: importing a kernel package once with the harness's timer registered
for its autotuning (the kernels never import the harness), whether they can run here (on the
CPU only under Triton's interpreter), and the interpreter's bf16 refusal."""

from __future__ import annotations

import importlib

from ..kernels._triton import interpreting

_loaded: dict[str, object] = {}


def kernels(name: str):
    """``attnbench.kernels.<name>``, imported on first use, its tuning timed by the harness's
    timer (registered before the first launch)."""
    if name not in _loaded:
        module = importlib.import_module(f"attnbench.kernels.{name}")
        from ..kernels._triton import tuning
        from ..run.timing import autotune_bench

        tuning.set_bench(autotune_bench)
        _loaded[name] = module
    return _loaded[name]


def availability(
    backend: str, package: str, device: str, cpu_cases: str = "fp16/fp32 cases"
) -> str | None:
    """Why ``backend`` (kernel package ``package``) cannot run on ``device``, or None;
    ``cpu_cases``: what it runs under the interpreter (said in the hint)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton not importable: {e}"
    if device == "cpu" and not interpreting():
        return (
            f"{backend} runs on the CPU only under Triton's interpreter: set "
            f"TRITON_INTERPRET=1 ({cpu_cases})"
        )
    try:
        kernels(package)
    except Exception as e:  # a broken triton install: say so instead of crashing the run
        return f"attnbench.kernels.{package} not importable: {type(e).__name__}: {e}"
    from ..kernels._triton import configs

    if device == "cpu" and not configs.INTERPRET:
        return f"attnbench.kernels.{package} was imported before TRITON_INTERPRET=1 was set"
    return None


def interpreter_refusal(case, device: str) -> str | None:
    """bf16 on the CPU (the interpreter's bf16 ``tl.dot`` is wrong in triton 3.6)."""
    if device == "cpu" and case.dtype == "bf16":
        return (
            "unsupported: bf16 under TRITON_INTERPRET (the interpreter's bf16 tl.dot is "
            "wrong in triton 3.6)"
        )
    return None
