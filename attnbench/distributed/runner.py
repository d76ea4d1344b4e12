"""The distributed accuracy and perf loops, run by every rank of one torchrun launch.

Every rank walks the same cases, local backends and strategies in the same order. Setup checks
are deterministic, so every rank skips the same combinations; per-rank failures (an OOM on one
GPU) are agreed on with one all-reduce before any collective of the strategy starts. Rank 0
gathers the per-rank numbers, prints them in rank order and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from rich.table import Table

from ..case import Case, case_flops
from ..check import TENSORS as CORE_TENSORS
from ..check import abs_error, make_truth
from ..check import passes as core_passes
from ..inputs import make_inputs
from ..reference import reference
from ..runner import RunContext, classify
from ..timing import bench, mode_fn, timing_columns
from .bench import dist_bench
from .check import compare, report_lines, run_distributed, run_single
from .comm import DistEnv, Watchdog
from .config import DistConfig, Selection
from .local import get_local_kernel, local_attention
from .strategy import DistSetupError, Groups, Layout, check_setup, dist_attention, make_groups

BAD = ("error", "oom", "accuracy_failed")


@dataclass
class DistRun:
    env: DistEnv
    cfg: DistConfig
    sel: Selection
    wd: Watchdog
    ctx: RunContext | None  # rank 0 only
    _groups: dict | None = None

    @property
    def rank0(self) -> bool:
        return self.env.rank == 0

    @property
    def device_type(self) -> str:
        return self.env.device.split(":")[0]

    def print(self, *lines: str) -> None:
        if self.ctx is not None:
            for line in lines:
                self.ctx.console.print(line, highlight=False)

    def layout(self, strategy: str) -> Layout:
        u = self.cfg.ulysses_size if strategy.startswith("hybrid") else 1
        return Layout(strategy, self.env.world_size, u)

    def groups(self, layout: Layout) -> Groups:
        self._groups = self._groups or {}
        if layout not in self._groups:
            with self.wd.phase(f"creating the process groups of {layout.strategy}"):
                self._groups[layout] = make_groups(layout, self.env)
        return self._groups[layout]

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (one all-reduce)."""
        t = torch.tensor([int(ok)], device=self.env.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj):
        out = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def row(self, case: Case, backend: str, mode: str, strategy: str, world: int, rank, **kw):
        """A result row on rank 0; None elsewhere (only rank 0 writes)."""
        if self.ctx is None:
            return None
        return self.ctx.row(
            case, backend, mode, strategy=strategy, world_size=world, rank=rank, **kw
        )

    def emit(self, rows: list[dict]) -> None:
        if self.ctx is not None and rows:
            self.ctx.emit([r for r in rows if r is not None])


def _setup(run: DistRun, strategy: str, case: Case, kernel, mode: str, label: str):
    """(layout, groups) or None after emitting an ``unsupported`` row (same on every rank)."""
    layout = run.layout(strategy)
    try:
        check_setup(layout, case, kernel, run.device_type)
    except DistSetupError as e:
        run.emit(
            [
                run.row(
                    case,
                    kernel.name,
                    mode,
                    strategy,
                    run.env.world_size,
                    None,
                    status="unsupported",
                    message=f"unsupported: {e}",
                )
            ]
        )
        run.print(f"[dim]{label}: unsupported: {e}[/]")
        return None
    return layout, run.groups(layout)


# ---- accuracy ---------------------------------------------------------------------------------
def run_accuracy(run: DistRun) -> None:
    env, P = run.env, run.env.world_size
    for case in run.sel.cases:
        state: dict = {}
        for name in run.sel.local_backends:
            kernel = get_local_kernel(name)
            state.pop("single", None)
            for strategy in run.sel.strategies:
                label = f"{strategy} · {name} · {case.id} · world {P}"
                setup = _setup(run, strategy, case, kernel, "fwd_bwd", label)
                if setup is None:
                    continue
                layout, groups = setup
                status, msg, errs = "ok", None, []
                try:
                    with run.wd.phase(f"{label}: inputs, reference, non-distributed run"):
                        if "inp" not in state:
                            state["inp"] = make_inputs(case, env.device, run.cfg.seed)
                            state["truth"] = reference(state["inp"], case)
                        if "single" not in state:
                            state["single"] = run_single(state["inp"], case, kernel)
                except Exception as e:  # becomes a row; the ranks agree below
                    status, msg = classify(e)
                with run.wd.phase(f"{label}: agreeing to start"):
                    go = run.all_ok(status == "ok")
                if go:
                    try:
                        with run.wd.phase(f"{label}: distributed forward + backward"):
                            got = run_distributed(
                                state["inp"], case, kernel, layout, groups, env.rank
                            )
                        errs = compare(got, state["single"], state["truth"], layout, env.rank, case)
                        del got
                    except Exception as e:
                        status, msg = classify(e)
                elif status == "ok":
                    status, msg = "error", "skipped: another rank failed before the run"
                with run.wd.phase(f"{label}: gathering results"):
                    per_rank = run.gather((status, msg, errs))
                _accuracy_rows(run, case, kernel.name, strategy, per_rank, label)
        del state
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _accuracy_rows(run: DistRun, case, backend, strategy, per_rank, label) -> None:
    if not run.rank0:
        return
    P = run.env.world_size
    rows, failed = [], []
    for r, (status, msg, errs) in enumerate(per_rank):
        if status != "ok":
            rows.append(
                run.row(
                    case,
                    backend,
                    "fwd_bwd",
                    strategy,
                    P,
                    r,
                    status=status,
                    message=f"rank {r}: {msg}",
                )
            )
            failed.append(f"rank {r}: {status}: {msg}")
            continue
        for e in errs:
            note = f"vs non-distributed: max {e.diff_max:.3g} mean {e.diff_mean:.3g}"
            if not e.accuracy_ok:
                note = (
                    f"{e.tensor} max err {e.max_abs_err:.3g} > 2.5 x non-distributed "
                    f"{e.single_max_abs_err:.3g} + floor; " + note
                )
                failed.append(f"rank {r} {e.tensor}")
            rows.append(
                run.row(
                    case,
                    backend,
                    "fwd_bwd",
                    strategy,
                    P,
                    r,
                    status="ok" if e.accuracy_ok else "accuracy_failed",
                    message=note,
                    tensor=e.tensor,
                    max_abs_err=e.max_abs_err,
                    mean_abs_err=e.mean_abs_err,
                    baseline_max_abs_err=e.single_max_abs_err,
                    baseline_mean_abs_err=e.single_mean_abs_err,
                    accuracy_ok=e.accuracy_ok,
                )
            )
    run.emit(rows)
    verdict = "[red]FAIL[/]" if failed else "[green]PASS[/]"
    run.print(f"[bold]{label}[/] {verdict}")
    if any(s != "ok" for s, _, _ in per_rank):
        run.print(*(f"  [yellow]{f}[/]" for f in failed))
        return
    run.print(*("  " + line for line in report_lines([errs for _, _, errs in per_rank])))


# ---- perf -------------------------------------------------------------------------------------
def _verdict(errs, mode: str) -> tuple[bool, str | None]:
    relevant = [e for e in errs if mode != "fwd" or e.tensor in ("out", "lse")]
    bad = [e for e in relevant if not e.accuracy_ok]
    if not bad:
        return True, None
    e = bad[0]
    return False, (
        f"accuracy failed: rank {e.rank} {e.tensor} max err {e.max_abs_err:.3g} vs "
        f"non-distributed {e.single_max_abs_err:.3g}"
    )


def _time_single(run: DistRun, case, kernel, inp, truth, single) -> tuple[dict, list]:
    """Time the local kernel over ``case`` on this device: (mode -> median ms, rows), each row
    with the core verdict of ``single`` against ``truth`` (<= 2x / 3x same-dtype torch)."""
    ok_by = {}
    for t in CORE_TENSORS:
        if t in truth.base:
            mx, _ = abs_error(getattr(single, t), getattr(truth.ref, t))
            ok_by[t] = core_passes(t, mx, truth.base[t][0], case.dtype)
    times, rows = {}, []
    for mode in run.sel.modes:
        ok = all(v for t, v in ok_by.items() if mode != "fwd" or t in ("out", "lse"))
        try:
            leaves = tuple(x.detach().clone().requires_grad_() for x in (inp.q, inp.k, inp.v))
            fn = mode_fn(
                lambda lv=leaves: local_attention(*lv, kernel, case.causal, case.scale),
                inp.dout,
                mode,
            )
            t = bench(fn, leaves, torch.device(run.env.device), run.cfg.warmup_ms, run.cfg.rep_ms)
        except Exception as e:
            status, msg = classify(e)
            rows.append(
                run.row(case, kernel.name, mode, "single", 1, 0, status=status, message=msg)
            )
            continue
        if ok:
            times[mode] = t.median_ms
        flops = case_flops(case, mode)
        rows.append(
            run.row(
                case,
                kernel.name,
                mode,
                "single",
                1,
                0,
                status="ok" if ok else "accuracy_failed",
                accuracy_ok=ok,
                message=None if ok else "non-distributed run fails the core accuracy rule",
                **timing_columns(t, flops),
            )
        )
    return times, rows


def _single_perf(run: DistRun, case, kernel, state, label) -> dict[str, tuple]:
    """Rank 0 times the local kernel on one device (the others wait) over the whole sequence
    and, for P > 1, over one rank's share S/P of it (ring-flash-attention's "theoretic" baseline
    is P x that time). Returns mode -> (ms at S, ms at S/P or None) and emits ``strategy=single``
    rows (world size 1) for both, each with its own verdict."""
    out: dict[str, tuple] = {}
    if run.rank0:
        full, rows = _time_single(run, case, kernel, state["inp"], state["truth"], state["single"])
        share: dict = {}
        P = run.env.world_size
        if P > 1 and case.seqlen_q == case.seqlen_k and case.seqlen_q % P == 0:
            try:
                sub = replace(case, seqlen_q=case.seqlen_q // P, seqlen_k=case.seqlen_k // P)
                inp = make_inputs(sub, run.env.device, run.cfg.seed)
                truth = make_truth(inp, sub)
                single = run_single(inp, sub, kernel)
                share, more = _time_single(run, sub, kernel, inp, truth, single)
                rows += more
                del inp, truth, single
            except Exception as e:  # the full-sequence baseline still stands
                status, msg = classify(e)
                run.print(f"[yellow]{label}: single-device run at S/P: {status}: {msg}[/]")
        run.emit(rows)
        out = {m: (ms, share.get(m)) for m, ms in full.items()}
    with run.wd.phase(f"{label}: waiting for rank 0's single-device timing"):
        return run.gather(out)[0]


def run_perf(run: DistRun, summary: list[dict]) -> None:
    env, P = run.env, run.env.world_size
    for case in run.sel.cases:
        state: dict = {}
        for name in run.sel.local_backends:
            kernel = get_local_kernel(name)
            why = kernel.why_unsupported(case, run.device_type)
            if why:
                for strategy in run.sel.strategies:
                    run.emit(
                        [
                            run.row(
                                case,
                                name,
                                m,
                                strategy,
                                P,
                                None,
                                status="unsupported",
                                message=f"unsupported: {why}",
                            )
                            for m in run.sel.modes
                        ]
                    )
                continue
            label = f"{name} · {case.id} · world {P}"
            status = "ok"
            try:
                with run.wd.phase(f"{label}: inputs, reference, non-distributed run"):
                    if "inp" not in state:
                        state["inp"] = make_inputs(case, env.device, run.cfg.seed)
                        state["truth"] = make_truth(state["inp"], case)
                    state["single"] = run_single(state["inp"], case, kernel)
            except Exception as e:
                status, msg = classify(e)
                run.print(f"[yellow]{label}: rank {env.rank}: {status}: {msg}[/]")
            with run.wd.phase(f"{label}: agreeing to start"):
                if not run.all_ok(status == "ok"):
                    run.emit(
                        [
                            run.row(
                                case,
                                name,
                                m,
                                s,
                                P,
                                None,
                                status="error",
                                message="the non-distributed run failed on some rank",
                            )
                            for s in run.sel.strategies
                            for m in run.sel.modes
                        ]
                    )
                    continue
            single_ms = _single_perf(run, case, kernel, state, label)
            for strategy in run.sel.strategies:
                _strategy_perf(run, case, kernel, strategy, state, single_ms, summary)
        del state
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _strategy_perf(run: DistRun, case, kernel, strategy, state, single_ms, summary) -> None:
    env, P = run.env, run.env.world_size
    label = f"{strategy} · {kernel.name} · {case.id} · world {P}"
    modes = run.sel.modes
    setup = _setup(run, strategy, case, kernel, modes[0], label)
    if setup is None:
        return
    layout, groups = setup
    errs, status, msg = [], "ok", None
    try:  # no speed without an accuracy verdict for the same case
        with run.wd.phase(f"{label}: accuracy check"):
            got = run_distributed(state["inp"], case, kernel, layout, groups, env.rank)
            errs = compare(got, state["single"], state["truth"].ref, layout, env.rank, case)
            del got
    except Exception as e:
        status, msg = classify(e)
    with run.wd.phase(f"{label}: gathering the accuracy check"):
        checks = run.gather((status, msg, errs))
    bad = [(r, s, m) for r, (s, m, _) in enumerate(checks) if s != "ok"]
    if bad:
        r, s, m = bad[0]
        run.emit(
            [
                run.row(
                    case, kernel.name, mode, strategy, P, None, status=s, message=f"rank {r}: {m}"
                )
                for mode in modes
            ]
        )
        run.print(f"[yellow]{label}: rank {r}: {s}: {m}[/]")
        return
    all_errs = [e for _, _, es in checks for e in es]
    inp = state["inp"]
    for mode in modes:
        ok, vmsg = _verdict(all_errs, mode)
        t, status, emsg, fn, leaves = None, "ok", None, None, None
        try:
            leaves = tuple(
                layout.shard(x, env.rank, 1).requires_grad_() for x in (inp.q, inp.k, inp.v)
            )
            dout = layout.shard(inp.dout, env.rank, 1)
            fn = mode_fn(
                lambda lv=leaves: dist_attention(
                    *lv, layout, groups, kernel, case.causal, case.scale
                ),
                dout,
                mode,
            )
        except Exception as e:
            status, emsg = classify(e)
        with run.wd.phase(f"{label} {mode}: agreeing to start"):
            go = run.all_ok(status == "ok")
        if go:
            try:
                with run.wd.phase(f"{label} {mode}: timing"):
                    t = dist_bench(fn, leaves, env, run.cfg.warmup_ms, run.cfg.rep_ms)
            except Exception as e:
                status, emsg = classify(e)
        del fn, leaves
        with run.wd.phase(f"{label} {mode}: gathering timings"):
            per_rank = run.gather((status, emsg, t))
        _perf_rows(
            run, case, kernel.name, strategy, mode, per_rank, ok, vmsg, single_ms.get(mode), summary
        )


def _perf_rows(run, case, backend, strategy, mode, per_rank, ok, vmsg, single_ms, summary):
    if not run.rank0:
        return
    P = run.env.world_size
    flops = case_flops(case, mode)
    bad = [(r, s, m) for r, (s, m, _) in enumerate(per_rank) if s != "ok"]
    if bad:
        r, s, m = bad[0]
        run.emit(
            [run.row(case, backend, mode, strategy, P, None, status=s, message=f"rank {r}: {m}")]
        )
        run.print(f"[yellow]{strategy} · {backend} · {case.id} {mode}: rank {r}: {s}: {m}[/]")
        return
    status = "ok" if ok else "accuracy_failed"
    rows = []
    for r, (_, _, t) in enumerate(per_rank):
        rows.append(
            run.row(
                case,
                backend,
                mode,
                strategy,
                P,
                r,
                status=status,
                message=vmsg,
                accuracy_ok=ok,
                **timing_columns(t, flops, P),
            )
        )
    slow = max((t for _, _, t in per_rank), key=lambda t: t.median_ms)
    full_ms, share_ms = single_ms or (None, None)
    eff = full_ms / (P * slow.median_ms) if full_ms else None
    eff_share = P * share_ms / slow.median_ms if share_ms else None
    note = "slowest rank; efficiency: vs single-device(S) / P, efficiency_share: vs P x single(S/P)"
    group = timing_columns(slow, flops, P)
    group["peak_mem_mb"] = max((t.peak_mem_mb or 0) for _, _, t in per_rank) or None
    rows.append(
        run.row(
            case,
            backend,
            mode,
            strategy,
            P,
            None,
            status=status,
            message=note if ok else f"{vmsg}; {note}",
            accuracy_ok=ok,
            efficiency=eff,
            efficiency_share=eff_share,
            **group,
        )
    )
    run.emit(rows)
    summary.append(
        dict(
            strategy=strategy,
            backend=backend,
            case=case.id,
            mode=mode,
            ms=slow.median_ms,
            per_rank=[t.median_ms for _, _, t in per_rank],
            tflops=group["tflops"],
            eff=eff,
            eff_share=eff_share,
            ok=ok,
        )
    )


def perf_table(summary: list[dict], world: int) -> Table:
    t = Table(
        title=f"distributed perf, world size {world} (slowest rank; TFLOP/s per device)",
        title_justify="left",
    )
    for c in (
        "strategy",
        "local",
        "case",
        "mode",
        "ms",
        "TFLOP/s",
        "efficiency",
        "vs P x S/P",
        "per-rank ms",
        "accuracy",
    ):
        t.add_column(c)
    for s in summary:
        t.add_row(
            s["strategy"],
            s["backend"],
            s["case"],
            s["mode"],
            f"{s['ms']:.3f}",
            f"{s['tflops']:.3g}",
            f"{s['eff']:.0%}" if s["eff"] else "-",
            f"{s['eff_share']:.0%}" if s.get("eff_share") else "-",
            " ".join(f"{x:.3f}" for x in s["per_rank"]),
            "[green]ok[/]" if s["ok"] else "[red]FAIL[/]",
        )
    return t
