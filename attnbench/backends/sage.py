"""``sage``: SageAttention 1 (``sageattention.core.sageattn``, PyPI ``sageattention``, a pure-Triton
wheel): Q.K^T in INT8 with one scale per block (128 queries, 64 keys) after smoothing K, then
P.V in fp16 with an fp32 softmax. A lossy kernel on purpose (``precision="int8"``), graded by
the lossy rule (:mod:`attnbench.rule`); forward only::

    pip install -e ".[sage]"        # or: pip install attnbench[sage]
    attnbench accuracy --suite lowp --only sage,sdpa_flash

``sageattn(q, k, v, tensor_layout="NHD", is_causal=case.causal, sm_scale=case.scale,
smooth_k=True)`` on attnbench's (B, S, H, D) tensors as they are (NHD is that layout); it returns
the output in the input dtype and no lse. ``sageattn`` is looked up in ``sageattention`` (the
1.0.6 wheel's ``__init__`` re-exports it) and then in ``sageattention.core``, where it is defined.

What its source (``core.py``, 1.0.6) accepts, declared here:

- CUDA only (``assert q.is_cuda``); fp16, bf16 and fp32 (v is cast to fp16 for bf16/fp32);
  head dims 64, 96 and 128 (``assert headdim in [64, 96, 128]``); GQA/MQA (``num_qo_heads``
  divisible by ``num_kv_heads``); seqlen_q != seqlen_k without a mask.
- Causal "only applicable when qo_len == kv_len" (its causal kernel asserts it): causal with
  seqlen_q != seqlen_k is refused before anything runs.
- No lse, no backward, no window/softcap/ALiBi. Varlen is a separate entry point
  (``sageattn_varlen``, K smoothed over the whole packed batch) not wired here: unsupported.

The in-place hazard: with ``smooth_k=True`` (its default, and what makes INT8 survive K's
outlier channels) ``sageattn`` subtracts K's mean over the sequence *in place*
(``k -= km``) on the tensor it is given. Attention is unchanged by that shift (each query's
scores move by one constant), but the caller's K is not: handed the harness's shared inputs, it
would rewrite them for every backend run after it on the case, and a later quantized backend
would be graded on pre-smoothed keys, hiding exactly the K outliers the lowp suite plants.
So ``prepare`` (untimed) clones K once, and each call smooths that private copy (after the
first call its mean is ~0 and the subtraction changes ~nothing; the mean and subtraction stay
in the timed call, as they are SageAttention's cost). q and v are passed as they are: it reads
q, and casts v out of place.

Read from the 1.0.6 source, not verified on a GPU here: its non-causal kernels mask the K/V
*loads* past kv_len but not the scores, so with kv_len not a multiple of 64 the zero keys of the
last block would enter the softmax sum; the grading would show it (the lowp suite's lengths are
multiples of 64).
"""

from __future__ import annotations

import importlib

import torch

from .base import Backend, Capabilities, Prepared, Unsupported, exception_chain, register

HEAD_DIMS = (64, 96, 128)  # core.py: assert headdim in [64, 96, 128]
INSTALL = "pip install -e '.[sage]'"


def sageattn_fn():
    """``(sageattn, None)``, or ``(None, why)`` when it cannot be imported. Looked up in
    ``sageattention`` and then in ``sageattention.core`` (an ``__init__`` that exports nothing)."""
    try:
        mod = importlib.import_module("sageattention")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "sageattention":
            return None, f"sageattention not installed ({INSTALL})"
        return None, f"sageattention import failed: {e}"  # a dependency (triton) missing
    except Exception as e:
        return None, f"sageattention import failed: {type(e).__name__}: {e}"
    fn = getattr(mod, "sageattn", None)
    if fn is None:
        try:
            fn = getattr(importlib.import_module("sageattention.core"), "sageattn", None)
        except Exception as e:
            return None, f"sageattention.core import failed: {type(e).__name__}: {e}"
    if fn is None:
        return None, "sageattention has no sageattn (in sageattention or sageattention.core)"
    return fn, None


def _from_sage(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if "/sageattention/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


@register
class SageAttention(Backend):
    name = "sage"
    description = (
        "SageAttention 1 sageattn (Triton): INT8 Q.K^T per block after smoothing K, fp16 P.V; "
        "head dims 64/96/128, forward only"
    )
    caps = Capabilities(
        devices={"cuda"},
        dtypes={"fp16", "bf16", "fp32"},
        max_head_dim=max(HEAD_DIMS),  # the exact set in extra_check
        causal=True,
        gqa=True,
        seqlen_q_ne_k=True,  # without a mask; causal needs equal lengths (extra_check)
        varlen=False,
        backward=False,
        lse=False,
        precision="int8",
    )

    def availability(self, device):
        fn, why = sageattn_fn()
        if fn is None:
            return why
        if device == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if major < 8:
                return f"SageAttention targets sm80 or newer (this GPU is sm{major}{minor})"
        return None

    def extra_check(self, case, device, mode):
        if case.head_dim not in HEAD_DIMS:
            has = ", ".join(map(str, HEAD_DIMS))
            return f"unsupported: head dim {case.head_dim} (sageattn takes {has})"
        if case.causal and case.seqlen_q != case.seqlen_k:
            return (
                "unsupported: causal with seqlen_q != seqlen_k (sageattn's causal mask is "
                "for qo_len == kv_len only)"
            )
        return None

    def refusal(self, e):
        for err in exception_chain(e):
            if isinstance(err, AssertionError | ValueError | NotImplementedError) and _from_sage(
                err
            ):
                text = str(err).strip()
                line = text.splitlines()[0] if text else type(err).__name__
                return f"unsupported: sageattention refused: {line[:300]}"
        return None

    def prepare(self, inp, case):
        fn, why = sageattn_fn()
        if fn is None:
            raise Unsupported(why)
        q, v = inp.q.detach(), inp.v.detach()
        # sageattn smooths K in place (k -= mean over the sequence): its own copy, made once
        # here outside the timed region, so the harness's shared k is never written
        k = inp.k.detach().clone()
        return Prepared((q, k, v), {"fn": fn})

    def forward(self, p, case):
        q, k, v = p.leaves
        out = p.args["fn"](
            q, k, v, tensor_layout="NHD", is_causal=case.causal, sm_scale=case.scale, smooth_k=True
        )
        return out, None
