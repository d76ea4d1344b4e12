"""Options shared by every command line of attnbench (``attnbench ...`` and ``attnbench dist
...``) and the one-line error exit. The checks of ``--only``/``--dtype``/``--modes``/
``--device``/``--out`` are the run driver's (:mod:`attnbench.run.session`), so both command
lines behave the same; here they end the command with ``error: ...`` and the exit code."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path

import typer

from ..run import session
from ..run.session import RunError, err_console
from ..run.session import make_console as make_console  # the consoles live with the driver


def fail(msg: str, code: int = 2):
    """Print ``error: msg`` on stderr (nothing when empty) and exit with ``code`` (2: usage or
    config error)."""
    if msg:
        err_console.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def one_line_errors():
    """A :class:`~attnbench.run.session.RunError` of the run driver as the one ``error:`` line
    and its exit code."""
    try:
        yield
    except RunError as e:
        fail(e.message, e.code)


def _cli(fn):
    """The driver's check ``fn``, its errors ending the command with one line."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        with one_line_errors():
            return fn(*args, **kwargs)

    return checked


split_list = _cli(session.split_list)
parse_dtypes = _cli(session.parse_dtypes)
parse_modes = _cli(session.parse_modes)
check_device = _cli(session.check_device)
check_out_dir = _cli(session.check_out_dir)


def interrupted() -> None:
    """Ctrl-C before a run started (imports, config, plots): one line on stderr (the caller
    exits 130). A run's own Ctrl-C is the driver's (it says which rows were kept)."""
    try:
        print("error: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def merge_where(args: list[str]) -> list[str]:
    """The command line with every ``--where`` given as one: given twice, both apply (their
    conditions joined with commas), rather than the last alone, which is what a single-valued
    option keeps. A ``--where`` that holds no condition stays as given, to be refused."""
    out, values, at = [], [], None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            out += args[i:]
            break
        if a == "--where" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif a.startswith("--where="):
            value, i = a[len("--where=") :], i + 1
        else:
            out.append(a)
            i += 1
            continue
        values.append(value)
        if at is None:
            at = len(out)
            out.append("")
    if at is None:
        return list(args)
    blank = [v for v in values if not v.replace(",", "").strip()]
    out[at : at + 1] = ["--where", blank[0] if blank else ",".join(values)]
    return out


def _where(value):
    """``--where`` given several times (a repeatable option): every condition of every one
    applies, so they join with commas; each must hold a condition (``--where ","`` would run
    everything). Under a single-valued option, the value as given."""
    if value is None or isinstance(value, str):
        return value
    values = list(value)
    if not values:
        return None
    for v in values:
        if not v.replace(",", "").strip():
            fail(f"--where {v!r} holds no condition; leave it out to run every case")
    return ",".join(values)


def _out(value) -> Path:
    """``--out``: an empty path is refused (it would write into the current folder); ``~`` is
    the home folder (a quoted ``'~/x'`` reaches us unexpanded)."""
    if isinstance(value, Path):
        return value
    if not str(value).strip():
        fail("--out given an empty path; name a folder (default: results)")
    return Path(str(value)).expanduser()


ONLY = typer.Option(None, "--only", help="comma-separated backends to run")
SKIP = typer.Option(None, "--skip", help="comma-separated backends to skip")
DEVICE = typer.Option(None, "--device", help="cuda or cpu (default: cuda when present)")
DTYPE = typer.Option(None, "--dtype", help="run every case in these dtypes (fp16,bf16,fp32)")
MODES_OPT = typer.Option(None, "--modes", help="subset of fwd,bwd,fwd_bwd")
WHERE = typer.Option(
    None,
    "--where",
    callback=_where,
    help='only the cases where every condition holds, e.g. "seqlen>=2048,head_dim=64|128,causal=true"'
    " (repeatable: all apply)",
)
OUT = typer.Option(
    Path("results"),
    "--out",
    envvar="ATTNBENCH_OUT",
    parser=_out,
    help="results folder (default: $ATTNBENCH_OUT, else results)",
)
# metavar="": a plain flag in --help (typer with click 8.2+ shows "<bool>", which takes no value)
JSON = typer.Option(
    False, "--json", help="rows as JSON lines on stdout, the rest on stderr", metavar=""
)
