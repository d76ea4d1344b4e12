"""What FlashAttention-4 (flash_attn.cute) and FlexAttention (Triton and BACKEND=FLASH) run on
this GPU, in one device call (FA4 installed by tools/gpu/lease.sh: call 1 ``--fa4-park``,
carry .fa4a; call 2, carry .whl and .fa4b)::

    bash tools/gpu/lease.sh --fa4 -- 'python3 tools/gpu/fa4_probe.py'

Each probe is an attnbench case run through the registered backend and graded by attnbench's
accuracy rule, forward then forward+backward: ``ok x0.42`` (worst error / the rule's bound),
``FAIL`` (accuracy), ``refused: ...`` (the library's own message: an ``unsupported`` row in a
run) or ``error: ...``; ``s`` is the wall time of that call, first-call compiles included.
Then ``flex_fa4``'s lse over the reference's, raw (as torch returns it: 0.693 = ln 2 on torch
2.11-2.12, pytorch/pytorch#181645) and as graded (after ``natural_lse_from_flex_flash``: 1.000).
Last, the FLASH lowering of FlexAttention with the lse returned as a differentiable output versus
detached inside the compiled function (what ``flex_fa4`` does), forward+backward.
"""

from __future__ import annotations

import time

import torch

from attnbench.backends import REGISTRY
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.results.env import environment
from attnbench.run.check import FLOOR, check_backend, factor, make_truth
from attnbench.run.runner import classify


def C(hq=8, hkv=8, sq=1024, sk=None, d=128, **kw):
    return Case(2, hq, hkv, sq, sk or sq, d, kw.pop("dtype", "bf16"), **kw)


PROBES = [
    *[(f"hd{d}", "fa4", C(d=d)) for d in (64, 96, 128, 192, 256)],
    *[(f"hd{d} causal", "fa4", C(d=d, causal=True)) for d in (64, 128, 256)],
    ("Sq<Sk causal", "fa4", C(sq=512, sk=1537, d=64, causal=True)),
    ("Sq>Sk causal (empty rows)", "fa4", C(sq=1537, sk=512, causal=True)),
    ("Sq!=Sk full", "fa4", C(sq=1000, sk=1500)),
    ("window+causal 256", "fa4", C(causal=True, window_left=256)),
    ("window 128,128", "fa4", C(window_left=128, window_right=128)),
    ("GQA 8/2", "fa4", C(hkv=2, causal=True)),
    ("MQA 6/1 hd96", "fa4", C(hq=6, hkv=1, d=96)),
    ("softcap 30 causal", "fa4", C(causal=True, softcap=30.0)),
    ("deterministic", "fa4", C(causal=True, deterministic=True, dtype="fp16")),
    ("fp16 hd64", "fa4", C(d=64, dtype="fp16")),
    ("varlen causal", "fa4_varlen", Case(4, 8, 2, 1, 1, 128, "bf16", True, seqlens=(1, 300, 17, 1023))),
    ("dense as varlen", "fa4_varlen", C(d=64)),
    ("flex hd128 causal", "flex", C(causal=True)),
    ("flex Sq>Sk causal", "flex", C(sq=1537, sk=512, causal=True)),
    ("FLASH hd128", "flex_fa4", C()),
    ("FLASH hd128 causal", "flex_fa4", C(causal=True)),
    ("FLASH hd64 GQA causal", "flex_fa4", C(hkv=2, d=64, causal=True)),
    ("FLASH Sq>Sk causal", "flex_fa4", C(sq=1537, sk=512, causal=True)),
    ("FLASH window+causal", "flex_fa4", C(causal=True, window_left=256)),
    ("FLASH softcap", "flex_fa4", C(causal=True, softcap=30.0)),
    ("FLASH alibi", "flex_fa4", C(causal=True, alibi=True)),
    ("FLASH varlen causal", "flex_fa4", Case(4, 8, 8, 1, 1, 128, "bf16", True, seqlens=(1, 300, 17, 1023))),
]  # fmt: skip


def grade(be, case, grads: bool) -> tuple[str, float]:
    mode = "fwd_bwd" if grads else "fwd"
    why = be.why_unsupported(case, "cuda", mode)
    if why:
        return f"declared {why}", 0.0
    t0 = time.perf_counter()
    try:
        inp = make_inputs(case, "cuda")
        truth = make_truth(inp, case, grads=grads)
        t0 = time.perf_counter()
        errs = check_backend(be, case, inp, truth, grads=grads)
        torch.cuda.synchronize()
    except Exception as e:
        status, msg = classify(e, be)
        word = "refused" if status == "unsupported" else status
        return f"{word}: {msg.removeprefix('unsupported: ')[:110]}", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    worst = max(
        e.max_abs_err / (factor(e.tensor) * e.baseline_max_abs_err + FLOOR[case.dtype])
        for e in errs
    )
    bad = [e.tensor for e in errs if not e.accuracy_ok]
    graded = "+".join(e.tensor for e in errs)
    return (f"FAIL {','.join(bad)}" if bad else f"ok x{worst:.2f}") + f" [{graded}]", dt


def lse_units() -> None:
    """One line: flex_fa4's lse / the fp32 reference's, raw from torch and as attnbench grades it."""
    from torch.nn.attention import flex_attention as fa

    from attnbench.backends.flex import TORCH_SCALES_FLASH_LSE, to_flex_layout

    case, be = C(), REGISTRY["flex_fa4"]
    inp = make_inputs(case, "cuda")
    ref = make_truth(inp, case, grads=False).ref.lse.float()
    with torch.no_grad():
        graded = be.forward(be.prepare(inp, case), case)[1]
        q, k, v = (to_flex_layout(t.detach(), False) for t in (inp.q, inp.k, inp.v))
        flash = torch.compile(fa.flex_attention, dynamic=False)
        aux = flash(q, k, v, scale=case.scale, return_aux=fa.AuxRequest(lse=True),
                    kernel_options={"BACKEND": "FLASH"})[1]  # fmt: skip

    def ratio(x):
        return (x.float() / ref).median().item()

    print(
        f"  flex_fa4 raw lse / reference lse = {ratio(aux.lse):.3f}, graded lse / reference lse = "
        f"{ratio(graded):.3f} ({case.id}; torch {torch.__version__}: divided by ln 2: "
        f"{TORCH_SCALES_FLASH_LSE})"
    )


def lse_question() -> None:
    """Does the FLASH lowering fail when the lse is a differentiable output of the compiled
    function (its backward then gets a dLSE tangent), and run when it is detached inside?"""
    from torch.nn.attention import flex_attention as fa

    b, h, s, d = 2, 8, 1024, 128
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bm = fa.create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, s, s, device="cuda")

    for detach in (False, True):

        def attend(q, k, v, detach=detach):
            out, aux = fa.flex_attention(
                q,
                k,
                v,
                block_mask=bm,
                return_aux=fa.AuxRequest(lse=True),
                kernel_options={"BACKEND": "FLASH"},
            )
            return out, (aux.lse.detach() if detach else aux.lse)

        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        try:
            out, lse = torch.compile(attend, dynamic=False)(*leaves)
            out.backward(torch.randn_like(out))
            torch.cuda.synchronize()
            res = "fwd+bwd ran"
        except Exception as e:
            res = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        print(f"  FLASH, lse {'detached' if detach else 'differentiable'}: {res}")


def main() -> None:
    env = environment("cuda")
    print(
        f"{env['gpu_name']}  torch {env['torch_version']}  flash-attn-4 "
        f"{env['flash_attn_4_version']}  sm{''.join(map(str, torch.cuda.get_device_capability()))}"
    )
    print(f"{'probe':28} {'backend':10} {'case':44} {'fwd':46} {'fwd+bwd':46}")
    for label, name, case in PROBES:
        be = REGISTRY[name]
        fwd, tf = grade(be, case, grads=False)
        bwd, tb = grade(be, case, grads=True)
        print(f"{label:28} {name:10} {case.id:44} {fwd:38} {tf:5.1f}s  {bwd:38} {tb:5.1f}s")
    try:
        lse_units()
    except Exception as e:
        print(f"  flex_fa4 lse units: {type(e).__name__}: {str(e).strip()[:200]}")
    try:
        lse_question()
    except Exception as e:  # no FlexAttention FLASH lowering at all
        print(f"  FLASH lse question: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
