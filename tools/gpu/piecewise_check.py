"""One-call GPU check of the fused piecewise kernel (``piecewise_triton``): accuracy, then
TFLOP/s next to ``triton_fa2``'s causal attention at the same shape.

Usage (on the GPU machine, from the repo root; through tools/gpu/lease.sh for the setup, e.g.
``bash tools/gpu/lease.sh -- 'python3 tools/gpu/piecewise_check.py'``)::

    python tools/gpu/piecewise_check.py                  # checks + timings, first configs only
    python tools/gpu/piecewise_check.py --configs --head-dims 128 --seqlens 16384
                                                         # autotune; TFLOP/s of every candidate
    ATTNBENCH_PIECEWISE_FWD=128x64w8s3,128x128w8s2 ATTNBENCH_PIECEWISE_DKDV=64x128w8s2 \\
        python tools/gpu/piecewise_check.py --configs    # try only these tiles

1. Accuracy (:mod:`attnbench.run.check`, the piecewise problem's one reference; ok = error <= 2x
   same-dtype torch for out/lse, 3x for dq1/dk1/dq2/dk2/dv) at awkward shapes: GQA, Sq != Sk
   both ways, w = 1, w <= 0, w past every distance, head dims 64/96/128/256, bf16/fp16.
2. Timings (:func:`attnbench.run.timing.bench`: L2 flushed, median) of fwd and bwd, bf16, causal,
   w = S/2, FlagAttention's shapes (B = tokens / S, H = 2048 / D), for piecewise_triton and
   triton_fa2 (causal, q1/k1/v); FLOPs by the one formula (4 x attended pairs x D x H; bwd 2.5x).
   Every timed row also grades the kernel's out on the last 256 query rows of batch 0 against
   the reference (``out err/base``, ok as above), so no speed stands without a verdict.
   Targets (issue 12, S=16k D=128): fwd >= 400, bwd >= 350, within 10% of triton_fa2.

Without ``--configs`` both kernels run with the first config of each table that fits
(``ATTNBENCH_PIECEWISE_TUNE=0``, ``ATTNBENCH_TRITON_FA2_TUNE=0``); with it they autotune
(``ATTNBENCH_RETUNE=1``: stored choices are ignored and replaced) and each piecewise kernel's
candidates are printed (TFLOP/s: fwd counted as the fwd FLOPs, dkdv as 2x, dq as 1.5x).
Tile subsets: ``ATTNBENCH_PIECEWISE_FWD`` / ``_DKDV`` / ``_DQ`` = ``BMxBNwWsS,...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", action="store_true", help="autotune and print every candidate")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--seqlens", default="2048,4096,8192,16384")
    ap.add_argument("--tokens", type=int, default=32768, help="B = tokens // S")
    ap.add_argument("--non-causal", action="store_true", help="also time causal=False")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny fp16 shapes")
    return ap.parse_args()


ARGS = parse()
TUNE = "1" if ARGS.configs else "0"
os.environ["ATTNBENCH_PIECEWISE_TUNE"] = TUNE
os.environ.setdefault("ATTNBENCH_TRITON_FA2_TUNE", TUNE)  # =0: triton_fa2 untuned while tuning
if ARGS.configs:
    os.environ["ATTNBENCH_RETUNE"] = "1"
if ARGS.smoke:  # exercise the script itself without a GPU
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cpu" if ARGS.smoke else "cuda"
DTYPE = "fp16" if ARGS.smoke else "bf16"

import torch  # noqa: E402
from common import candidate_line, grade_cases  # noqa: E402  (tools/gpu/common.py)

from attnbench.backends import REGISTRY  # noqa: E402
from attnbench.kernels import piecewise, switches, triton_fa2  # noqa: E402
from attnbench.kernels._triton import tuning  # noqa: E402
from attnbench.problems import problem_of  # noqa: E402
from attnbench.problems.attention import AttentionCase as Case  # noqa: E402
from attnbench.problems.piecewise import PiecewiseCase, piecewise_ref  # noqa: E402
from attnbench.run.check import abs_error, passes  # noqa: E402
from attnbench.run.timing import autotune_bench, bench, mode_fn, tflops  # noqa: E402

tuning.set_bench(autotune_bench)  # candidates timed as attnbench perf times them


def check_cases():
    c = PiecewiseCase
    if ARGS.smoke:
        return [c(1, 4, 2, 70, 50, 64, "fp16", True, dist_threshold=20)]
    return [
        c(2, 16, 4, 1000, 1000, 64, "bf16", True, dist_threshold=500),
        c(1, 8, 8, 777, 1537, 96, "fp16", True, dist_threshold=300),
        c(2, 8, 1, 1537, 777, 128, "bf16", True, dist_threshold=1),
        c(2, 16, 16, 1024, 1024, 128, "bf16", False, dist_threshold=200),
        c(1, 8, 8, 1024, 1024, 128, "bf16", True, dist_threshold=0),
        c(1, 8, 8, 1024, 1024, 64, "fp16", False, dist_threshold=10**6),
        c(2, 4, 4, 513, 513, 256, "bf16", True, dist_threshold=256),
        c(1, 4, 4, 300, 300, 64, "fp32", True, dist_threshold=150),
    ]


def run_checks() -> bool:
    return grade_cases(REGISTRY["piecewise_triton"], check_cases(), DEVICE)


def tail_verdict(case, xs, out, rows=256):
    """(max err, same-dtype err, ok) of out on the last ``rows`` query rows of batch 0."""
    sq = case.seqlen_q
    lo = max(0, sq - rows)
    q1, k1, q2, k2, v = (x[:1].detach() for x in xs)
    kw = dict(dist_threshold=case.dist_threshold, causal=case.causal, q_start=lo, seqlen_q=sq)
    ref, _ = piecewise_ref(q1[:, lo:], k1, q2[:, lo:], k2, v, upcast=True, **kw)
    same, _ = piecewise_ref(q1[:, lo:], k1, q2[:, lo:], k2, v, upcast=False, **kw)
    err, _ = abs_error(out[:1, lo:], ref)
    base, _ = abs_error(same, ref)
    return err, base, passes("out", err, base, case.dtype)


def bench_case(d, s, causal):
    b, h = max(1, ARGS.tokens // s), 2048 // d
    case = PiecewiseCase(b, h, h, s, s, d, DTYPE, causal, dist_threshold=s // 2)
    fa2_case = Case(b, h, h, s, s, d, DTYPE, causal)
    prob = problem_of(case)
    dev = torch.device(DEVICE)
    inp = prob.make_inputs(case, DEVICE, seed=0)
    xs = [x.detach().requires_grad_() for x in inp.differentiable]
    ms, lines = {}, []

    def ours():
        return piecewise.piecewise_attention(*xs, case.dist_threshold, causal=causal)

    out, _ = ours()
    err, base, ok = tail_verdict(case, xs, out)
    del out
    for mode in ("fwd", "bwd"):
        ms[f"ours_{mode}"] = bench(mode_fn(ours, inp.dout, mode), xs, dev).median_ms
    if ARGS.configs:
        f = prob.flops(case, "fwd")
        lines = [
            candidate_line(piecewise.fwd._fwd_kernel, "fwd", f),
            candidate_line(piecewise.bwd._bwd_dkdv_kernel, "dkdv", 2 * f),
            candidate_line(piecewise.bwd._bwd_dq_kernel, "dq", 1.5 * f),
        ]
    chosen = piecewise.chosen_configs()

    q, k, v = xs[0], xs[1], xs[4]

    def fa2():
        return triton_fa2.flash_attn(q, k, v, causal=causal)

    for mode in ("fwd", "bwd"):
        ms[f"fa2_{mode}"] = bench(mode_fn(fa2, inp.dout, mode), (q, k, v), dev).median_ms
    cells = []
    for mode in ("fwd", "bwd"):
        t_ours = tflops(prob.flops(case, mode), ms[f"ours_{mode}"])
        t_fa2 = tflops(problem_of(fa2_case).flops(fa2_case, mode), ms[f"fa2_{mode}"])
        cells.append(f"{t_ours:5.0f} {t_fa2:5.0f} {t_ours / t_fa2:5.2f}")
    tag = "causal" if causal else "full  "
    verdict = f"{err:.1e}/{base:.1e} {'ok' if ok else 'FAIL'}"
    tiles = f"fwd {chosen['fwd']}; dkdv {chosen['bwd_dkdv']}; dq {chosen['bwd_dq']}"
    print(
        f"D{d:<4}S{s:<6}{tag} B{b:<3}H{h:<3}| {cells[0]} | {cells[1]} | {verdict} | {tiles}",
        flush=True,
    )
    for line in lines:
        print(line)
    return ok


def main():
    gpu = "cpu (interpreter smoke run)" if ARGS.smoke else torch.cuda.get_device_name()
    print(
        f"{gpu}  torch {torch.__version__}  "
        f"arch-table {piecewise.configs.ARCH}  tune {switches.on(piecewise.configs.ENV_TUNE)}"
    )
    t0 = time.time()
    ok = True
    if not ARGS.skip_check:
        ok = run_checks()
        print(f"accuracy: {'all ok' if ok else 'FAILURES'} ({time.time() - t0:.0f}s)", flush=True)
    if not ARGS.skip_bench:
        print(f"== TFLOP/s, {DTYPE}, w = S/2, {ARGS.tokens} tokens/batch, width 2048 ==")
        print(
            "case                       | fwd: pw   fa2 ratio | bwd: pw   fa2 ratio | out err/base | tiles"
        )
        for d in (int(x) for x in ARGS.head_dims.split(",")):
            for causal in (True, False) if ARGS.non_causal else (True,):
                for s in (int(x) for x in ARGS.seqlens.split(",")):
                    try:
                        ok &= bench_case(d, s, causal)
                    except Exception as e:  # one failing shape does not stop the table
                        print(
                            f"D{d} S{s}: ERROR {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        )
                        ok = False
                    if DEVICE == "cuda":
                        torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
