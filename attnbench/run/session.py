"""The run driver both command lines use (``attnbench accuracy|perf`` and ``attnbench dist
accuracy|perf``): what to run (config, ``--dtype``, ``--where``, ``--only``/``--skip``), the
run id, results writer and :class:`~attnbench.run.runner.RunContext`, the run's
:class:`~attnbench.settings.Settings`, SIGTERM and Ctrl-C, the accounting line and the exit code.

    code = run(Request("perf", "seqlen", only="naive", device="cpu"))   # 0 or 1

Exit codes: 0 all good; 1 some case failed accuracy or errored, no case ran, or the results
could not be written (rows written before are kept); 2 usage or config error (nothing run);
130 Ctrl-C, 143 SIGTERM (the finished rows are kept; one line says how many and where).
Nothing here imports typer: a run that ends early raises :class:`RunError` (one line and an
exit code), which the command line prints as ``error: ...``.
"""

from __future__ import annotations

import codecs
import io
import os
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..problems.base import DTYPE_ALIASES, MODES
from ..results import ResultsWriteError, ResultsWriter, new_run_id
from ..settings import Settings
from .repro import Repro


class RunError(Exception):
    """A run that ends with one ``error: MESSAGE`` line (none when empty) and exit ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.message, self.code = message, code


# ---- consoles and the checks of flags shared by every command ---------------------------------
# what the tables and lines print, on a terminal that cannot show it (PYTHONIOENCODING=ascii)
_ASCII = {"·": ".", "—": "-", "–": "-", "…": "...", "×": "x", "≤": "<=", "≥": ">=", "→": "->"}


def _ascii_fallback(e: UnicodeError):
    if not isinstance(e, UnicodeEncodeError):
        raise e
    bad = e.object[e.start : e.end]
    return "".join(_ASCII.get(ch, "?") for ch in bad), e.end


codecs.register_error("attnbench-ascii", _ascii_fallback)


def safe_stdio() -> None:
    """stdout and stderr that cannot fail on a character their encoding lacks: where the
    encoding is not UTF (``PYTHONIOENCODING=ascii``, a C locale), what it cannot show is
    written as its ASCII look-alike (``·`` -> ``.``) or ``?``, never a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        enc = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
        if (
            isinstance(stream, io.TextIOWrapper)
            and not enc.startswith("utf")
            and stream.errors == "strict"
        ):
            try:
                stream.reconfigure(errors="attnbench-ascii")
            except (AttributeError, ValueError, io.UnsupportedOperation):
                pass


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when output is not a terminal (and
    does not fail on a terminal that cannot show every character: :func:`safe_stdio`)."""
    safe_stdio()
    con = Console(stderr=stderr)
    if not con.is_terminal:
        con = Console(stderr=stderr, width=200)
    return con


err_console = make_console(stderr=True)


def split_list(v: str | None, flag: str = "option") -> list[str] | None:
    """``"a, b, a"`` -> ``["a", "b"]`` (repeats dropped); None when the option was not given;
    an error when it was given empty (``--only ""`` must not mean "everything")."""
    if v is None:
        return None
    items = list(dict.fromkeys(s.strip() for s in str(v).split(",") if s.strip()))
    if not items:
        raise RunError(f"{flag} given an empty list; leave it out to use the default")
    return items


def parse_dtypes(v: str | None) -> list[str] | None:
    """``--dtype fp16,bfloat16`` -> canonical names."""
    dtypes = split_list(v, "--dtype")
    if dtypes is None:
        return None
    bad = [d for d in dtypes if d not in DTYPE_ALIASES]
    if bad:
        raise RunError(f"--dtype {bad[0]!r} unknown; expected fp16, bf16 or fp32")
    return [DTYPE_ALIASES[d] for d in dtypes]


def parse_modes(v: str | None) -> list[str] | None:
    """``--modes fwd,bwd`` -> the list."""
    modes = split_list(v, "--modes")
    if modes is None:
        return None
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise RunError(f"--modes {bad[0]!r} unknown; expected {', '.join(MODES)}")
    return modes


def check_device(device: str | None) -> str:
    """``--device`` (default: cuda when present) checked against what this machine has."""
    import torch

    from ..results.env import default_device

    dev = device or default_device()
    if dev not in ("cuda", "cpu") and not dev.startswith("cuda:"):
        raise RunError(f"--device must be cuda or cpu, got {dev!r}")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda given but no CUDA GPU is visible (use --device cpu)")
    return dev


def check_out_dir(out: Path | str, flag: str = "--out") -> Path:
    """``--out`` as a folder this process can write into (made if missing), checked before
    anything is computed (a file, a read-only or full disk, a name too long: an error). ``~`` is
    the home folder; an empty path is an error (it would mean the current folder)."""
    if not str(out).strip():
        raise RunError(f"{flag} given an empty path; name a folder (default: results)")
    out = Path(out).expanduser()
    env = os.environ.get("ATTNBENCH_OUT")
    if flag == "--out" and env and Path(env).expanduser() == out:
        flag = "--out (from $ATTNBENCH_OUT)"
    shown = (
        str(out) if len(str(out)) <= 160 else f"{str(out)[:160]}... ({len(str(out))} characters)"
    )
    try:
        if out.exists() and not out.is_dir():
            raise RunError(f"{flag} {shown}: is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".attnbench-probe-") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise RunError(f"{flag} {shown}: not a writable folder ({e.strerror or e})") from None
    return out


def where_cases(
    cases: list, where: str | list[str] | None, case_types: list[type], say=None
) -> list:
    """The cases ``--where`` keeps (its conditions checked against ``case_types``' fields; given
    several times, all apply). ``say``: called with one line, how many of how many were kept."""
    from .where import keep, parse_where

    if where is not None and not isinstance(where, str):
        where = list(where) or None
    if where == "":
        raise RunError("--where given empty; leave it out to run every case")
    try:
        kept = keep(cases, parse_where(where, case_types))
    except ValueError as e:
        raise RunError(str(e)) from None
    if where is not None and say is not None:
        say(f"--where: {len(kept)} of {len(cases)} cases")
    return kept


def where_text(where: str | list[str] | None) -> str:
    """``--where`` as given, for a message (several: joined with commas, as they all apply)."""
    if where is None or isinstance(where, str):
        return where or ""
    return ",".join(where)


# ---- settings ---------------------------------------------------------------------------------
@contextmanager
def activated(settings: Settings):
    """``settings`` are the process's (and the kernels' switches) inside the block; afterwards
    what was active before is again (one process may drive several runs: tests, notebooks)."""
    restore = settings.activate()
    try:
        yield settings
    finally:
        restore()


# ---- one run: context, signals, accounting, verdict -------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a job scheduler, a device lease running out) during a run."""


def _on_sigterm(signum, frame):
    raise Terminated


NOTHING_RAN = "no case ran: every backend was unsupported on every case (see the reasons above)"


class Session:
    """One run as the user sees it: its console (stderr under ``--json``), settings, context
    (``ctx``: None on the ranks of a distributed run that do not write), wall clock."""

    def __init__(self, json_out: bool = False, settings: Settings | None = None):
        self.t0 = time.perf_counter()
        self.json_out = json_out
        self.console = err_console if json_out else make_console()
        self.settings = settings if settings is not None else Settings.from_env()
        self.ctx = None

    def open(self, kind: str, name: str, suite: str, device: str, out: Path, seed: int, repro=None):
        """The run id (``kind`` and ``name``), its results writer in ``out`` and its context.
        ``repro``: the :class:`Repro` that writes each row's ``repro`` command (None: the column
        stays null, as on the rows of a distributed run)."""
        from .runner import RunContext

        run_id = new_run_id(kind, name)
        self.ctx = RunContext(
            kind=kind,
            suite=suite,
            run_id=run_id,
            device=device,
            writer=ResultsWriter(out, run_id),
            console=self.console,
            json_out=self.json_out,
            seed=seed,
            settings=self.settings,
            repro=repro,
        )
        return self.ctx

    def drive(self, loop) -> None:
        """Run ``loop()``; Ctrl-C, SIGTERM and a results file that cannot be written end in a
        :class:`RunError` that says what was kept and where the wall time went (130, 143, 1)."""
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave SIGTERM alone
            previous = None
        try:
            loop()
        except KeyboardInterrupt as e:
            term = isinstance(e, Terminated)
            why = "terminated (SIGTERM)" if term else "interrupted"
            raise RunError(
                f"{why}: {self.kept()}  {self.accounting()}", 143 if term else 130
            ) from None
        except ResultsWriteError as e:
            raise RunError(str(e), 1) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def kept(self) -> str:
        w = self.ctx.writer if self.ctx is not None else None
        if w is None or not w.written:
            return "no rows written"
        return f"{w.n_written} finished rows kept in {w.path}"

    def accounting(self) -> str:
        """(cases done, wall s, s in timing calls, s in first calls: compiles, autotuning, JIT)."""
        rows = self.ctx.rows if self.ctx is not None else []
        # a distributed run's per-rank rows time what their group row times, at the same time
        once = [r for r in rows if r.get("rank") is None or r.get("strategy") in (None, "single")]
        timed = sum(r.get("wall_s") or 0 for r in once)
        # one first call per (case, backend), shared by its mode rows
        firsts = {(r["case_id"], r["backend"]): r.get("first_call_s") or 0 for r in rows}
        first = sum(firsts.values())
        per_backend: dict[str, float] = {}
        for (_, backend), s in firsts.items():
            per_backend[backend] = per_backend.get(backend, 0.0) + s
        split = ", ".join(
            f"{b} {s:.1f}" for b, s in sorted(per_backend.items(), key=lambda x: -x[1]) if s >= 0.05
        )
        split = f": {split}" if split else ""
        # the single-device baselines of a distributed run time shares of its cases
        cases = len({r["case_id"] for r in rows if r.get("strategy") != "single"})
        return (
            f"({cases} cases, wall {time.perf_counter() - self.t0:.1f} s"
            + (f", of which {timed:.1f} s in timing calls" if timed else "")
            + (
                f", {first:.1f} s in first calls (compiles, autotuning, JIT{split})"
                if first
                else ""
            )
            + ")"
        )

    def finish(self, *head, notes=(), nothing_ran: str = NOTHING_RAN) -> int:
        """Print ``head`` (tables, lines), the kept/accounting line and ``notes``; the exit code:
        1 after naming the failed cases when a row failed; :class:`RunError` (1) when no row is
        ``ok``; else 0."""
        from ..views.tables import failed_cases

        ctx, con = self.ctx, self.console
        for item in head:
            if isinstance(item, str):
                con.print(item, highlight=False)
            else:
                con.print(item)
        con.print(f"{self.kept()}  {self.accounting()}", highlight=False, soft_wrap=True)
        for line in notes:
            con.print(line)
        bad = [r for r in ctx.rows if r["status"] in ("error", "oom", "accuracy_failed")]
        if bad:
            for i, line in enumerate(failed_cases(ctx.rows)):
                con.print(f"[red]{line}[/]" if i == 0 else line, highlight=False)
            return 1
        if not any(r["status"] == "ok" for r in ctx.rows):
            raise RunError(nothing_ran, 1)
        return 0


# ---- the single-device run --------------------------------------------------------------------
@dataclass
class Request:
    """What ``attnbench accuracy|perf`` was asked (the flags as given; None: not given)."""

    kind: str  # accuracy | perf
    config: str  # suite or sweep: a name or a YAML file
    only: str | None = None
    skip: str | None = None
    device: str | None = None
    dtype: str | None = None
    where: str | None = None
    modes: str | None = None
    out: Path = Path("results")
    json_out: bool = False
    retune: bool = False
    cuda_graph: bool = False
    repeat: int = 1


@dataclass
class Plan:
    """What a single-device run executes."""

    cfg: object  # attnbench.run.config.Config
    path: Path
    device: str
    cases: list
    backends: list
    modes: list[str] | None
    note: str | None
    out: Path
    where_note: str | None = None  # "--where: 12 of 48 cases"
    # every case the config gives on this device (with --dtype) before --where: what a
    # ``repro`` command's --where is checked against
    all_cases: list | None = None


def nothing_runs(cases, backends, modes, dev) -> str | None:
    """None when some backend can run some case here; else why not, one reason per backend."""
    reasons: dict[str, str] = {}
    for be in backends:
        run_modes = modes or ["fwd_bwd" if be.caps.backward else "fwd"]
        for case in cases:
            for m in run_modes:
                why = be.why_unsupported(case, dev, m)
                if not why:
                    return None
                reasons.setdefault(be.name, why)
    return "; ".join(f"{b}: {w}" for b, w in reasons.items())


def plan(req: Request) -> Plan:
    """Every check that can fail before anything runs (errors: :class:`RunError`, code 2)."""
    from .. import backends as _backends  # noqa: F401  (registers every backend)
    from ..backends.base import get_backends
    from ..problems import PROBLEMS
    from .config import ConfigError, DistConfigFile, load_config, select_cases

    kind = req.kind
    dev = check_device(req.device)
    try:
        backends = get_backends(split_list(req.only, "--only"), split_list(req.skip, "--skip"))
    except KeyError as e:
        raise RunError(e.args[0]) from None
    if not backends:
        raise RunError("--only/--skip leave no backend to run")
    dtypes = parse_dtypes(req.dtype)
    run_modes = parse_modes(req.modes)
    try:
        cfg, path = load_config(req.config)
        cases, cfg_modes, note = select_cases(cfg, dev.split(":")[0], dtypes)
    except DistConfigFile as e:
        flag = "--suite" if kind == "accuracy" else "--sweep"
        raise RunError(
            f"{e.path.name} is a distributed config; run it with "
            f"attnbench dist {kind} {flag} {req.config}"
        ) from None
    except (ConfigError, ValueError) as e:
        raise RunError(str(e)) from None
    said = []
    all_cases = cases
    cases = where_cases(cases, req.where, [PROBLEMS[cfg.problem].case_type], said.append)
    wrong = [b.name for b in backends if b.caps.problem != cfg.problem]
    if req.only and wrong:
        raise RunError(
            f"{', '.join(wrong)}: not a {cfg.problem} backend ({cfg.name} poses {cfg.problem})"
        )
    backends = [b for b in backends if b.caps.problem == cfg.problem]
    if not backends:
        raise RunError(f"--only/--skip leave no {cfg.problem} backend to run")
    if cfg.kind is not None and cfg.kind != kind:
        flag = "--suite" if cfg.kind == "accuracy" else "--sweep"
        raise RunError(
            f"{path}: kind: {cfg.kind}, not {kind}; run it with `attnbench {cfg.kind} {flag} ...`"
        )
    if not cases:
        where = where_text(req.where)
        raise RunError(f"{path}: no cases to run on {dev}" + (f" where {where}" if where else ""))
    run_modes = run_modes or cfg_modes
    why = nothing_runs(cases, backends, run_modes if kind == "perf" else None, dev)
    if why:
        raise RunError(
            f"nothing to run: no selected backend supports any of the {len(cases)} cases ({why})"
        )
    out = check_out_dir(req.out)
    return Plan(
        cfg, path, dev, cases, backends, run_modes, note, out, said[0] if said else None, all_cases
    )


def run(req: Request) -> int:
    """``attnbench accuracy|perf``: the exit code (0, 1), or :class:`RunError`."""
    from ..views.tables import accuracy_table, perf_table, unrepeatable, unsupported_reasons
    from .runner import run_accuracy, run_perf

    if req.repeat < 1:
        raise RunError(f"--repeat must be >= 1, got {req.repeat}")
    session = Session(
        req.json_out,
        Settings.from_env(
            retune=True if req.retune else None, cuda_graph=True if req.cuda_graph else None
        ),
    )
    with activated(session.settings):
        p = plan(req)
        repro = Repro(req, p, session.settings)
        ctx = session.open(req.kind, p.cfg.name, p.cfg.name, p.device, p.out, p.cfg.seed, repro)
        ctx.repeat = req.repeat
        con = session.console
        if p.note:
            con.print(f"[bold yellow]{p.note}[/] ({p.path.name}: {len(p.cases)} cases)")
        if p.device.startswith("cpu") and os.environ.get("TRITON_INTERPRET") != "1":
            con.print(
                "[dim]the in-repo Triton kernels (triton_fa2, piecewise_triton, decode_triton) run "
                "on the CPU only under Triton's interpreter: "
                f"TRITON_INTERPRET=1 attnbench {req.kind} "
                f"{'--suite' if req.kind == 'accuracy' else '--sweep'} {req.config} --device cpu[/]",
                highlight=False,
            )
        if p.where_note:
            con.print(p.where_note, highlight=False)
        con.print(
            f"run {ctx.run_id}: {len(p.cases)} cases x {len(p.backends)} backends on "
            f"{p.device} -> {p.out}/",
            highlight=False,
        )
        if req.kind == "accuracy":
            session.drive(lambda: run_accuracy(p.cases, p.backends, ctx))
            head = [accuracy_table(ctx.rows)]
        else:
            cfg = p.cfg
            session.drive(
                lambda: run_perf(p.cases, p.backends, p.modes, ctx, cfg.warmup_ms, cfg.rep_ms)
            )
            head = [*unrepeatable(ctx.rows), perf_table(ctx.rows)]
        notes = []
        if req.kind == "perf" and not p.device.startswith("cuda"):
            notes.append("[dim]peak_mem_mb: measured on CUDA only (empty on the CPU)[/]")
        lines = [f"[dim]{line}[/]" for line in unsupported_reasons(ctx.rows)]
        return session.finish(*head, *lines, notes=notes)
