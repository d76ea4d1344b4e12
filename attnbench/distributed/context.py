"""The run context every rank of one ``attnbench dist`` launch shares: the process groups, the
agreements between ranks (one all-reduce, one gather) and rank 0's result rows.

Every rank walks the same cases, local backends and strategies in the same order. Setup checks
are deterministic, so every rank skips the same combinations; per-rank failures (an OOM on one
GPU) are agreed on with one all-reduce before any collective of the strategy starts. Rank 0
gathers the per-rank numbers, prints them in rank order and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..problems.base import Case
from ..run.runner import RunContext
from .comm import DistEnv, Watchdog
from .config import DistConfig, Selection
from .local import LocalKernel
from .strategy import DistSetupError, Groups, Layout, check_setup, make_groups

BAD = ("error", "oom", "accuracy_failed")


@dataclass
class DistRun:
    env: DistEnv
    cfg: DistConfig
    sel: Selection
    wd: Watchdog
    ctx: RunContext | None  # rank 0 only
    _groups: dict = field(default_factory=dict)

    @property
    def rank0(self) -> bool:
        return self.env.rank == 0

    @property
    def world(self) -> int:
        return self.env.world_size

    @property
    def device_type(self) -> str:
        return self.env.device.split(":")[0]

    def print(self, *lines: str) -> None:
        if self.ctx is not None:
            for line in lines:
                self.ctx.console.print(line, highlight=False)

    def layout(self, strategy: str) -> Layout:
        u = self.cfg.ulysses_size if strategy.startswith("hybrid") else 1
        return Layout(strategy, self.world, u)

    def groups(self, layout: Layout) -> Groups:
        if layout not in self._groups:
            with self.wd.phase(f"creating the process groups of {layout.strategy}"):
                self._groups[layout] = make_groups(layout, self.env)
        return self._groups[layout]

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (one all-reduce)."""
        t = torch.tensor([int(ok)], device=self.env.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj):
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def row(self, case: Case, backend: str, mode: str, strategy: str, world: int, rank, **kw):
        """A result row on rank 0; None elsewhere (only rank 0 writes)."""
        if self.ctx is None:
            return None
        return self.ctx.row(
            case, backend, mode, strategy=strategy, world_size=world, rank=rank, **kw
        )

    def emit(self, rows: list[dict]) -> None:
        if self.ctx is not None and rows:
            self.ctx.emit([r for r in rows if r is not None])

    def setup(self, strategy: str, case: Case, kernel: LocalKernel, modes: list[str], label: str):
        """(layout, groups), or None after emitting ``unsupported`` rows for ``modes`` (the same
        decision on every rank)."""
        layout = self.layout(strategy)
        try:
            check_setup(layout, case, kernel, self.device_type)
        except DistSetupError as e:
            why = f"unsupported: {e}"
            self.emit(
                [
                    self.row(
                        case,
                        kernel.name,
                        m,
                        strategy,
                        self.world,
                        None,
                        status="unsupported",
                        message=why,
                    )
                    for m in modes
                ]
            )
            self.print(f"[dim]{label}: {why}[/]")
            return None
        return layout, self.groups(layout)
