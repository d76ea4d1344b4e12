"""FlashAttention-4 (``flash_attn.cute``, PyPI ``flash-attn-4``): CuTe-DSL kernels for Hopper and
Blackwell, two backends::

    pip install -e ".[fa4]"
    attnbench perf --only fa4,fa4_varlen,sdpa_cudnn

- ``fa4``: ``flash_attn.cute.flash_attn_func`` on q (B, Sq, Hq, D), k, v (B, Sk, Hkv, D)
- ``fa4_varlen``: ``flash_attn_varlen_func`` on packed (total, H, D) with int32 ``cu_seqlens``;
  dense cases run as B equal-length sequences (packing in ``prepare``, outside the timed region)

Causal is bottom-right aligned (flash-attn's convention), GQA/MQA native, ``window_size`` uses
None for an unbounded side, ``softcap``, ``softmax_scale``, ``deterministic``; ``return_lse=True``
returns ``(out, lse)`` with lse fp32 (B, Hq, Sq) (varlen (Hq, total_q)), graded like the output.
Rows with no visible key get lse = -inf (the reference's +inf; both are exact, see check.py).

Kernels are JIT-compiled by the CuTe DSL on the first call of each new configuration (seconds):
that call is the ``first_call_s`` column, never a timed one. What the library refuses at run time
on the running GPU (its own checks: asserts in its Python wrapper, ``NotImplementedError``, DSL
errors) becomes an ``unsupported`` row with its message; ``tools/gpu/fa4_probe.py`` lists what runs.
FlashAttention-4 has no ALiBi slopes and no fp32; it runs on sm90, sm100 and sm110.
"""

from __future__ import annotations

import importlib

import torch

from .base import Backend, Capabilities, Prepared, exception_chain, register
from .flash_attn_layout import to_ref_layout, unflatten_batch, varlen_inputs

ARCHS = (9, 10, 11)  # compute capability majors flash_attn.cute accepts
_module = None
_import_error: str | None = None


def fa4_module():
    """``flash_attn.cute``, imported on first use (None when it cannot be imported)."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            _module = importlib.import_module("flash_attn.cute")
        except ModuleNotFoundError as e:
            if (e.name or "").startswith("flash_attn"):
                _import_error = "flash-attn-4 not installed"
            else:  # a dependency is missing, e.g. cutlass (nvidia-cutlass-dsl)
                _import_error = f"flash-attn-4 import failed: {e}"
        except Exception as e:
            _import_error = f"flash-attn-4 import failed: {type(e).__name__}: {e}"
    return _module


def fa4_availability(device: str) -> str | None:
    """None when flash_attn.cute can run on ``device``, else why not (shared with ``flex_fa4``)."""
    if fa4_module() is None:
        return _import_error
    if device == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if major not in ARCHS:
            return f"flash-attn-4 runs on sm90/sm100/sm110 (this GPU is sm{major}{minor})"
    return None


def fa4_refusal(e: BaseException) -> str | None:
    """The library's message when ``e`` is flash_attn.cute refusing a case (its input checks or
    a CuTe DSL compile error), None for anything else."""
    for err in exception_chain(e):
        kinds = (AssertionError, NotImplementedError, ValueError)
        from_cute = any(
            "flash_attn/cute" in f.f_code.co_filename.replace("\\", "/")
            for f, _ in _frames(err.__traceback__)
        )
        dsl_error = type(err).__module__.split(".")[0] == "cutlass"
        if (isinstance(err, kinds) and from_cute) or dsl_error:
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return f"unsupported: flash_attn.cute refused: {text[:300]}"
    return None


def _frames(tb):
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def window_size(case) -> tuple[int | None, int | None]:
    """attnbench's -1 (unbounded) -> flash_attn.cute's None."""
    return (
        None if case.window_left < 0 else case.window_left,
        None if case.window_right < 0 else case.window_right,
    )


class FA4(Backend):
    def __init__(self, varlen_api: bool):
        self.varlen_api = varlen_api
        self.name = "fa4_varlen" if varlen_api else "fa4"
        entry = "flash_attn_varlen_func" if varlen_api else "flash_attn_func"
        self.description = f"FlashAttention-4 flash_attn.cute.{entry}" + (
            " (dense cases as equal-length sequences)" if varlen_api else ""
        )
        self.caps = Capabilities(
            devices={"cuda"},
            dtypes={"fp16", "bf16"},
            max_head_dim=256,
            varlen=varlen_api,
            backward=True,
            lse=True,
            window=True,
            softcap=True,
            alibi=False,
            deterministic=True,
        )

    def availability(self, device):
        return fa4_availability(device)

    def extra_check(self, case, device, mode):
        if case.head_dim % 8:
            return f"unsupported: head dim {case.head_dim} not a multiple of 8"
        return None

    def refusal(self, e):
        return fa4_refusal(e)

    def prepare(self, inp, case):
        q, k, v = inp.q, inp.k, inp.v
        args = dict(dense_batch=None)
        if self.varlen_api:
            q, k, v, args = varlen_inputs(inp, case)
        leaves = tuple(t.detach().clone().requires_grad_() for t in (q, k, v))
        return Prepared(leaves, args)

    def forward(self, p, case):
        mod = fa4_module()
        kw = dict(
            softmax_scale=case.scale,
            causal=case.causal,
            window_size=window_size(case),
            softcap=case.softcap,
            deterministic=case.deterministic,
            return_lse=True,
        )
        a = p.args
        if self.varlen_api:
            res = mod.flash_attn_varlen_func(
                *p.leaves,
                cu_seqlens_q=a["cu_seqlens_q"],
                cu_seqlens_k=a["cu_seqlens_k"],
                max_seqlen_q=a["max_seqlen_q"],
                max_seqlen_k=a["max_seqlen_k"],
                **kw,
            )
        else:
            res = mod.flash_attn_func(*p.leaves, **kw)
        out, lse = res if isinstance(res, tuple) else (res, None)
        if lse is None:
            return out if a["dense_batch"] is None else unflatten_batch(out, a["dense_batch"]), None
        return to_ref_layout(out, lse, a["dense_batch"], None)

    def grads(self, p):
        g = tuple(t.grad for t in p.leaves)
        b = p.args["dense_batch"]
        return g if b is None else tuple(unflatten_batch(x, b) for x in g)


register(FA4(varlen_api=False))
register(FA4(varlen_api=True))
