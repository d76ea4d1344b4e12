"""The decode kernel's split plan is kept tuning: one choice per shape class, the kept one
(file or shipped) first, timed only while tuning is on and only on a GPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from attnbench.kernels.decode import tuning as dt  # noqa: E402


def _problem(b=2, hq=4, hkv=2, q_len=1, d=16, cache=40):
    q = torch.randn(b, q_len, hq, d, dtype=torch.float16)
    k = torch.randn(b, cache, hkv, d, dtype=torch.float16)
    return q, k, k.clone(), torch.full((b,), cache, dtype=torch.int32)


def test_shape_key_classes_lengths_and_batches():
    q, k, _, _ = _problem()
    assert dt.shape_key(q, k, 40, 0) == dt.shape_key(q, k, 200, 0)  # one 256 bucket
    assert dt.shape_key(q, k, 40, 0) != dt.shape_key(q, k, 40, 16)  # page size matters
    assert dt.shape_key(q, k, 40_000, 0)[5] == 65536  # long caches keep their own buckets


def test_cpu_takes_the_heuristic_without_timing(monkeypatch):
    dt._memo.clear()
    monkeypatch.setattr(dt.tuning, "choose", lambda *a, **k: pytest.fail("timed on the CPU"))
    q, k, v, lens = _problem()
    cfg = dt.tuned_config(q, k, v, lens, max_cache_len=40)
    assert cfg == dt.choose_config(2, 2, 40, 2, 16, dt.num_sms(q.device))


def test_a_kept_choice_round_trips_through_triton_configs():
    cfg = dt.DecodeConfig(8, 32, 8, 3, 512)
    assert dt._as_decode(dt._as_triton(cfg)) == cfg
