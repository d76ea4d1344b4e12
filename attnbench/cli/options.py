"""Options and parsers shared by every command line of attnbench (``attnbench ...`` and
``attnbench dist ...``): one place for the consoles, the one-line error exit and the checks of
``--only``/``--dtype``/``--modes``/``--device``, so both command lines behave the same."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer
from rich.console import Console

from ..problems.base import DTYPE_ALIASES, MODES


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when output is not a terminal."""
    con = Console(stderr=stderr)
    if not con.is_terminal:
        con = Console(stderr=stderr, width=200)
    return con


err_console = make_console(stderr=True)


def fail(msg: str, code: int = 2):
    """Print ``error: msg`` on stderr and exit with ``code`` (2: usage or config error)."""
    err_console.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def split_list(v: str | None, flag: str = "option") -> list[str] | None:
    """``"a, b, a"`` -> ``["a", "b"]`` (repeats dropped); None when the option was not given;
    exits 2 when it was given empty (``--only ""`` must not mean "everything")."""
    if v is None:
        return None
    items = list(dict.fromkeys(s.strip() for s in str(v).split(",") if s.strip()))
    if not items:
        fail(f"{flag} given an empty list; leave it out to use the default")
    return items


def parse_dtypes(v: str | None) -> list[str] | None:
    """``--dtype fp16,bfloat16`` -> canonical names; exits 2 on an unknown one."""
    dtypes = split_list(v, "--dtype")
    if dtypes is None:
        return None
    bad = [d for d in dtypes if d not in DTYPE_ALIASES]
    if bad:
        fail(f"--dtype {bad[0]!r} unknown; expected fp16, bf16 or fp32")
    return [DTYPE_ALIASES[d] for d in dtypes]


def parse_modes(v: str | None) -> list[str] | None:
    """``--modes fwd,bwd`` -> the list; exits 2 on an unknown mode."""
    modes = split_list(v, "--modes")
    if modes is None:
        return None
    bad = [m for m in modes if m not in MODES]
    if bad:
        fail(f"--modes {bad[0]!r} unknown; expected {', '.join(MODES)}")
    return modes


def check_device(device: str | None) -> str:
    """``--device`` (default: cuda when present) checked against what this machine has."""
    import torch

    from ..results.env import default_device

    dev = device or default_device()
    if dev not in ("cuda", "cpu") and not dev.startswith("cuda:"):
        fail(f"--device must be cuda or cpu, got {dev!r}")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda given but no CUDA GPU is visible (use --device cpu)")
    return dev


def check_out_dir(out: Path, flag: str = "--out") -> Path:
    """``--out`` as a folder this process can write into (made if missing), checked before
    anything is computed; exits 2 with one line otherwise (a file, a read-only or full disk)."""
    out = Path(out)
    if flag == "--out" and os.environ.get("ATTNBENCH_OUT") == str(out):
        flag = "--out (from $ATTNBENCH_OUT)"
    if out.exists() and not out.is_dir():
        fail(f"{flag} {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".attnbench-probe-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        fail(f"{flag} {out}: not a writable folder ({e.strerror or e})")
    return out


ONLY = typer.Option(None, "--only", help="comma-separated backends to run")
SKIP = typer.Option(None, "--skip", help="comma-separated backends to skip")
DEVICE = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)")
DTYPE = typer.Option(None, "--dtype", help="run every case in these dtypes (fp16,bf16,fp32)")
MODES_OPT = typer.Option(None, "--modes", help="subset of fwd,bwd,fwd_bwd")
WHERE = typer.Option(
    None,
    "--where",
    help='only the cases where every condition holds, e.g. "seqlen>=2048,head_dim=64|128,causal=true"',
)
OUT = typer.Option(
    Path("results"),
    "--out",
    envvar="ATTNBENCH_OUT",
    help="results folder (default: $ATTNBENCH_OUT, else results)",
)
# metavar="": a plain flag in --help (typer with click 8.2+ shows "<bool>", which takes no value)
JSON = typer.Option(
    False, "--json", help="rows as JSON lines on stdout, the rest on stderr", metavar=""
)
