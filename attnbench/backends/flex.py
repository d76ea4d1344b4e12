"""PyTorch FlexAttention (``torch.nn.attention.flex_attention``), compiled, two backends::

    attnbench perf --only flex,flex_fa4,sdpa_cudnn

- ``flex``: Inductor's Triton FlexAttention kernels (``torch.compile(flex_attention)``)
- ``flex_fa4``: the same call with ``kernel_options={"BACKEND": "FLASH"}``: FlexAttention lowered
  to FlashAttention-4's CuTe-DSL kernels (needs ``flash-attn-4``, sm90+)

Masks are ``mask_mod`` functions turned into a block mask in ``prepare`` (outside the timed
region, cached per case), softcap and ALiBi are ``score_mod`` functions
(:mod:`attnbench.backends.flex_mods`); GQA through ``enable_gqa``; the lse through
``return_aux=AuxRequest(lse=True)`` (``return_lse=True`` on torches without it), detached inside
the compiled function so the backward never differentiates through it. Rows with no visible key
give out = 0, lse = -inf.

One compiled function serves every case: dynamo's recompile limit is raised and hitting it fails
loudly, so a sweep never silently falls back to the eager path (50-100x slower). Compiles happen
on the first call of a case (``first_call_s``).

Both backends compile with fixed shapes (``dynamic=False``: a graph per case shape), as
tritonbench's ``flex_attention`` operator does (``--dynamic`` to opt in): on the H200
(2026-12-02) ``flex``'s graphs with symbolic lengths ran 3-7% slower in the backward and up to
7% in the forward than fixed-shape ones at the same shape, which would have understated
FlexAttention. ``ATTNBENCH_FLEX_DYNAMIC=1`` turns on dynamo's automatic dynamic shapes for
``flex`` on CUDA (``dynamic=None``, :meth:`Flex.dynamic`): a second shape of the same (dtype,
head dim, mask, score mod) recompiles once with symbolic batch and lengths, and later shapes
reuse that graph (dynamo still specializes size 1: batch 1 at S 16k in the seqlen sweep). It
halved flex's first calls in the seqlen sweep (97 s instead of 194 s), for those slower rows.
A symbolic length would turn off Inductor's ``IS_DIVISIBLE`` (both lengths multiples of 128: no
bounds masks), so it is passed as a kernel option, which the graph is guarded on. Python floats
(the softmax scale, the softcap) stay constants in every graph (``specialize_float``): left to
automatic dynamic, a softcap that differs between cases became a symbolic float, and the
``if cap:`` of an ALiBi-only score mod then failed to trace ("RuntimeError when making fake
tensor call", the basic suite's ALiBi cases on the H200). ``flex_fa4`` always keeps fixed shapes
(FA4's lowering does not take symbolic ones), and so does the CPU (see :meth:`Flex.dynamic`).
On CPU FlexAttention compiles forward only and without the lse (torch
2.13: no backward, no ``return_lse`` there), so CPU cases are graded on out.
Refusals from the compiler (``NotImplementedError`` inside a lowering) become ``unsupported`` rows
with their message.

Why ``flex_fa4`` detaches the lse: torch's FLASH backward lowering (``flex_attention_backward`` in
``torch/_inductor/kernel/flex/flex_attention.py``, torch 2.11 and later) raises
``NotImplementedError("FLASH backend backward does not support differentiating through logsumexp
(dLSE)")`` whenever the backward graph receives a gradient for the lse, and AOTAutograd traces a
tangent for every differentiable output of a compiled function, used by the loss or not: an lse
returned undetached is the ``LoweringException: NotImplementedError`` of torch 2.11 (the
probe's last lines, ``tools/gpu/fa4_probe.py``, check it). The same lowering refuses a
deterministic backward with a block mask below sm100 (``deterministic`` is not declared here).

Why ``flex_fa4`` divides its lse by ln 2 on torch < 2.13 (:func:`natural_lse_from_flex_flash`):
FA4 writes the natural-log lse (the FLASH template passes ``lse=LOGSUMEXP`` to
``_flash_attn_fwd``), but ``flex_attention``'s ``_finalize_outputs`` in torch 2.11.0, 2.12.0 and
2.12.1 (``torch/nn/attention/flex_attention.py``, 2.11.0 line 1668: ``lse_scaled = lse * ln2``)
multiplies every backend's lse by ln 2, as if it were the Triton kernels' log2 lse: the returned
lse is ln 2 x the true one (pytorch/pytorch#181645, "returns lse off by factor ln(2)"; fixed by
pytorch/pytorch#181824, first released in 2.13.0, whose ``_finalize_outputs`` has
``stats_are_log2=kernel_options["BACKEND"] != "FLASH"``). That is a units bug in torch's wrapper,
not in what FA4 computed: out and the gradients (its backward gets the kernel's own lse) pass,
and ``fa4`` itself passes the lse on the same cases. So on those torches the backend undoes the
factor and grades the lse FA4 computed; the probe prints the raw ratio (0.693 there, 1.000 after).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import types

import torch

from ..settings import current as current_settings
from .base import Backend, Capabilities, Prepared, Unsupported, exception_chain, register
from .fa4 import fa4_availability, fa4_refusal
from .flex_mods import mask_mod_for, score_mod_for

RECOMPILE_LIMIT = 4096
FLASH_LSE_FIXED_IN = (2, 13)  # pytorch/pytorch#181824; 2.11.0-2.12.1 scale it by ln 2


def flash_lse_scaled_by_ln2(torch_version: str) -> bool:
    """Does this torch's ``flex_attention`` return ln 2 x the FLASH backend's (natural-log) lse:
    a release older than :data:`FLASH_LSE_FIXED_IN` (pytorch/pytorch#181645)?"""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", str(torch_version)).groups())
    return (major, minor) < FLASH_LSE_FIXED_IN


TORCH_SCALES_FLASH_LSE = flash_lse_scaled_by_ln2(torch.__version__)


def natural_lse_from_flex_flash(lse, kernel_options, scaled: bool = TORCH_SCALES_FLASH_LSE):
    """The natural-log lse of a ``flex_attention`` call: the FLASH backend's lse divided by ln 2
    on the torches that multiplied it by ln 2 (``scaled``), unchanged otherwise."""
    if scaled and kernel_options and kernel_options.get("BACKEND") == "FLASH":
        return lse / math.log(2.0)
    return lse


def flex_api():
    """``torch.nn.attention.flex_attention`` (None on torches without it)."""
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError:
        return None
    return fa


def raise_recompile_limit() -> None:
    """Every case compiles anew: raise dynamo's recompile limit, and fail loudly when it is hit
    (never fall back to the eager, score-materialising flex silently)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        cfg.fail_on_recompile_limit_hit = True
    cfg.specialize_float = True  # floats stay constants (see the module docstring)


def flex_call(differentiable_lse: bool = False):
    """``attend(q, k, v, score_mod, block_mask, scale, enable_gqa, kernel_options, want_lse)``
    -> ``(out, lse or None)``: ``flex_attention`` with the lse through ``AuxRequest`` (or
    ``return_lse`` on older torches), detached unless ``differentiable_lse`` (the two-pass
    piecewise merge differentiates through it; the Triton flex backward supports that)."""
    fa = flex_api()
    has_aux = "return_aux" in inspect.signature(fa.flex_attention).parameters

    def attend(q, k, v, score_mod, block_mask, scale, enable_gqa, kernel_options, want_lse):
        kw = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
        if kernel_options:
            kw["kernel_options"] = kernel_options
        if not want_lse:
            return fa.flex_attention(q, k, v, **kw), None
        if has_aux:
            out, aux = fa.flex_attention(q, k, v, return_aux=fa.AuxRequest(lse=True), **kw)
            lse = aux.lse
        else:
            out, lse = fa.flex_attention(q, k, v, return_lse=True, **kw)
        lse = natural_lse_from_flex_flash(lse, kernel_options)
        return out, lse if differentiable_lse else lse.detach()

    return attend


@functools.cache
def compiled_flex(differentiable_lse: bool = False, dynamic: bool | None = False):
    """The one compiled :func:`flex_call` per setting; ``dynamic=False``: one graph per case
    shape, ``None``: dynamo's automatic dynamic shapes (see the module docstring).

    The timer replays one backward with ``retain_graph=True`` (attnbench.run.timing); AOTAutograd's
    donated buffers forbid that (on the H200, piecewise_flex's bwd rows errored with "compiled
    with non-empty donated buffers"), so donation is off for the compiled flex graphs.

    Each setting compiles its own copy of the code: dynamo keeps one cache and one record of the
    sizes seen (what automatic dynamic shapes decide from) per code object, and a fixed-shape
    compile of shared code between two calls (flex_fa4 runs after flex in every case of a sweep)
    made every ``flex`` case compile again (the H200 sweep of 2026-12-02: 79 compiles for 41
    cases)."""
    raise_recompile_limit()
    import torch._functorch.config as functorch_cfg

    functorch_cfg.donated_buffer = False
    fn = flex_call(differentiable_lse)
    name = f"attend_{'lse' if differentiable_lse else 'nolse'}_{dynamic}"
    fn = types.FunctionType(
        fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__, fn.__closure__
    )
    return torch.compile(fn, dynamic=dynamic, fullgraph=True)


def divisible_option(q: torch.Tensor, k: torch.Tensor) -> dict | None:
    """``{"IS_DIVISIBLE": ...}`` for Inductor's CUDA flex kernels under dynamic shapes: what it
    decides itself from fixed lengths (both multiples of 128), stated so that a graph with
    symbolic lengths keeps it (and is guarded on it); fixed-shape graphs get no option, as
    before. None on CPU, whose lowering takes no such option."""
    if q.device.type != "cuda":
        return None
    return {"IS_DIVISIBLE": q.shape[-2] % 128 == 0 and k.shape[-2] % 128 == 0}


def flex_limits(case, device, mode) -> str | None:
    """What FlexAttention cannot run, whatever the problem: a CPU backward, head dims < 16."""
    if device == "cpu" and mode != "fwd":
        return "unsupported: FlexAttention has no backward on CPU"
    if case.head_dim < 16:
        return f"unsupported: head dim {case.head_dim} < 16 (FlexAttention needs >= 16)"
    return None


def to_flex_layout(x: torch.Tensor, varlen: bool) -> torch.Tensor:
    """(B, S, H, D) -> (B, H, S, D); varlen (T, H, D) -> (1, H, T, D); contiguous."""
    x = x[None] if varlen else x
    return x.transpose(1, 2).contiguous()


def from_flex_layout(x: torch.Tensor, varlen: bool) -> torch.Tensor:
    x = x.transpose(1, 2)
    return x[0] if varlen else x


class Flex(Backend):
    def __init__(self, flash: bool):
        self.flash = flash
        self.name = "flex_fa4" if flash else "flex"
        self.kernel_options = {"BACKEND": "FLASH"} if flash else None
        self.description = "FlexAttention, torch.compile" + (
            ', kernel_options={"BACKEND": "FLASH"} (FlashAttention-4 kernels)'
            if flash
            else " (Triton kernels)"
        )
        self.caps = Capabilities(
            devices={"cuda"} if flash else {"cuda", "cpu"},
            dtypes={"fp16", "bf16"} if flash else {"fp16", "bf16", "fp32"},
            max_head_dim=256,
            varlen=True,
            backward=True,
            lse=True,
            window=True,
            softcap=True,
            alibi=True,
        )
        self._mask_key = None
        self._mask = None

    def availability(self, device):
        if flex_api() is None:
            return f"torch {torch.__version__} has no FlexAttention"
        return fa4_availability(device) if self.flash else None

    def extra_check(self, case, device, mode):
        return flex_limits(case, device, mode)

    def refusal(self, e):
        if self.flash and (why := fa4_refusal(e)):  # FA4's own input checks, e.g. its sm90
            return why  # head-dim-256 tile (80 keys) not dividing the block mask's 128
        for err in exception_chain(e):
            text = str(err)
            if isinstance(err, NotImplementedError) or any(
                w in text for w in ("NotImplementedError", "BACKEND='FLASH'")
            ):
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                text = lines[0] if lines else type(err).__name__
                return f"unsupported: FlexAttention{' FLASH' if self.flash else ''}: {text[:300]}"
        return None

    def block_mask(self, case, inp):
        """Built once per case (the runner prepares a case several times)."""
        key = (case, str(inp.q.device))
        if key != self._mask_key:
            self._mask_key, self._mask = key, None  # drop the last case's mask first
            dev = inp.q.device
            mm = mask_mod_for(case, dev, inp.cu_seqlens_q, inp.cu_seqlens_k)
            if mm is not None:
                sq, sk = (
                    (inp.q.shape[0], inp.k.shape[0])
                    if case.varlen
                    else (case.seqlen_q, case.seqlen_k)
                )
                self._mask = flex_api().create_block_mask(mm, None, None, sq, sk, device=dev)
        return self._mask

    def prepare(self, inp, case):
        dev = inp.q.device
        leaves = tuple(
            to_flex_layout(t, case.varlen).requires_grad_() for t in (inp.q, inp.k, inp.v)
        )
        args = dict(
            block_mask=self.block_mask(case, inp),
            score_mod=score_mod_for(
                case, inp.alibi_slopes, inp.cu_seqlens_q, inp.cu_seqlens_k, dev
            ),
            want_lse=dev.type != "cpu",
            varlen=case.varlen,
        )
        return Prepared(leaves, args)

    def forward(self, p, case):
        if flex_api() is None:
            raise Unsupported(self.availability("cuda"))
        a = p.args
        leaves = p.leaves
        if not a["want_lse"]:  # CPU: inference only (inputs that require grad are refused)
            leaves = tuple(t.detach() for t in leaves)
        dynamic = self.dynamic(leaves[0])
        options = self.kernel_options
        if dynamic is None:  # symbolic lengths: state what fixed ones let Inductor decide
            options = divisible_option(leaves[0], leaves[1])
        out, lse = compiled_flex(dynamic=dynamic)(
            *leaves,
            a["score_mod"],
            a["block_mask"],
            case.scale,
            case.gqa,
            options,
            a["want_lse"],
        )
        if lse is not None and case.varlen:
            lse = lse[0]  # (1, H, T) -> the reference's (H, total_q)
        return from_flex_layout(out, case.varlen), lse

    def dynamic(self, q: torch.Tensor) -> bool | None:
        """False (fixed shapes) unless the run's ``flex_dynamic`` setting (``ATTNBENCH_FLEX_DYNAMIC=1``,
        recorded in the row's ``settings``), which gives None (automatic
        dynamic shapes) to Inductor's CUDA kernels only: FA4's lowering takes no symbolic shapes,
        and torch 2.13's C++ flex template failed to compile a symbolic-length graph on the CPU
        (``cur_qSplitSize0`` not declared)."""
        if self.flash or q.device.type != "cuda":
            return False
        return None if current_settings().flex_dynamic else False

    def grads(self, p):
        return tuple(from_flex_layout(t.grad, p.args["varlen"]) for t in p.leaves)


register(Flex(flash=False))
register(Flex(flash=True))
