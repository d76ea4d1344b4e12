"""CUDA FlashAttention-1/-2 kernels, built on first use (one extension for all three kernels).

Usage::

    from attnbench.kernels import cuda as fa_cuda
    ext = fa_cuda.load()                       # builds once into the cache, then imports
    out, lse = ext.fwd(q, k, v, causal, scale, "fa2")          # "fa2" | "fa2_simt" | "fa1"
    dq, dk, dv = ext.bwd(dout, q, k, v, out, lse, causal, scale, "fa2")   # "fa2" | "fa1"

The autograd Function over ``fwd``/``bwd`` (what the backends call) is :mod:`.interface`
(``flash_attn_cuda``). Sources (``*.cu`` compile with nvcc alone; ``fa_binding.cpp`` is the
only torch file): ``fa2_fwd.cu``, ``fa2_bwd.cu``, ``fa2_simt_fwd.cu``, ``fa1.cu``; helpers in
``fa_common.cuh``.
The build uses ``torch.utils.cpp_extension.load`` (ninja) for the GPU's own architecture into
``$ATTNBENCH_CACHE/cuda`` (default ``~/.cache/attnbench/cuda``), one folder per architecture;
the compiler output of the last real build (ptxas register/spill lines included) is kept in
``build.log`` there. A failed build is remembered: :func:`build_error` gives the compiler's
first error line, and nothing else breaks.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent
CU_SOURCES = ("fa2_fwd.cu", "fa2_bwd.cu", "fa2_simt_fwd.cu", "fa1.cu")
SOURCES = ("fa_binding.cpp", *CU_SOURCES)
EXT_NAME = "attnbench_cuda_fa"
BASE_FLAGS = ("-O3", "--use_fast_math", "-lineinfo", "-Xptxas=-v")  # + torch's -std

_ext = None
_error: str | None = None


def cache_dir() -> Path:
    root = os.environ.get("ATTNBENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "attnbench") / "cuda"


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """``-gencode`` for exactly this GPU, e.g. (9, 0) -> compute_90 / sm_90."""
    cc = f"{capability[0]}{capability[1]}"
    return [f"-gencode=arch=compute_{cc},code=sm_{cc}"]


def nvcc_flags(capability: tuple[int, int]) -> list[str]:
    return [*BASE_FLAGS, *arch_flags(capability)]


def current_capability() -> tuple[int, int] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())


def build_flags() -> str:
    """The nvcc flags a build on this machine uses (architecture left symbolic without a GPU)."""
    cap = current_capability()
    arch = arch_flags(cap) if cap else ["-gencode=arch=compute_<cc>,code=sm_<cc>"]
    return " ".join([*BASE_FLAGS, *arch])


def nvcc_path() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return None


def build_dir(capability: tuple[int, int]) -> Path:
    return cache_dir() / f"sm{capability[0]}{capability[1]}"


def build_log(capability: tuple[int, int] | None = None) -> str:
    """Compiler output of the last build for this GPU ('' if none yet)."""
    cap = capability or current_capability()
    path = build_dir(cap) / "build.log" if cap else None
    return path.read_text(errors="replace") if path and path.exists() else ""


def first_error(log: str) -> str:
    """The compiler's first error line in a build log (or its last non-empty line)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pattern in (r"\berror\b\s*:|:\s*error\b", r"\berror\b"):
        for ln in lines:
            if re.search(pattern, ln, re.IGNORECASE) and "Error building extension" not in ln:
                return ln
    return lines[-1] if lines else "unknown error"


@contextlib.contextmanager
def _fds_to(path: Path):
    """Send this process's stdout/stderr file descriptors (so ninja's and nvcc's output) to
    ``path`` for the duration of the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def build_error() -> str | None:
    """None when the extension is (or can be) loaded, else the reason; builds on first call."""
    try:
        load()
    except RuntimeError as e:
        return str(e)
    return None


def load():
    """Build (first use) and import the extension; raise RuntimeError with a one-line reason."""
    global _ext, _error
    if _ext is not None:
        return _ext
    if _error is not None:
        raise RuntimeError(_error)
    cap = current_capability()
    if cap is None:
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False)")
    if nvcc_path() is None:
        _error = "nvcc not found (set CUDA_HOME to a CUDA toolkit)"
        raise RuntimeError(_error)
    from torch.utils import cpp_extension

    out = build_dir(cap)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="build-", suffix=".log", dir=out)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _fds_to(tmp):
            _ext = cpp_extension.load(
                name=EXT_NAME,
                sources=[str(SRC_DIR / s) for s in SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=nvcc_flags(cap),
                extra_include_paths=[str(SRC_DIR)],
                build_directory=str(out),
                verbose=True,
            )
    except Exception as e:  # any build failure becomes the reason
        log = tmp.read_text(errors="replace")
        _error = f"CUDA build failed: {first_error(log + chr(10) + str(e))}"
        (out / "build.log").write_text(log)
        raise RuntimeError(_error) from e
    finally:
        log = tmp.read_text(errors="replace") if tmp.exists() else ""
        if "ptxas" in log or "error" in log.lower():  # a real compile happened: keep its log
            (out / "build.log").write_text(log)
        tmp.unlink(missing_ok=True)
    return _ext
