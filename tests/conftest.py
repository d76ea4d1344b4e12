import os

import pytest
import torch

# CPU runs execute the Triton kernels through the interpreter (fp16/fp32 only in triton 3.6).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # GPU tests check correctness with each kernel's first config (autotuning the piecewise and
    # triton_fa2 kernels costs minutes of compiles; perf runs tune and grade what they time).
    # Set these to 1 to run the tests through the autotuner instead.
    os.environ.setdefault("ATTNBENCH_PIECEWISE_TUNE", "0")
    os.environ.setdefault("ATTNBENCH_TRITON_FA2_TUNE", "0")


@pytest.fixture
def tmp_backend():
    """Register a backend for one test and remove it afterwards."""
    from attnbench.backends.base import REGISTRY, register

    added = []

    def add(obj):
        register(obj)
        added.append(obj.name)
        return obj

    yield add
    for name in added:
        REGISTRY.pop(name, None)


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from attnbench.cli import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
