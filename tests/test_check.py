"""The accuracy rule's edges: the lse of rows with no visible key, NaN, finite garbage."""

import math

import pytest
import torch

from attnbench.backends.base import Backend, Capabilities
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import attention_ref, case_kwargs
from attnbench.run.check import abs_error, check_backend, make_truth

# causal with seqlen_q > seqlen_k: query rows 0..6 see no key (bottom-right alignment)
CASE = Case(
    batch=2, heads_q=2, heads_kv=2, seqlen_q=12, seqlen_k=5, head_dim=16, dtype="fp32", causal=True
)
EMPTY_ROWS = 7


class EmptyRowLse(Backend):
    """Same-dtype torch with the lse (and optionally out) of the empty rows overwritten."""

    caps = Capabilities(devices={"cpu"}, lse=True)

    def __init__(self, name: str, lse_fill: float, out_fill: float = 0.0):
        self.name, self.lse_fill, self.out_fill = name, lse_fill, out_fill

    def forward(self, p, case):
        q, k, v = p.leaves
        out, lse = attention_ref(q, k, v, upcast=False, **case_kwargs(case))
        row = torch.arange(case.seqlen_q) < EMPTY_ROWS
        lse = lse.masked_fill(row, self.lse_fill)
        out = out + (row[None, :, None, None] * self.out_fill)
        return out, lse


@pytest.fixture(scope="module")
def truth():
    inp = make_inputs(CASE, "cpu", seed=0)
    return inp, make_truth(inp, CASE)


def grade(backend, truth):
    inp, t = truth
    return {e.tensor: e for e in check_backend(backend, CASE, inp, t)}


def test_reference_marks_empty_rows_with_inf(truth):
    _, t = truth
    empty = torch.isinf(t.ref.lse)
    assert empty[..., :EMPTY_ROWS].all() and not empty[..., EMPTY_ROWS:].any()
    assert (t.ref.out[:, :EMPTY_ROWS] == 0).all()


@pytest.mark.parametrize("fill", [-math.inf, math.inf], ids=["minus-inf", "plus-inf"])
def test_empty_row_lse_of_either_infinity_passes(truth, fill):
    errs = grade(EmptyRowLse("inf", fill), truth)
    assert errs["lse"].accuracy_ok and math.isfinite(errs["lse"].max_abs_err)
    assert all(e.accuracy_ok for e in errs.values())


@pytest.mark.parametrize("fill", [0.0, -30.0, math.nan], ids=["zero", "finite-garbage", "nan"])
def test_empty_row_lse_finite_or_nan_fails(truth, fill):
    errs = grade(EmptyRowLse("bad", fill), truth)
    assert not errs["lse"].accuracy_ok
    assert errs["out"].accuracy_ok  # only the lse is wrong


def test_empty_row_out_must_still_be_zero(truth):
    errs = grade(EmptyRowLse("out", -math.inf, out_fill=0.5), truth)
    assert errs["lse"].accuracy_ok and not errs["out"].accuracy_ok


def test_abs_error_inf_only_where_the_reference_is_inf():
    ref = torch.tensor([math.inf, 1.0, 2.0])
    assert abs_error(torch.tensor([-math.inf, 1.0, 2.0]), ref) == (0.0, 0.0)
    assert abs_error(torch.tensor([math.inf, 1.0, 2.5]), ref)[0] == 0.5
    assert abs_error(torch.tensor([math.inf, math.inf, 2.0]), ref)[0] == math.inf
    assert math.isnan(abs_error(torch.tensor([math.nan, 1.0, 2.0]), ref)[0])
