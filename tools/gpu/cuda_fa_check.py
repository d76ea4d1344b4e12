"""One-call GPU check of the in-repo CUDA FlashAttention kernels (cuda_fa2, cuda_fa2_simt,
cuda_fa1): build, ptxas register/spill lines per kernel, accuracy on awkward shapes, then fwd/bwd
TFLOP/s at head dims 64/128, seqlen 2k/8k (16k tokens, width 2048), causal and not, next to SDPA
flash, with a short table last. Every timed case also gets an accuracy verdict. Timings go
through :mod:`attnbench.run.timing` (the numbers of ``attnbench perf --sweep seqlen --only
cuda_fa2,cuda_fa1,cuda_fa2_simt,sdpa_flash`` for the same cases).

    python tools/gpu/cuda_fa_check.py                 # ~3-4 minutes on an H200, build included
    python tools/gpu/cuda_fa_check.py --quick         # accuracy + hd128 only
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import torch

from attnbench.backends import REGISTRY
from attnbench.kernels import cuda as fa_cuda
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.case import case_flops
from attnbench.problems.attention.inputs import make_inputs
from attnbench.run import timing
from attnbench.run.check import check_backend, make_truth, report_lines
from attnbench.run.timing import mode_fn, timing_columns

KERNELS = "|".join(
    f"{k}_kernel"
    for k in (
        "fa2_fwd",
        "fa2_simt_fwd",
        "fa2_bwd_dkdv",
        "fa2_bwd_dq",
        "dot_do_o",
        "fa1_fwd",
        "fa1_bwd",
    )
)
BACKENDS = ("cuda_fa2", "cuda_fa1", "cuda_fa2_simt", "sdpa_flash")
ACC_CASES = [
    Case(2, 4, 4, 1000, 1000, 64, "fp16"),
    Case(2, 8, 2, 1000, 1000, 128, "bf16", causal=True),
    Case(2, 4, 2, 1000, 4001, 128, "fp16", causal=True),
    Case(2, 4, 4, 4001, 1000, 64, "bf16", causal=True),
    Case(1, 6, 3, 4001, 4001, 128, "bf16"),
]


def ptxas_table(log: str) -> list[str]:
    """'kernel<T, D>: regs, spills, smem' from nvcc -Xptxas -v output (sm_90 build)."""
    rows, name = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            raw = m.group(1)
            k = re.search(rf"({KERNELS})I(\w+?)Li(\d+)E", raw)
            dt = "bf16" if k and "bfloat" in k.group(2) else "fp16"
            name = f"{k.group(1)}<{dt},{k.group(3)}>" if k else raw
            continue
        if name and "spill" in line:
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            stack = re.search(r"(\d+) bytes stack frame", line)
            rows.append(
                [
                    name,
                    None,
                    stack.group(1) if stack else "?",
                    f"{spill.group(1)}/{spill.group(2)}" if spill else "?",
                ]
            )
        m = re.search(r"Used (\d+) registers", line)
        if m and rows and rows[-1][0] == name and rows[-1][1] is None:
            rows[-1][1] = m.group(1)
    out = [f"{'kernel':34s} {'regs':>5s} {'stack':>6s} {'spill st/ld':>12s}"]
    seen = set()
    for r in rows:
        if r[0] in seen:
            continue
        seen.add(r[0])
        out.append(f"{r[0]:34s} {r[1] or '?':>5s} {r[2]:>6s} {r[3]:>12s}")
    return out


def res_usage() -> list[str]:
    """Fallback when the build log is gone: cuobjdump -res-usage on the built extension."""
    ext = fa_cuda.load()
    try:
        res = subprocess.run(
            ["cuobjdump", "-res-usage", ext.__file__], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"(cuobjdump unavailable: {e})"]
    return [ln.strip() for ln in res.stdout.splitlines() if "REG:" in ln or "Function" in ln]


def verdict(name: str, case: Case, inp, truth, grads: bool) -> str:
    errs = check_backend(REGISTRY[name], case, inp, truth, grads=grads)
    worst = max(errs, key=lambda e: e.ratio)
    ok = all(e.accuracy_ok for e in errs)
    return f"{'ok' if ok else 'FAIL'} (worst {worst.tensor} x{worst.ratio:.2f})"


def bench(name: str, case: Case, inp, mode: str) -> float | None:
    """TFLOP/s of ``mode`` through attnbench's one timer, timed as ``attnbench perf`` does."""
    be = REGISTRY[name]
    if be.why_unsupported(case, "cuda", mode):
        return None
    p = be.prepare(inp, case)
    fn = mode_fn(lambda: be.forward(p, case), inp.dout, mode)
    t = timing.bench(fn, p.leaves, torch.device("cuda"))
    return timing_columns(t, case_flops(case, mode))["tflops"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="accuracy + head dim 128 only")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print("build flags:", fa_cuda.build_flags())
    t0 = time.time()
    err = fa_cuda.build_error()
    print(
        f"build: {'FAILED: ' + err if err else 'ok'} ({time.time() - t0:.0f} s, "
        f"cache {fa_cuda.build_dir(fa_cuda.current_capability())})"
    )
    if err:
        print(fa_cuda.build_log()[-6000:])
        return 1
    log = fa_cuda.build_log()
    print("\n".join(ptxas_table(log) if "ptxas" in log else res_usage()))

    failures = 0
    print("\n== accuracy (flash-attention rule vs fp32 reference) ==")
    for case in ACC_CASES:
        inp = make_inputs(case, "cuda", seed=0)
        truth = make_truth(inp, case, grads=True)
        for name in BACKENDS[:3]:
            be = REGISTRY[name]
            errs = check_backend(be, case, inp, truth, grads=be.caps.backward)
            ok = all(e.accuracy_ok for e in errs)
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name:14s} {case.id}")
            if not ok:
                print("    " + "\n    ".join(report_lines(errs)))
        torch.cuda.empty_cache()

    print("\n== performance, TFLOP/s (16k tokens, width 2048) ==")
    table = []
    for d in (128,) if args.quick else (64, 128):
        for s in (2048, 8192):
            for causal in (False, True):
                case = Case(16384 // s, 2048 // d, 2048 // d, s, s, d, args.dtype, causal)
                inp = make_inputs(case, "cuda", seed=0)
                truth = make_truth(inp, case, grads=True)
                for name in BACKENDS:
                    be = REGISTRY[name]
                    v = (
                        verdict(name, case, inp, truth, be.caps.backward)
                        if name.startswith("cuda")
                        else "-"
                    )
                    fwd = bench(name, case, inp, "fwd")
                    bwd = bench(name, case, inp, "bwd")
                    table.append((case.id, name, fwd, bwd, v))
                    print(
                        f"{case.id:34s} {name:14s} fwd {fwd or 0:6.1f} bwd {bwd or 0:6.1f}  {v}",
                        flush=True,
                    )
                del inp, truth
                torch.cuda.empty_cache()

    print("\n| case | backend | fwd TFLOP/s | bwd TFLOP/s | accuracy |")
    print("|---|---|---|---|---|")
    for cid, name, fwd, bwd, v in table:
        f = f"{fwd:.0f}" if fwd else "-"
        b = f"{bwd:.0f}" if bwd else "-"
        print(f"| {cid} | {name} | {f} | {b} | {v} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
