"""Starting the ranks of ``attnbench dist`` without torchrun: torchrun's launcher
(``--standalone --nproc_per_node N``) once per world size. A rank that fails gives one line, not
torchrun's traceback; SIGTERM or Ctrl-C to the launcher reaches the ranks (rank 0 says what it
kept) and ends the launch with 143 or 130."""

from __future__ import annotations

import os
import signal
import sys

from ..run.session import RunError, err_console


def launch(kind: str, nprocs: list[int], dev: str, args: list[str], console) -> int:
    """Start ``n`` ranks of ``attnbench dist KIND ARGS`` for each ``n`` in ``nprocs``; the exit
    code is the worst of the launches: 124 a stuck rank, 2 usage, 1 anything else."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if dev == "cuda":
        import torch

        n_gpu = torch.cuda.device_count()
        if n_gpu == 0:
            raise RunError("--device cuda given but no CUDA GPU is visible (use --device cpu)")
        too_many = [n for n in nprocs if n > n_gpu]
        if too_many:
            raise RunError(f"{too_many[0]} processes need {too_many[0]} GPUs; {n_gpu} visible")
    # the ranks inherit this environment, the run's settings (ATTNBENCH_*) included
    os.environ.update(NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    code = 0
    for n in nprocs:
        console.print(
            f"[dim]$ torchrun --standalone --nproc_per_node={n} -m attnbench dist {kind} "
            f"{' '.join(args)}[/]",
            highlight=False,
        )
        cfg = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=n,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.5,
        )
        try:
            elastic_launch(cfg, sys.executable)("-m", "attnbench", "dist", kind, *args)
        except ChildFailedError as e:
            codes = {r: f.exitcode for r, f in e.failures.items()}
            code = max(code, _worst(codes))
            ended = (0, 1, 2, 124, 130, 143, -15)  # -15: stopped by the launcher after another
            died = {r: c for r, c in codes.items() if c not in ended}
            if died:
                what = ", ".join(f"rank {r} {_how(c)}" for r, c in sorted(died.items()))
                err_console.print(f"[red]error:[/] world size {n}: {what}", highlight=False)
        except SignalException as e:  # the ranks got it too; rank 0 said what it kept
            sig = getattr(e, "sigval", signal.SIGTERM)
            return 130 if sig == signal.SIGINT else 143
    return code


def _worst(codes: dict[int, int]) -> int:
    vals = set(codes.values())
    for c in (124, 143, 130, 2):
        if c in vals:
            return c
    return 1


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def rank_args(kind: str, config: str, dev: str, out, flags: dict) -> list[str]:
    """The command line of every rank: ``--suite``/``--sweep``, the device, the resolved
    results folder and every flag given (``flags``: name -> value, None: not given; True: a
    plain flag)."""
    from pathlib import Path

    args = [f"--{'suite' if kind == 'accuracy' else 'sweep'}", config, "--device", dev]
    args += ["--out", str(Path(out).resolve())]
    for flag, val in flags.items():
        if val is True:
            args.append(flag)
        elif val is not None and val is not False:
            args += [flag, str(val)]
    return args
