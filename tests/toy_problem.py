"""A small problem of its own, registered from outside attnbench: row softmax with a
temperature. It is the worked example of docs/extending.md, and tests/test_extending.py runs it
through every command on the CPU. Everything a problem needs is in this one file (a real problem
is a package of the same pieces: case.py, inputs.py, reference.py, grid.py, __init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from attnbench.backends.base import Backend, Capabilities
from attnbench.problems.base import (
    BWD_FLOP_FACTOR,
    BaseGrid,
    Case,
    ConfigBase,
    CpuVariantBase,
    Problem,
    seeded_randn,
)


# 1. the case: the shared fields, then the problem's own
@dataclass(frozen=True)
class SoftmaxCase(Case):
    problem: ClassVar[str] = "toy_softmax"
    batch: int
    heads_q: int
    heads_kv: int
    seqlen_q: int
    head_dim: int  # unused by the math; every problem has it
    dtype: str = "fp32"
    softmax_scale: float | None = None
    temperature: float = 1.0

    @property
    def id(self) -> str:
        return (
            f"B{self.batch}-{self.heads_id()}-S{self.seqlen_q}-{self.dtype}-t{self.temperature:g}"
        )

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ValueError(f"{self.id}: temperature must be > 0")


# 2. inputs: seeded, with .differentiable and .dout
@dataclass
class SoftmaxInputs:
    x: torch.Tensor  # (B, H, S)
    dout: torch.Tensor

    @property
    def differentiable(self):
        return (self.x,)


def make_inputs(case: SoftmaxCase, device="cpu", seed: int = 0) -> SoftmaxInputs:
    randn = seeded_randn(case, device, seed)
    shape = (case.batch, case.heads_q, case.seqlen_q)
    return SoftmaxInputs(randn(*shape), randn(*shape))


# 3. the one reference: out, lse and the gradient, upcast (truth) or in the input dtype
@dataclass
class SoftmaxRef:
    out: torch.Tensor
    lse: torch.Tensor
    dx: torch.Tensor | None = None


def softmax_ref(x, case: SoftmaxCase):
    s = x * (case.scale / case.temperature)
    return torch.softmax(s, dim=-1), torch.logsumexp(s.float(), dim=-1)


def reference(inp, case, *, upcast=True, grads=True):
    dtype = torch.float64 if upcast else inp.x.dtype
    x = inp.x.detach().to(dtype).requires_grad_(grads)
    with torch.enable_grad():
        out, lse = softmax_ref(x, case)
        dx = torch.autograd.grad(out, x, inp.dout.to(dtype))[0] if grads else None
    return SoftmaxRef(out.detach(), lse.detach(), dx)


# 4. FLOPs and bytes
def flops(case: SoftmaxCase, mode: str) -> float:
    return 5.0 * case.batch * case.heads_q * case.seqlen_q * BWD_FLOP_FACTOR[mode]


def nbytes(case: SoftmaxCase, mode: str) -> float:
    n = case.batch * case.heads_q * case.seqlen_q * case.torch_dtype.itemsize
    return {"fwd": 2 * n, "bwd": 3 * n, "fwd_bwd": 5 * n}[mode]


# 5. the config grid (YAML `problem: toy_softmax`)
class SoftmaxGrid(BaseGrid):
    case_type: ClassVar[type] = SoftmaxCase
    seqlen_q: int | list[int]
    temperature: float | list[float] = 1.0


class SoftmaxCpu(CpuVariantBase):
    cases: list[SoftmaxGrid] = Field(min_length=1)


class SoftmaxConfig(ConfigBase):
    problem: Literal["toy_softmax"] = "toy_softmax"
    cases: list[SoftmaxGrid] = Field(min_length=1)
    cpu: SoftmaxCpu | None = None


# 6. the problem record: what the runner, the rule and the views need
TOY = Problem(
    name="toy_softmax",
    description="row softmax with a temperature (the docs/extending.md example)",
    case_type=SoftmaxCase,
    config=SoftmaxConfig,
    grads=("dx",),
    make_inputs=make_inputs,
    reference=reference,
    flops=flops,
    bytes=nbytes,
    needs=lambda case, mode: [("backward", "backward")] if mode != "fwd" else [],
)


# 7. a backend for it
class TorchSoftmax(Backend):
    name = "toy_softmax_torch"
    description = "torch.softmax in the input dtype"
    caps = Capabilities(problem="toy_softmax", devices={"cpu", "cuda"}, lse=True)

    def forward(self, p, case):
        (x,) = p.leaves
        return softmax_ref(x, case)
