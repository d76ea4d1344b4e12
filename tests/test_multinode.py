"""``attnbench dist`` launched as two nodes on 127.0.0.1 (one process each, torchrun's c10d
rendezvous), the way a multi-node job starts it: so multi-node launching keeps working."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SUITE = """
name: two_nodes
strategies: [ring, ulysses]
world_sizes: [2]
ulysses_size: 2
local_backends: [naive]
modes: [fwd_bwd]
per_rank_seqlen: true
timeout_s: 60
cases:
  - {batch: 1, seqlen: 32, heads_q: 2, head_dim: 16, dtype: fp32, causal: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dist_accuracy_as_two_nodes_on_localhost(tmp_path):
    suite = tmp_path / "two_nodes.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "res"
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "attnbench-test",
                "--max_restarts",
                "0",
                "-m",
                "attnbench",
                "dist",
                "accuracy",
                "--suite",
                str(suite),
                "--device",
                "cpu",
                "--out",
                str(out),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outputs)
    df = pd.read_parquet(out)
    assert set(df.world_size.dropna()) == {2} and set(df["rank"].dropna()) == {0, 1}
    ok = df[df.status == "ok"]
    assert set(ok.strategy) == {"ring", "ulysses"} and ok.accuracy_ok.all()
