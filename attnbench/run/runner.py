"""The accuracy and perf loops. One case at a time: inputs, the reference (shared by every
backend), then each backend; every outcome is a row, written as soon as the backend finishes."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import settings
from ..backends.base import Backend, Unsupported
from ..problems import problem_of
from ..problems.base import Case
from ..results import ResultsWriter, json_row, now_utc
from ..results.env import environment
from ..results.text import case_line, status_text
from ..settings import Settings, current
from . import ceiling
from .check import check_backend, failure_message, report_lines, verdict
from .state import CaseState
from .timing import as_graph, bench, first_call_s, mode_fn, timed_prepare, timing_columns


@dataclass
class RunContext:
    kind: str
    suite: str
    run_id: str
    device: str
    writer: ResultsWriter
    console: Console
    json_out: bool = False
    seed: int = 0
    repeat: int = 1  # --repeat N: timings per case
    rows: list[dict] = field(default_factory=list)
    gpu_env: dict = field(default_factory=dict)  # ceiling/telemetry columns of the whole run
    ceilings: dict = field(default_factory=dict)  # dtype -> {matmul_tflops, copy_gbps}
    settings: Settings | None = None  # the run's (None: the active ones); every row records them
    # the ``repro`` column's commands (attnbench.run.repro.Repro / DistRepro; None: null)
    repro: object | None = None

    def row(self, case: Case, backend: str, mode: str, **values) -> dict:
        r = {
            "run_id": self.run_id,
            "kind": self.kind,
            "suite": self.suite,
            "backend": backend,
            "mode": mode,
            "settings": (self.settings or current()).column(),
            "repro": (
                self.repro.command(case, backend, mode, values.get("strategy"))
                if self.repro is not None
                else None
            ),
            **case.params(),
            **environment(self.device),
            **self.gpu_env,
            **self.ceilings.get(case.dtype, {}),
            "timestamp": now_utc(),
        }
        r.update(values)
        if "tflops" in values:
            r["pct_of_peak"] = ceiling.pct_of_peak(r["tflops"], r.get("matmul_tflops"))
        if values.get("gbps") is not None:
            r["pct_of_bw"] = ceiling.pct_of_bw(r["gbps"], r.get("bw_gbps"))
        return r

    def start_gpu_env(self, dtypes) -> None:
        """The GPU's measured ceiling for ``dtypes`` and its telemetry now (once per run)."""
        snap, note = ceiling.telemetry(self.device)
        self.gpu_env = {**ceiling.columns(snap, "start"), "env_note": note}
        if self.device.startswith("cuda"):
            self.ceilings = {d: ceiling.ceiling(self.device, d) for d in sorted(set(dtypes))}

    def end_gpu_env(self) -> None:
        """Telemetry at the end of the run, written onto every row of the run."""
        snap, note = ceiling.telemetry(self.device)
        end = ceiling.columns(snap, "end")
        self.gpu_env.update(end)
        for r in self.rows:
            r.update(end)
        self.writer.flush()

    def emit(self, rows: list[dict]) -> None:
        self.writer.add(rows)
        self.rows.extend(rows)
        if self.json_out:
            for r in rows:
                print(json_row(r), flush=True)


def classify(e: BaseException, backend: Backend | None = None) -> tuple[str, str]:
    """(status, one-line message) for an exception raised by a backend."""
    if isinstance(e, Unsupported):
        return "unsupported", str(e)
    why = backend.refusal(e) if backend is not None else None
    if why:
        return "unsupported", why
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    low = str(e).lower()
    # CUDA: OutOfMemoryError; the CPU: MemoryError, or a RuntimeError of the CPU allocator
    # ("[enforce fail at alloc_cpu.cpp:...] DefaultCPUAllocator: can't allocate memory: ...")
    if (
        isinstance(e, torch.OutOfMemoryError | MemoryError)
        or "out of memory" in low
        or "can't allocate memory" in low
        or "cannot allocate memory" in low
    ):
        return "oom", f"out of memory: {text[:200] or type(e).__name__}"
    return "error", f"{type(e).__name__}: {text[:300]}"


def _cleanup(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


# ---- accuracy ---------------------------------------------------------------------------------
def run_accuracy(cases: list[Case], backends: list[Backend], ctx: RunContext) -> None:
    con = ctx.console
    with _progress(con) as prog:
        task = prog.add_task("accuracy", total=len(cases) * len(backends))
        for case in cases:
            state = CaseState(case, ctx.device, ctx.seed)
            for be in backends:
                prog.update(task, description=f"{case.id} · {be.name}")
                mode = "fwd_bwd" if be.caps.backward else "fwd"
                why = be.why_unsupported(case, ctx.device, mode)
                if why and mode != "fwd" and not be.why_unsupported(case, ctx.device, "fwd"):
                    mode, why = "fwd", None  # forward-only here: grade out and lse
                if why:
                    ctx.emit([ctx.row(case, be.name, mode, status="unsupported", message=why)])
                    prog.advance(task)
                    continue
                try:
                    truth = state.truth(grads=True)
                    errs = check_backend(be, case, state.inputs, truth, grads=mode != "fwd")
                except Exception as e:  # one failing case never stops the run
                    status, msg = classify(e, be)
                    ctx.emit([ctx.row(case, be.name, mode, status=status, message=msg)])
                    con.print(f"[yellow]{be.name} {case.id}: {status_text(status, msg)}[/]")
                    _cleanup(ctx.device)
                    prog.advance(task)
                    continue
                rows = [
                    ctx.row(
                        case,
                        be.name,
                        mode,
                        status="ok" if e.accuracy_ok else "accuracy_failed",
                        message=None if e.accuracy_ok else failure_message(e),
                        **e.columns(),
                    )
                    for e in errs
                ]
                ctx.emit(rows)
                mark = "[green]PASS[/]" if all(e.accuracy_ok for e in errs) else "[red]FAIL[/]"
                con.print(f"[bold]{be.name}[/] {case.id} {mark}")
                for line in report_lines(errs):
                    con.print("  " + line, highlight=False)
                prog.advance(task)
            state.release()


# ---- perf -------------------------------------------------------------------------------------
def run_perf(
    cases: list[Case],
    backends: list[Backend],
    modes: list[str],
    ctx: RunContext,
    warmup_ms: int = 25,
    rep_ms: int = 100,
) -> None:
    dev = torch.device(ctx.device)
    ctx.start_gpu_env(c.dtype for c in cases)
    with _progress(ctx.console) as prog:
        task = prog.add_task("perf", total=len(cases) * len(backends))
        for case in cases:
            state = CaseState(case, ctx.device, ctx.seed)
            for be in backends:
                prog.update(task, description=f"{case.id} · {be.name}")
                rows: list[dict] = []
                runnable = []
                for m in modes:
                    why = be.why_unsupported(case, ctx.device, m)
                    if why:
                        rows.append(ctx.row(case, be.name, m, status="unsupported", message=why))
                    else:
                        runnable.append(m)
                if runnable:
                    rows += _perf_backend(be, state, runnable, ctx, dev, warmup_ms, rep_ms)
                ctx.emit(rows)
                if not ctx.console.is_terminal and runnable:
                    ctx.console.print(case_line(rows), highlight=False)
                prog.advance(task)
            state.release()
    ctx.end_gpu_env()


def _perf_backend(be, state: CaseState, modes, ctx, dev, warmup_ms, rep_ms) -> list[dict]:
    case = state.case
    grads = be.caps.backward and any(m != "fwd" for m in modes)
    try:  # no speed without an accuracy verdict for the same case
        inp = state.inputs
        p, plan_ms = timed_prepare(be, inp, case, dev)  # a first plan may JIT (FlashInfer)
        first = mode_fn(lambda p=p: be.forward(p, case), inp.dout, "fwd_bwd" if grads else "fwd")
        # compiles/JIT/autotune of the first prepare and call: never timed, reported
        first_s = plan_ms / 1e3 + first_call_s(first, p.leaves, dev)
        del p, first
        errs = check_backend(be, case, inp, state.truth(grads=grads), grads=grads)
    except Exception as e:
        status, msg = classify(e, be)
        _cleanup(ctx.device)
        return [ctx.row(case, be.name, m, status=status, message=msg) for m in modes]
    out_err = out_error_columns(errs)
    rows = []
    quant: list[float | None] = []  # the quantization's median ms, timed once per case
    for m in modes:
        ok, msg = verdict(errs, m)
        try:
            p, plan_ms = timed_prepare(be, inp, case, dev)
            fn = mode_fn(lambda p=p: be.forward(p, case), inp.dout, m)
            fn, graph_note = as_graph(
                fn, dev, m, be.caps.cuda_graph and settings.current().cuda_graph
            )
            t = bench(fn, p.leaves, dev, warmup_ms, rep_ms, repeat=ctx.repeat)
            config = be.kernel_config(p, case, m)
            config = f"{config} ({graph_note})" if config and graph_note else config or graph_note
            if not quant:
                quant.append(_quant_ms(be, p, case, dev, warmup_ms, rep_ms, ctx.repeat))
            del p, fn
        except Exception as e:
            status, emsg = classify(e, be)
            rows.append(
                ctx.row(
                    case,
                    be.name,
                    m,
                    status=status,
                    message=emsg,
                    accuracy_ok=ok,
                    first_call_s=first_s,
                    precision=be.caps.precision,
                    **out_err,
                )
            )
            _cleanup(ctx.device)
            continue
        prob = problem_of(case)
        flops, nbytes = prob.flops(case, m), prob.bytes(case, m)
        rows.append(
            ctx.row(
                case,
                be.name,
                m,
                status="ok" if ok else "accuracy_failed",
                message=msg,
                accuracy_ok=ok,
                first_call_s=first_s,
                kernel_config=config,
                plan_ms=plan_ms,
                quant_ms=quant[0],
                precision=be.caps.precision,
                **out_err,
                **timing_columns(t, flops, nbytes=nbytes),
            )
        )
    return rows


# the columns of out's same-case error a perf row carries (its ``tensor`` stays null: a perf row
# is not an accuracy row, and views tell the two apart by it)
OUT_ERROR_COLUMNS = (
    "max_abs_err", "mean_abs_err", "cos_sim", "rel_l1", "rmse", "tol_cos_sim", "tol_rel_l1"
)  # fmt: skip


def out_error_columns(errs) -> dict:
    """The error of ``out`` from the same-case check (max/mean abs error, cos_sim, rel_l1, rmse,
    and a lossy backend's tolerances), for every perf row of that backend and case; empty when
    out was not graded."""
    out = next((e for e in errs if e.tensor == "out"), None)
    return {} if out is None else {c: out.columns()[c] for c in OUT_ERROR_COLUMNS}


def _quant_ms(be, p, case, dev, warmup_ms, rep_ms, repeat) -> float | None:
    """The median ms of the backend's quantization (:meth:`Backend.quant_fn`), timed by the same
    timer with the same settings as the attention (no leaves: it takes no gradients); None when
    the backend has none."""
    fn = be.quant_fn(p, case)
    if fn is None:
        return None
    return bench(fn, (), dev, warmup_ms, rep_ms, repeat=repeat).median_ms
