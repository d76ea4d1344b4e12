"""The environment facts every result row carries (also printed by ``attnbench env``)."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

from .. import __version__


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


@functools.cache
def environment(device: str = "cpu") -> dict[str, str | None]:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
    else:
        gpu = None
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "device": dev.type,
        "gpu_name": gpu,
        "cpu_name": cpu_model(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "triton_version": triton_version,
        "flash_attn_version": _version("flash_attn") or _flash_attn_module_version(),
        "flash_attn_4_version": _version("flash-attn-4"),  # flash_attn.cute (FlashAttention-4)
        "attnbench_version": __version__,
        "git_sha": _git_sha(),
    }


@functools.cache
def cpu_model() -> str:
    """The CPU model (``Intel(R) Xeon(R) Platinum 8480+``; /proc/cpuinfo on Linux), else the
    architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _flash_attn_module_version() -> str | None:
    try:
        import flash_attn

        return flash_attn.__version__
    except Exception:
        return None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
