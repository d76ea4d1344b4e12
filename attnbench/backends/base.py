"""Backend interface and the one registry.

Adding a backend is one small file plus one import line in ``attnbench/backends/__init__.py``::

    from .base import Backend, Capabilities, register

    @register
    class MyAttention(Backend):
        name = "my_attn"
        description = "my Triton kernel"
        caps = Capabilities(devices={"cuda"}, dtypes={"fp16", "bf16"}, head_dims={64, 128}, lse=True)

        def availability(self, device):      # None when usable, else the reason
            return None if has_my_kernel() else "my_kernel not importable"

        def forward(self, p, case):          # p.args from prepare(); return (out, lse or None)
            q, k, v = p.leaves
            return my_kernel(q, k, v, causal=case.causal, softmax_scale=case.scale)

A backend the distributed strategies can use as their local kernel declares ``block=True`` and
implements :meth:`Backend.block_forward` (``block_backward=True``: also
:meth:`Backend.block_backward`; without it the strategies recompute the block gradients in fp32).

The runner asks :meth:`Backend.why_unsupported` before anything runs, so cases outside the
declared capabilities become ``unsupported`` rows with the reason. A backend that finds out at
run time that it cannot run a case raises :class:`Unsupported`; one whose library refuses a case
(an exception from inside it, forward or backward) names it in :meth:`Backend.refusal`.

A lossy backend (``Capabilities(precision="fp8")``, ...) whose :meth:`Backend.prepare` quantizes
the inputs returns that quantization from :meth:`Backend.quant_fn`: perf times it apart from the
attention (the row's ``quant_ms``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..problems import problem_of
from ..problems.base import Case


class Unsupported(Exception):
    """Raised by a backend that cannot run a case; the message is the reason."""


@dataclass(frozen=True)
class Capabilities:
    problem: str = "attention"  # the problem served (attnbench.problems.PROBLEMS)
    devices: frozenset[str] = frozenset({"cuda"})
    dtypes: frozenset[str] = frozenset({"fp16", "bf16", "fp32"})
    head_dims: frozenset[int] | None = None  # None: any head dim up to max_head_dim
    max_head_dim: int = 256
    causal: bool = True
    gqa: bool = True
    seqlen_q_ne_k: bool = True  # seqlen_q != seqlen_k (with bottom-right causal)
    varlen: bool = False
    backward: bool = True
    lse: bool = False
    window: bool = False
    softcap: bool = False
    alibi: bool = False
    deterministic: bool = False
    block: bool = False  # block_forward: (out, lse) of one block, no autograd (distributed)
    block_backward: bool = False  # block_backward from a given out/lse (else fp32 recomputation)
    cuda_graph: bool = True  # its forward may be captured in a CUDA graph (--cuda-graph)
    # capabilities of other problems, by name (e.g. "paged"): what their ``needs`` ask for
    features: frozenset[str] = frozenset()
    # "exact": graded by flash-attention's rule (k x same-dtype torch's error); a lossy precision
    # ("fp8", "int8", ...: operands quantized on purpose) is graded by cosine similarity and
    # relative L1 tolerances instead (attnbench.rule), and its rows say so
    precision: str = "exact"

    def __post_init__(self):
        if not isinstance(self.precision, str) or not self.precision.strip():
            raise ValueError(
                f"precision must be 'exact' or a lossy precision name, not {self.precision!r}"
            )
        for name in ("devices", "dtypes", "head_dims", "features"):
            val = getattr(self, name)
            if val is not None and not isinstance(val, frozenset):
                object.__setattr__(self, name, frozenset(val))

    def supports(self, capability: str) -> bool:
        """A boolean field of these capabilities, or a name in ``features``."""
        return capability in self.features or bool(getattr(self, capability, False))


@dataclass
class Prepared:
    """What a backend's forward consumes. ``leaves`` are the tensors gradients are taken
    against (they may be packed, e.g. one qkv tensor); ``args`` holds anything else."""

    leaves: tuple[torch.Tensor, ...]
    args: dict[str, Any] = field(default_factory=dict)


class Backend:
    name: str = ""
    description: str = ""
    caps: Capabilities = Capabilities()

    # ---- capability checks ---------------------------------------------------------------
    def availability(self, device: str) -> str | None:
        """None when the backend can run on this device type, else why not."""
        return None

    def why_unsupported(self, case: Case, device: str, mode: str = "fwd") -> str | None:
        """The reason this backend cannot run ``case`` on ``device`` (None: it can)."""
        c = self.caps
        if case.problem != c.problem:
            return f"unsupported: {self.name} serves problem {c.problem}, not {case.problem}"
        dev = torch.device(device).type
        if dev not in c.devices:
            return f"{self.name} does not run on {dev} (runs on: {', '.join(sorted(c.devices))})"
        why = self.availability(dev)
        if why:
            return why
        if case.dtype not in c.dtypes:
            return f"unsupported: dtype {case.dtype} (supports {', '.join(sorted(c.dtypes))})"
        if case.head_dim > c.max_head_dim or (
            c.head_dims is not None and case.head_dim not in c.head_dims
        ):
            if c.head_dims is not None:
                has = ", ".join(map(str, sorted(c.head_dims)))
                return f"unsupported: head dim {case.head_dim} not compiled (has {has})"
            return f"unsupported: head dim {case.head_dim} > {c.max_head_dim}"
        for cap, what in problem_of(case).needs(case, mode):
            if not c.supports(cap):
                return f"unsupported: {what}"
        return self.extra_check(case, dev, mode)

    def extra_check(self, case: Case, device: str, mode: str) -> str | None:
        """Hook for constraints the capability fields cannot express."""
        return None

    # ---- running -------------------------------------------------------------------------
    def prepare(self, inp, case: Case) -> Prepared:
        """Outside the timed region: layout changes, packing. Default: fresh leaves of the
        problem's differentiable inputs (q, k, v for attention)."""
        leaves = tuple(t.detach().clone().requires_grad_() for t in inp.differentiable)
        return Prepared(leaves, {"inputs": inp})

    def forward(self, p: Prepared, case: Case) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Timed. Returns ``(out, lse)`` in attnbench layout; ``lse`` None if not returned."""
        raise NotImplementedError

    def quant_fn(self, p: Prepared, case: Case) -> Callable[[], object] | None:
        """The quantization of a lossy backend whose :meth:`prepare` quantizes the inputs (fp8 or
        int8 operands, their scales), as a callable that does it again from the inputs ``p``
        holds; None (the default): nothing to time. ``attnbench perf`` times it with the same
        timer and settings as the attention and reports its median apart, as the row's
        ``quant_ms`` (FlashAttention-3 style: the attention's time is the kernel on quantized
        operands; the quantization is a separate number, never folded into ``latency_ms``)."""
        return None

    def grads(self, p: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The problem's gradients (dq, dk, dv for attention) in attnbench layout, unpacked
        from the leaves' gradients."""
        return tuple(t.grad for t in p.leaves)

    # ---- block API (the local kernel of the distributed strategies) -------------------------
    def why_block_unsupported(self, case: Case, device: str) -> str | None:
        """Why the block API cannot run the blocks of ``case`` (causal ones and, for the
        off-diagonal blocks of a causal ring, non-causal ones); None: it can."""
        if not self.caps.block:
            return f"{self.name} has no block API (caps.block is False)"
        for causal in dict.fromkeys((case.causal, False)):
            why = self.why_unsupported(replace(case, causal=causal), device, "fwd")
            if why:
                return f"{self.name}: {why}"
        return None

    def block_forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block, no autograd: ``(out, lse)`` for q (B, Sq, Hq, D), k, v (B, Sk, Hkv, D);
        out in the input dtype, lse fp32 (B, Hq, Sq). Causal blocks are square."""
        raise NotImplementedError(f"{self.name} has no block forward")

    def block_backward(
        self, dout, q, k, v, out, lse, causal: bool, softmax_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv) of one block given the *global* ``out`` and ``lse`` of its query rows:
        P = exp(scale q k^T - lse), delta = rowsum(dout * out)."""
        raise NotImplementedError(f"{self.name} has no block backward")

    def kernel_config(self, p: Prepared, case: Case, mode: str) -> str | None:
        """What this backend actually ran for ``mode`` where it chooses among kernels or tiles
        (e.g. the Triton config its autotuner picked), asked after timing; None: no choice."""
        return None

    def build_flags(self) -> str | None:
        """Compiler flags for backends built on first use (shown by ``attnbench env``)."""
        return None

    def refusal(self, e: BaseException) -> str | None:
        """The ``unsupported`` reason when ``e`` (raised by a call of this backend, forward or
        backward) is its library refusing the case at run time, e.g. an input check the
        capabilities cannot foresee on this GPU; None: a real error."""
        return None


def exception_chain(e: BaseException):
    """``e`` and the exceptions it wraps (``__cause__``/``__context__``), outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


REGISTRY: dict[str, Backend] = {}


def register(obj):
    """Register a Backend subclass (instantiated with no arguments) or instance."""
    inst = obj() if isinstance(obj, type) else obj
    if not inst.name:
        raise ValueError(f"{obj!r} has no name")
    if inst.name in REGISTRY:
        raise ValueError(f"backend {inst.name!r} registered twice")
    REGISTRY[inst.name] = inst
    return obj


def get_backends(only: list[str] | None = None, skip: list[str] | None = None) -> list[Backend]:
    """Backends selected by --only/--skip, in registry order; unknown names raise KeyError."""
    for name in (only or []) + (skip or []):
        if name not in REGISTRY:
            raise KeyError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}")
    names = only if only else list(REGISTRY)
    return [REGISTRY[n] for n in names if n not in (skip or [])]
