"""Options shared by every command line of attnbench (``attnbench ...`` and ``attnbench dist
...``) and the one-line error exit. The checks of ``--only``/``--dtype``/``--modes``/
``--device``/``--out`` are the run driver's (:mod:`attnbench.run.session`), so both command
lines behave the same; here they end the command with ``error: ...`` and the exit code."""

from __future__ import annotations

import functools
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
