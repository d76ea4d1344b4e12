"""What the kernel check scripts (triton_fa2_check.py, piecewise_check.py) share: grading a
backend on a list of cases, and a line of the autotuner's candidates."""

from __future__ import annotations

import time

from attnbench.kernels._triton.tuning import describe
from attnbench.problems import problem_of
from attnbench.run.check import check_backend, make_truth
from attnbench.run.timing import tflops


def grade_cases(be, cases, device: str, grads: bool = True) -> bool:
    """Grade ``be`` (fwd and bwd; ``grads=False``: fwd only) on ``cases`` with the project's
    rule, one line per case: ok/FAIL and each tensor's max error / same-dtype torch error (a
    lossy backend: its cosine similarity and relative L1). False if any case failed, errored or
    was unsupported; one failing case does not stop the rest."""
    ok_all = True
    lossy = be.caps.precision != "exact"
    if lossy:
        print(f"== accuracy of {be.name} (cos sim / rel L1; the lossy {be.caps.precision} rule) ==")
    else:
        print("== accuracy (max err / same-dtype torch err; ok = <= 2x out/lse, 3x grads) ==")
    for case in cases:
        t0 = time.time()
        why = be.why_unsupported(case, device, "fwd_bwd" if grads else "fwd")
        if why:
            print(f"SKIP {case.id}: {why}")
            ok_all = False
            continue
        try:
            inp = problem_of(case).make_inputs(case, device, seed=0)
            errs = check_backend(be, case, inp, make_truth(inp, case, grads=grads), grads=grads)
        except Exception as e:  # report and go on: the timings are still useful
            print(f"ERROR {case.id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            ok_all = False
            continue
        ok = all(e.accuracy_ok for e in errs)
        ok_all &= ok
        if lossy:
            parts = " ".join(f"{e.tensor} {e.cos_sim:.4f}/{e.rel_l1:.3f}" for e in errs)
        else:
            parts = " ".join(
                f"{e.tensor} {e.max_abs_err:.1e}/{e.baseline_max_abs_err:.1e}" for e in errs
            )
        print(
            f"{'ok  ' if ok else 'FAIL'} {case.id}: {parts} ({time.time() - t0:.0f}s)", flush=True
        )
    return ok_all


def candidate_line(kernel, label: str, flops: float) -> str:
    """``    fwd: 128x64w8s3:468 64x64w4s3:348 -> 128x64 w8 s3``: TFLOP/s of every config the
    autotuner timed for its last tuning (0: it did not fit), then its choice."""
    timings = getattr(kernel, "configs_timings", None) or {}
    items = []
    for cfg, t in timings.items():
        ms = t[0] if isinstance(t, (list, tuple)) else t
        val = tflops(flops, ms) if ms and ms != float("inf") else 0.0
        items.append(f"{describe(cfg).replace(' ', '')}:{val:.0f}")
    best = describe(getattr(kernel, "best_config", None))
    return f"    {label}: " + " ".join(items) + (f" -> {best}" if best else "")
