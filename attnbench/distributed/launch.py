"""Starting the ranks of ``attnbench dist`` without torchrun: torchrun's launcher
(``--standalone --nproc_per_node N``, its elastic agent running in this process) once per world
size. SIGTERM or Ctrl-C to the launcher reaches the ranks (rank 0 says what it kept) and ends
the launch with 143 or 130.

Nothing lost, nothing silent, no tracebacks:

* before anything starts, world sizes the machine cannot hold are refused (:func:`check_capacity`:
  CPU ranks beyond ``RANKS_PER_CPU`` per usable CPU or ``RANK_MEMORY`` each of the available
  memory; CUDA ranks beyond the visible GPUs);
* every rank's stderr goes to a file that :class:`RankStderr` reads as it grows: the rank's own
  lines pass through, Python tracebacks, C++ stacks and c10d's log lines are held back, and a
  rank that left any is one line (exit code, the exception, the path of its full stderr);
* every rank dies with this process, SIGKILL included (:func:`follow_launcher`, in the rank):
  ``PR_SET_PDEATHSIG`` on Linux, and a thread that notices a new parent.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..run.session import RunError, err_console

LAUNCHER_PID = "ATTNBENCH_LAUNCHER_PID"  # set for the ranks: the pid they must not outlive
RANKS_PER_CPU = 4  # CPU ranks per usable CPU (gloo ranks mostly wait on each other)
RANK_MEMORY = 300 * 10**6  # a CPU rank of the shipped suites: ~285 MB private (16 ranks: ~4 GB)


# ---- what the machine can hold -----------------------------------------------------------------
def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all of them where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory still free for new processes (MemAvailable, and the room left under a
    cgroup v2 limit), or None where that is not known."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def check_capacity(dev: str, nprocs: list[int], flag: bool) -> None:
    """:class:`RunError` (exit 2) when the largest world size cannot run here; ``flag``: it came
    from ``--nproc`` (else from the config's ``world_sizes``)."""
    n = max(nprocs)
    what = f"--nproc {n}" if flag else f"world size {n} (the config's world_sizes)"
    if dev == "cuda":
        import torch

        n_gpu = torch.cuda.device_count()
        if n_gpu == 0:
            raise RunError("--device cuda given but no CUDA GPU is visible (use --device cpu)")
        if n > n_gpu:
            raise RunError(f"{what}: {n} processes need {n} GPUs; {n_gpu} visible")
        return
    cpus = usable_cpus()
    if n > RANKS_PER_CPU * cpus:
        raise RunError(
            f"{what}: {n} CPU processes on {cpus:g} CPUs (at most {RANKS_PER_CPU} per CPU: "
            f"{int(RANKS_PER_CPU * cpus)})"
        )
    mem = available_memory()
    if mem is not None and n * RANK_MEMORY > mem:
        raise RunError(
            f"{what}: {n} CPU processes need about {_gb(n * RANK_MEMORY)} "
            f"({RANK_MEMORY // 10**6} MB each); {_gb(mem)} available"
        )


# ---- the ranks die with the launcher ------------------------------------------------------------
def follow_launcher() -> None:
    """In a rank: end this process when its launcher ends, however it ends. The launcher is
    ``$ATTNBENCH_LAUNCHER_PID`` (the agent that started the ranks runs in it), else the parent
    (torchrun's agent, when torchrun was run by hand). Linux: ``PR_SET_PDEATHSIG`` SIGKILL;
    everywhere: a daemon thread that exits when the parent changes. A launcher that is already
    gone ends the rank at once."""
    want = os.environ.get(LAUNCHER_PID)
    launcher = int(want) if want and want.isdigit() else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != launcher:
        _orphaned(launcher)

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(0.5)
        _orphaned(launcher)

    threading.Thread(target=watch, name="attnbench-launcher-watch", daemon=True).start()


def _orphaned(launcher: int) -> None:
    rank = os.environ.get("RANK", "?")
    print(f"error: rank {rank}: the launcher (pid {launcher}) is gone; exiting", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


# ---- rank stderr: the rank's own lines, the rest one line per rank -----------------------------
_LOG = re.compile(r"^\[?[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ [^\]]*\] ?(?P<msg>.*)$")  # c10d/glog
_STACK = ("Exception raised from ", "frame #", "<omitting python frames>")


class RankStderr:
    """One rank's stderr, line by line (:meth:`feed`). The rank's own lines go to ``show``; a
    Python traceback (plain or rich) and everything after it, C++ stacks and c10d's log lines
    are held back (``held`` counts them), and :meth:`summary` says in one line what they were:
    the exception the last traceback ended in, else the last log line's message."""

    def __init__(self, show):
        self.show = show
        self.held = 0
        self._state = ""  # "", "plain", "rich", "rich_end", "message"
        self._noise = False  # the last line was held: blank lines after it are too
        self._exc: str | None = None
        self._log: str | None = None

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if self._state:
            self._traceback(line)
        elif line.startswith("Traceback (most recent call last)"):
            self._state = "plain"
        elif line.startswith("╭") and "Traceback" in line:
            self._state = "rich"
        elif m := _LOG.match(line):
            self._log = m["msg"] or line
        elif line.startswith(_STACK) or (self._noise and not line.strip()):
            pass
        else:
            self._noise = False
            self.show(line)
            return
        self._noise = True
        self.held += 1

    def _traceback(self, line: str) -> None:
        s = self._state
        if s == "plain" and line and not line[0].isspace():
            self._exc, self._state = line.strip(), "message"
        elif s == "rich" and line.startswith("╰"):
            self._state = "rich_end"
        elif s == "rich_end" and line.strip():
            self._exc, self._state = line.strip(), "message"
        elif s == "message" and line.startswith("Traceback (most recent call last)"):
            self._state = "plain"  # a chained exception: the last one is what the rank died of
        elif s == "message" and line.startswith("╭") and "Traceback" in line:
            self._state = "rich"

    @property
    def traceback(self) -> bool:
        return bool(self._state)

    def summary(self) -> str | None:
        if not self.held:
            return None
        return self._exc or self._log or "(its stderr held only blank or stack lines)"


class _LogsSpecs:
    """torchrun's default log layout under our folder, every rank's stderr redirected to a file
    (stdout stays this process's), nothing tee'd: :class:`_Tail` reads the files."""

    def __new__(cls, root: str):
        from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, Std

        class Specs(DefaultLogsSpecs):
            dest = None

            def reify(self, envs):
                self.dest = super().reify(envs)
                return self.dest

        return Specs(log_dir=root, redirects=Std.ERR, tee=Std.NONE)


class _Tail(threading.Thread):
    """Reads every rank's stderr file as it grows, through one :class:`RankStderr` per rank."""

    def __init__(self, specs, n: int):
        super().__init__(name="attnbench-rank-stderr", daemon=True)
        self.specs = specs
        self.lock = threading.Lock()
        self.ranks = {r: RankStderr(self._show) for r in range(n)}
        self.paths: dict[int, str] = {}
        self._done = threading.Event()

    def _show(self, line: str) -> None:
        with self.lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def run(self) -> None:
        files, rest = {}, dict.fromkeys(self.ranks, "")
        try:
            while True:
                last = self._done.is_set()  # read once more after the ranks have ended
                dest = self.specs.dest
                for r, path in (dest.stderrs if dest is not None else {}).items():
                    if r in self.ranks and r not in files and path and os.path.exists(path):
                        files[r] = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                        self.paths[r] = path
                got = False
                for r, f in files.items():
                    data = f.read()
                    if data:
                        got = True
                        *lines, rest[r] = (rest[r] + data).split("\n")
                        for line in lines:
                            self.ranks[r].feed(line)
                if last:
                    for r, tail in rest.items():
                        if tail:
                            self.ranks[r].feed(tail)
                    return
                if not got:
                    self._done.wait(0.05)
        finally:
            for f in files.values():
                f.close()

    def finish(self) -> None:
        self._done.set()
        self.join(10)


# ---- the launch ----------------------------------------------------------------------------------
def launch(kind: str, nprocs: list[int], dev: str, args: list[str], console) -> int:
    """Start ``n`` ranks of ``attnbench dist KIND ARGS`` for each ``n`` in ``nprocs``; the exit
    code is the worst of the launches: 124 a stuck rank, 2 usage, 1 anything else. (The caller
    has run :func:`check_capacity`.)"""
    # the ranks inherit this environment, the run's settings (ATTNBENCH_*) included
    os.environ.update(NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    os.environ[LAUNCHER_PID] = str(os.getpid())  # for the ranks only: removed below
    try:
        return _launch_all(kind, nprocs, args, console)
    finally:
        os.environ.pop(LAUNCHER_PID, None)


def _launch_all(kind: str, nprocs: list[int], args: list[str], console) -> int:
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # a rank's stderr is a file now: on a terminal, keep the terminal's colours and width
    if sys.stdout.isatty() and sys.stderr.isatty():
        os.environ.setdefault("FORCE_COLOR", "1")
        os.environ.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):  # and their children
        for logger in [logging.getLogger(name), *logging.root.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger) and logger.name.startswith(name):
                logger.setLevel(logging.CRITICAL)  # e.g. "Received 15 death signal" (a warning)
    code = 0
    for n in nprocs:
        console.print(
            f"[dim]$ torchrun --standalone --nproc_per_node={n} -m attnbench dist {kind} "
            f"{' '.join(args)}[/]",
            highlight=False,
        )
        root = tempfile.mkdtemp(prefix="attnbench-dist-")
        specs = _LogsSpecs(root)
        cfg = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=n,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.5,
            logs_specs=specs,
        )
        tail = _Tail(specs, n)
        tail.start()
        codes: dict[int, int] = {}
        sig = None
        try:
            elastic_launch(cfg, sys.executable)("-m", "attnbench", "dist", kind, *args)
        except ChildFailedError as e:
            codes = {r: f.exitcode for r, f in e.failures.items()}
            code = max(code, _worst(codes))
        except SignalException as e:  # the ranks got it too; rank 0 said what it kept
            sig = getattr(e, "sigval", signal.SIGTERM)
        finally:
            tail.finish()
            _report(tail, n, codes, root)
        if sig is not None:
            return 130 if sig == signal.SIGINT else 143
    return code


_ENDED = (0, 1, 2, 124, 130, 143, -15)  # a rank's own end (-15: stopped after another failed)


def _report(tail: _Tail, n: int, codes: dict[int, int], root: str) -> None:
    """One line per rank that died or left a traceback; the log folder is kept when a line
    points into it, removed otherwise."""
    lines, keep = [], False
    for r in range(n):
        c, f = codes.get(r, 0), tail.ranks[r]
        why = f.summary() if (f.traceback or c not in _ENDED) else None
        if c in _ENDED and why is None:
            continue
        what = f"rank {r} {_how(c)}"
        if why:
            path = tail.paths.get(r)
            keep = keep or bool(path)
            what += f": {why}" + (f" (its stderr: {path})" if path else "")
        lines.append(what)
    with tail.lock:
        for what in lines:
            err_console.print(
                f"[red]error:[/] world size {n}: {what}", highlight=False, soft_wrap=True
            )
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


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
    args = [f"--{'suite' if kind == 'accuracy' else 'sweep'}", config, "--device", dev]
    args += ["--out", str(Path(out).resolve())]
    for flag, val in flags.items():
        if val is True:
            args.append(flag)
        elif val is not None and val is not False:
            args += [flag, str(val)]
    return args
