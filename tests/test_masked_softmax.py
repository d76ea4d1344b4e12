"""The one masked softmax both references share (attention's ``softmax_rows``, decode's
``sequence_attention``): its empty-row convention and its lse dtype."""

from __future__ import annotations

import math

import torch

from attnbench.problems.attention.reference import masked_softmax


def test_rows_without_a_visible_key_give_p_0_and_lse_inf():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) > 0.4
    mask[1] = False
    mask[2, 3] = True
    p, lse = masked_softmax(s, mask)
    assert p.dtype == torch.float64 and lse.dtype == torch.float32
    assert (p[..., 1, :] == 0).all() and torch.isposinf(lse[..., 1]).all()
    seen = [r for r in range(5) if mask[r].any()]
    assert torch.allclose(p[..., seen, :].sum(-1), torch.ones(()).double())
    assert (p.masked_select(~mask.expand_as(p)) == 0).all()
    ref = torch.logsumexp(s.masked_fill(~mask, -math.inf), -1)[..., seen]
    assert torch.equal(lse[..., seen], ref.float())


def test_lse_dtype_keeps_fp64_and_no_mask_is_plain_softmax():
    s = torch.randn(4, 3, 9, dtype=torch.float64)
    p, lse = masked_softmax(s, None, torch.float64)
    assert lse.dtype == torch.float64
    assert torch.equal(p, torch.softmax(s, -1)) and torch.equal(lse, torch.logsumexp(s, -1))
