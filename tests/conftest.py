import os

import pytest
import torch

# CPU runs execute the Triton kernels through the interpreter (fp16/fp32 only in triton 3.6).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
