"""``attnbench dist``: distributed attention checked rank by rank.

    torchrun --nproc_per_node=4 -m attnbench dist accuracy --suite dist
    torchrun --nproc_per_node=4 -m attnbench dist perf --sweep dist
    attnbench dist accuracy --suite dist --nproc 4          # starts torchrun itself
    attnbench dist accuracy --suite dist --nproc 2 --device cpu --out tmp   # gloo
    attnbench dist accuracy --suite dist                    # one launch per world size in the file
    attnbench dist perf --only zigzag,ring --where "causal=true" --json

Under torchrun every rank runs the loop; rank 0 prints and writes ``<out>/<run_id>.parquet``
(rows with ``strategy``, ``world_size``, ``rank``). Without torchrun the command starts the ranks
with torchrun's launcher (``--standalone --nproc_per_node N``) for ``--nproc`` or for each of the
config's ``world_sizes``, refusing before the start what the machine cannot hold (more CPU
ranks than 4 per CPU or ~300 MB each of the free memory; more CUDA ranks than GPUs). A rank that
dies is one line, not a launcher traceback (its tracebacks stay in a log file the line names);
the ranks die with the launcher, even one killed with SIGKILL. ``--only`` and
``--skip`` pick strategies (``--strategies`` is the old name of ``--only``), ``--local-backends``
the local kernels. Exit codes: 0 all good; 1 a row failed accuracy or errored, no case ran, or a
rank died; 2 usage or config error (checked before launching); 124 a collective timed out (the
line names the ranks that never reached it); 130 Ctrl-C, 143 SIGTERM (finished rows are kept).
The driver is :mod:`attnbench.distributed.driver` (on :mod:`attnbench.run.session`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..distributed.driver import DistRequest, run
from ..distributed.strategy import STRATEGIES
from .options import DTYPE, JSON, MODES_OPT, OUT, WHERE, one_line_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Distributed attention (ring, zigzag ring, Ulysses, hybrid), rank by rank.",
)


def _run(req: DistRequest) -> None:
    with one_line_errors():
        code = run(req)
    raise typer.Exit(code)


_DEVICE = typer.Option(None, "--device", help="cuda (NCCL) or cpu (gloo); default cuda if present")
_LOCAL = typer.Option(None, "--local-backends", help="comma-separated local backends (need an lse)")
_ONLY = typer.Option(None, "--only", help=f"comma-separated strategies ({','.join(STRATEGIES)})")
_SKIP = typer.Option(None, "--skip", help="comma-separated strategies to skip")
_STRATS = typer.Option(None, "--strategies", help="old name of --only")
_NPROC = typer.Option(
    None, "--nproc", help="start torchrun with this many processes (what the machine can hold)"
)
_TIMEOUT = typer.Option(
    None, "--timeout", help="collective timeout in seconds, at least 1 (config: 120)"
)


@app.command()
def accuracy(
    suite: str = typer.Option("dist", "--suite", help="suite name or YAML file"),
    device: str = _DEVICE,
    local: str = _LOCAL,
    only: str = _ONLY,
    skip: str = _SKIP,
    strategies: str = _STRATS,
    dtype: str = DTYPE,
    where: str = WHERE,
    out: Path = OUT,
    nproc: int = _NPROC,
    timeout: float = _TIMEOUT,
    json_out: bool = JSON,
):
    """Per-rank max/mean error of out, lse, dq, dk, dv: distributed vs non-distributed vs the
    fp32 reference."""
    req = DistRequest(
        "accuracy", suite,
        device=device, local=local, only=only, skip=skip, strategies=strategies, dtype=dtype,
        where=where, out=out, nproc=nproc, timeout=timeout, json_out=json_out,
    )  # fmt: skip
    _run(req)


@app.command()
def perf(
    sweep: str = typer.Option("dist", "--sweep", help="sweep name or YAML file"),
    modes: str = MODES_OPT,
    device: str = _DEVICE,
    local: str = _LOCAL,
    only: str = _ONLY,
    skip: str = _SKIP,
    strategies: str = _STRATS,
    dtype: str = DTYPE,
    where: str = WHERE,
    out: Path = OUT,
    nproc: int = _NPROC,
    timeout: float = _TIMEOUT,
    json_out: bool = JSON,
):
    """Median time per rank (the slowest counts), TFLOP/s per device and efficiency against
    single-device time / P, each with its accuracy verdict."""
    req = DistRequest(
        "perf", sweep, modes=modes,
        device=device, local=local, only=only, skip=skip, strategies=strategies, dtype=dtype,
        where=where, out=out, nproc=nproc, timeout=timeout, json_out=json_out,
    )  # fmt: skip
    _run(req)
