"""``attnbench dist perf``: per case and local backend, the single-device baseline
(:mod:`attnbench.distributed.baseline`), then every strategy: its accuracy check on every rank
(no speed without a verdict for the same case), then each mode timed on every rank at once.
Rows: one per rank, plus the group row (``rank`` null) of the slowest rank with the
efficiencies against the single-device baseline."""

from __future__ import annotations

from dataclasses import dataclass

from ..problems.attention.case import case_flops
from ..problems.base import Case
from ..results.text import status_text
from ..run.check import verdict
from ..run.runner import classify
from ..run.state import CaseState
from ..run.timing import mode_fn, timing_columns
from .baseline import single_device_ms
from .bench import dist_bench
from .check import compare, run_distributed, single_of
from .context import DistRun
from .local import LocalKernel, get_local_kernel
from .strategy import dist_attention

AGAINST = "non-distributed"
GROUP_NOTE = (
    "slowest rank; efficiency: vs single-device(S) / P, efficiency_share: vs P x single(S/P)"
)


@dataclass
class Combo:
    """One (case, local kernel, strategy) of a perf run."""

    case: Case
    kernel: LocalKernel
    strategy: str

    @property
    def label(self) -> str:
        return f"{self.strategy} · {self.kernel.name} · {self.case.id}"

    def row(self, run: DistRun, mode: str, rank, **kw):
        return run.row(self.case, self.kernel.name, mode, self.strategy, run.world, rank, **kw)


def run_perf(run: DistRun) -> None:
    env, P = run.env, run.world
    modes = run.sel.modes
    for case in run.sel.cases:
        state = CaseState(case, env.device, run.cfg.seed)
        for name in run.sel.local_backends:
            kernel = get_local_kernel(name)
            combos = [Combo(case, kernel, s) for s in run.sel.strategies]
            why = kernel.why_unsupported(case, run.device_type)
            if why:
                msg = f"unsupported: {why}"
                run.emit(
                    [
                        c.row(run, m, None, status="unsupported", message=msg)
                        for c in combos
                        for m in modes
                    ]
                )
                continue
            label = f"{name} · {case.id} · world {P}"
            status = "ok"
            try:
                with run.wd.phase(f"{label}: inputs, reference, non-distributed run"):
                    state.truth()
                    single_of(state, kernel)
            except Exception as e:
                status, msg = classify(e)
                run.print(f"[yellow]{label}: rank {env.rank}: {status_text(status, msg)}[/]")
            with run.wd.phase(f"{label}: agreeing to start"):
                if not run.all_ok(status == "ok"):
                    msg = "the non-distributed run failed on some rank"
                    run.emit(
                        [
                            c.row(run, m, None, status="error", message=msg)
                            for c in combos
                            for m in modes
                        ]
                    )
                    continue
            single_ms = single_device_ms(run, state, kernel, label)
            for combo in combos:
                _strategy_perf(run, combo, state, single_ms)
        state.release()


def _strategy_perf(run: DistRun, combo: Combo, state: CaseState, single_ms: dict) -> None:
    env, case, kernel = run.env, combo.case, combo.kernel
    label = f"{combo.label} · world {run.world}"
    modes = run.sel.modes
    setup = run.setup(combo.strategy, case, kernel, modes, label)
    if setup is None:
        return
    layout, groups = setup
    errs, status, msg = [], "ok", None
    try:  # no speed without an accuracy verdict for the same case
        with run.wd.phase(f"{label}: accuracy check"):
            got = run_distributed(state.inputs, case, kernel, layout, groups, env.rank)
            single = single_of(state, kernel)
            errs = compare(got, single, state.truth().ref, layout, env.rank, case)
            del got
    except Exception as e:
        status, msg = classify(e)
    with run.wd.phase(f"{label}: gathering the accuracy check"):
        checks = run.gather((status, msg, errs))
    bad = [(r, s, m) for r, (s, m, _) in enumerate(checks) if s != "ok"]
    if bad:
        r, s, m = bad[0]
        run.emit([combo.row(run, mode, None, status=s, message=f"rank {r}: {m}") for mode in modes])
        run.print(f"[yellow]{label}: rank {r}: {s}: {m}[/]")
        return
    all_errs = [e for _, _, es in checks for e in es]
    inp = state.inputs
    for mode in modes:
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
        if run.rank0:
            run.emit(
                _perf_rows(
                    run,
                    combo,
                    mode,
                    per_rank,
                    verdict(all_errs, mode, AGAINST),
                    single_ms.get(mode),
                )
            )


def _perf_rows(run: DistRun, combo: Combo, mode: str, per_rank, judged, single_ms) -> list[dict]:
    """The per-rank rows and the group row of one timed mode (rank 0)."""
    bad = [(r, s, m) for r, (s, m, _) in enumerate(per_rank) if s != "ok"]
    if bad:
        r, s, m = bad[0]
        run.print(f"[yellow]{combo.label} {mode}: rank {r}: {s}: {m}[/]")
        return [combo.row(run, mode, None, status=s, message=f"rank {r}: {m}")]
    ok, vmsg = judged
    P, flops = run.world, case_flops(combo.case, mode)
    status = "ok" if ok else "accuracy_failed"
    timings = [t for _, _, t in per_rank]
    rows = [
        combo.row(
            run, mode, r, status=status, message=vmsg, accuracy_ok=ok, **timing_columns(t, flops, P)
        )
        for r, t in enumerate(timings)
    ]
    slow = max(timings, key=lambda t: t.median_ms)
    full_ms, share_ms = single_ms or (None, None)
    group = timing_columns(slow, flops, P)
    group["peak_mem_mb"] = max((t.peak_mem_mb or 0) for t in timings) or None
    rows.append(
        combo.row(
            run,
            mode,
            None,
            status=status,
            message=GROUP_NOTE if ok else f"{vmsg}; {GROUP_NOTE}",
            accuracy_ok=ok,
            efficiency=full_ms / (P * slow.median_ms) if full_ms else None,
            efficiency_share=P * share_ms / slow.median_ms if share_ms else None,
            **group,
        )
    )
    return rows
