"""The single-device baseline of a distributed perf run: rank 0 times the local kernel over the
whole sequence S and, for P > 1, over one rank's share S/P (ring-flash-attention's "theoretic"
baseline is P x that time). Each timing is a ``strategy=single`` row (world size 1) with the
core accuracy verdict of the same non-distributed run against the case's truth."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..problems.attention.case import case_flops
from ..problems.base import Case
from ..results.text import status_text
from ..run.check import grade, verdict
from ..run.runner import classify
from ..run.state import CaseState
from ..run.timing import bench, mode_fn, timing_columns
from .check import single_of
from .context import DistRun
from .local import LocalKernel, local_attention


def _time_single(run: DistRun, state: CaseState, kernel: LocalKernel) -> tuple[dict, list]:
    """Time the local kernel over ``state.case`` on this device: (mode -> median ms of the
    modes that pass, rows)."""
    case, inp = state.case, state.inputs
    single = single_of(state, kernel)
    errs = grade(vars(single), state.truth(), case)
    times, rows = {}, []
    for mode in run.sel.modes:
        ok, msg = verdict(errs, mode)
        try:
            leaves = tuple(x.detach().clone().requires_grad_() for x in (inp.q, inp.k, inp.v))
            fn = mode_fn(
                lambda lv=leaves: local_attention(*lv, kernel, case.causal, case.scale),
                inp.dout,
                mode,
            )
            t = bench(fn, leaves, torch.device(run.env.device), run.cfg.warmup_ms, run.cfg.rep_ms)
        except Exception as e:
            status, emsg = classify(e)
            rows.append(
                run.row(case, kernel.name, mode, "single", 1, 0, status=status, message=emsg)
            )
            continue
        if ok:
            times[mode] = t.median_ms
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
                message=msg,
                **timing_columns(t, case_flops(case, mode)),
            )
        )
    return times, rows


def single_device_ms(run: DistRun, state: CaseState, kernel: LocalKernel, label: str) -> dict:
    """mode -> (ms at S, ms at S/P or None), measured on rank 0 (the others wait) and shared
    with every rank; emits the ``strategy=single`` rows."""
    out: dict[str, tuple] = {}
    if run.rank0:
        full, rows = _time_single(run, state, kernel)
        share: dict = {}
        case, P = state.case, run.world
        if P > 1 and case.seqlen_q == case.seqlen_k and case.seqlen_q % P == 0:
            sub_state = CaseState(_share(case, P), run.env.device, run.cfg.seed)
            try:
                share, more = _time_single(run, sub_state, kernel)
                rows += more
            except Exception as e:  # the full-sequence baseline still stands
                status, msg = classify(e)
                run.print(
                    f"[yellow]{label}: single-device run at S/P: {status_text(status, msg)}[/]"
                )
            sub_state.release()
        run.emit(rows)
        out = {m: (ms, share.get(m)) for m, ms in full.items()}
    with run.wd.phase(f"{label}: waiting for rank 0's single-device timing"):
        return run.gather(out)[0]


def _share(case: Case, world: int) -> Case:
    return replace(case, seqlen_q=case.seqlen_q // world, seqlen_k=case.seqlen_k // world)
