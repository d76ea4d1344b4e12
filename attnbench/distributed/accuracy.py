"""``attnbench dist accuracy``: every strategy and local backend of every case, forward and
backward, graded rank by rank against the fp32 reference and the non-distributed run of the
same kernel (:mod:`attnbench.distributed.check`)."""

from __future__ import annotations

from ..problems.base import Case
from ..results.text import status_text
from ..run.check import failure_message
from ..run.runner import classify
from ..run.state import CaseState
from .check import compare, report_lines, run_distributed, single_of
from .context import DistRun
from .local import get_local_kernel

AGAINST = "2.5 x non-distributed"


def run_accuracy(run: DistRun) -> None:
    env, P = run.env, run.world
    for case in run.sel.cases:
        state = CaseState(case, env.device, run.cfg.seed)
        for name in run.sel.local_backends:
            kernel = get_local_kernel(name)
            for strategy in run.sel.strategies:
                label = f"{strategy} · {name} · {case.id} · world {P}"
                setup = run.setup(strategy, case, kernel, ["fwd_bwd"], label)
                if setup is None:
                    continue
                layout, groups = setup
                status, msg, errs = "ok", None, []
                try:
                    with run.wd.phase(f"{label}: inputs, reference, non-distributed run"):
                        truth = state.reference()
                        single = single_of(state, kernel)
                except Exception as e:  # becomes a row; the ranks agree below
                    status, msg = classify(e)
                with run.wd.phase(f"{label}: agreeing to start"):
                    go = run.all_ok(status == "ok")
                if go:
                    try:
                        with run.wd.phase(f"{label}: distributed forward + backward"):
                            got = run_distributed(
                                state.inputs, case, kernel, layout, groups, env.rank
                            )
                        errs = compare(got, single, truth, layout, env.rank, case)
                        del got
                    except Exception as e:
                        status, msg = classify(e)
                elif status == "ok":
                    status, msg = "error", "skipped: another rank failed before the run"
                with run.wd.phase(f"{label}: gathering results"):
                    per_rank = run.gather((status, msg, errs))
                _accuracy_rows(run, case, name, strategy, per_rank, label)
        state.release()


def _accuracy_rows(run: DistRun, case: Case, backend: str, strategy: str, per_rank, label) -> None:
    if not run.rank0:
        return
    P = run.world
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
            failed.append(f"rank {r}: {status_text(status, msg)}")
            continue
        for e in errs:
            note = f"vs non-distributed: max {e.diff_max:.3g} mean {e.diff_mean:.3g}"
            if not e.accuracy_ok:
                note = f"{failure_message(e, AGAINST)} + floor; {note}"
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
                    **e.columns(),
                )
            )
    run.emit(rows)
    mark = "[red]FAIL[/]" if failed else "[green]PASS[/]"
    run.print(f"[bold]{label}[/] {mark}")
    if any(s != "ok" for s, _, _ in per_rank):
        run.print(*(f"  [yellow]{f}[/]" for f in failed))
        return
    run.print(*("  " + line for line in report_lines([errs for _, _, errs in per_rank])))
