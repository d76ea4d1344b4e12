"""FlashAttention-4 and FlexAttention backends on the CPU: registration, declared capabilities,
"not installed" reasons, refusals as unsupported rows, FlexAttention's masks and score mods
against the reference, and compiled FlexAttention forward on small shapes."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnbench.backends import REGISTRY, fa4, flex, flex_mods
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.inputs import make_inputs
from attnbench.problems.attention.reference import alibi_bias, visible_mask
from attnbench.run.check import check_backend, make_truth
from attnbench.run.runner import classify

HAS_FA4 = fa4.fa4_module() is not None
DENSE = Case(2, 4, 2, 96, 96, 64, "bf16", causal=True)


def test_registered_with_declared_capabilities():
    for name in ("fa4", "fa4_varlen", "flex", "flex_fa4"):
        assert name in REGISTRY
    f, fv = REGISTRY["fa4"].caps, REGISTRY["fa4_varlen"].caps
    assert f.lse and f.window and f.softcap and f.deterministic and f.gqa and f.backward
    assert not f.alibi and "fp32" not in f.dtypes and not f.varlen and fv.varlen
    fl = REGISTRY["flex"].caps
    assert fl.lse and fl.varlen and fl.window and fl.softcap and fl.alibi and "cpu" in fl.devices
    assert REGISTRY["flex_fa4"].caps.devices == {"cuda"}
    assert REGISTRY["fa4"].why_unsupported(Case(1, 2, 2, 64, 64, 64, "fp32"), "cuda") in (
        "unsupported: dtype fp32 (supports bf16, fp16)",
        fa4.fa4_availability("cuda"),
    )


@pytest.mark.skipif(HAS_FA4, reason="flash-attn-4 is installed here")
@pytest.mark.parametrize("name", ["fa4", "fa4_varlen", "flex_fa4"])
def test_not_installed_reason(name):
    assert REGISTRY[name].why_unsupported(DENSE, "cuda", "fwd") == "flash-attn-4 not installed"


def test_cpu_reasons():
    assert "runs on: cuda" in REGISTRY["fa4"].why_unsupported(DENSE, "cpu", "fwd")
    flex_be = REGISTRY["flex"]
    assert flex_be.why_unsupported(DENSE, "cpu", "fwd") is None
    assert flex_be.why_unsupported(DENSE, "cpu", "bwd") == (
        "unsupported: FlexAttention has no backward on CPU"
    )
    assert "head dim 8 < 16" in flex_be.why_unsupported(Case(1, 2, 2, 64, 64, 8), "cpu", "fwd")


def _raise_in(filename: str, exc: BaseException):
    code = compile("raise exc", filename, "exec")
    try:
        exec(code, {"exc": exc})
    except BaseException as e:
        return e


def test_library_refusals_become_unsupported_rows():
    be = REGISTRY["fa4"]
    refused = _raise_in(
        "/site/flash_attn/cute/interface.py", AssertionError("local not supported yet on 9.x")
    )
    assert classify(refused, be) == (
        "unsupported",
        "unsupported: flash_attn.cute refused: local not supported yet on 9.x",
    )
    # the same assert from elsewhere (attnbench, torch) is a real error
    assert classify(_raise_in("/work/attnbench/x.py", AssertionError("bug")), be)[0] == "error"
    assert classify(RuntimeError("CUDA error: an illegal memory access"), be)[0] == "error"
    # the compiler's refusal, wrapped the way dynamo/inductor wrap it
    lowering = RuntimeError("LoweringException: NotImplementedError: FLASH backend backward ...")
    lowering.__cause__ = NotImplementedError("FLASH backend backward does not support dLSE")
    status, msg = classify(lowering, REGISTRY["flex_fa4"])
    assert status == "unsupported" and msg.startswith("unsupported: FlexAttention FLASH: ")
    # FA4's own input check reached through FlexAttention's FLASH lowering (H200, head dim 256
    # with a causal block mask), but not through the Triton-kernel flex backend
    tile = _raise_in(
        "/site/flash_attn/cute/block_sparsity.py",
        ValueError("Block sparsity requires sparse_block_size[1] to be a multiple of tile_n=80."),
    )
    assert classify(tile, REGISTRY["flex_fa4"]) == (
        "unsupported",
        "unsupported: flash_attn.cute refused: Block sparsity requires sparse_block_size[1] "
        "to be a multiple of tile_n=80.",
    )
    assert classify(tile, REGISTRY["flex"])[0] == "error"


# ---- FlexAttention's mask_mod and score_mod against the reference --------------------------------
def _dense_mask(mod, sq, sk):
    q, kv = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
    return mod(0, 0, q, kv).expand(sq, sk)


@pytest.mark.parametrize(
    "sq,sk,causal,wl,wr",
    [(70, 70, True, -1, -1), (50, 131, True, -1, -1), (131, 50, True, -1, -1),
     (96, 96, False, 16, 0), (96, 80, False, 20, 7), (80, 96, True, 10, -1),
     (64, 64, False, 12, -1)],
    ids=lambda v: str(v),
)  # fmt: skip
def test_dense_mask_is_the_reference_mask(sq, sk, causal, wl, wr):
    case = Case(1, 1, 1, sq, sk, 16, causal=causal, window_left=wl, window_right=wr)
    mod = flex_mods.mask_mod_for(case, "cpu")
    assert torch.equal(_dense_mask(mod, sq, sk), visible_mask(sq, sk, causal, wl, wr))


def test_no_mask_when_every_key_is_visible():
    assert flex_mods.mask_mod_for(Case(1, 1, 1, 30, 50, 16), "cpu") is None


@pytest.mark.parametrize("causal,wl", [(False, -1), (True, -1), (True, 5)])
def test_varlen_document_mask_is_block_diagonal_reference(causal, wl):
    lq, lk = (1, 37, 20), (3, 37, 9)
    case = Case(3, 1, 1, 1, 1, 16, causal=causal, seqlens=lq, seqlens_k=lk, window_left=wl)
    inp = make_inputs(case, "cpu")
    mod = flex_mods.mask_mod_for(case, "cpu", inp.cu_seqlens_q, inp.cu_seqlens_k)
    want = torch.block_diag(
        *[
            visible_mask(a, b, causal, wl, -1)
            if (causal or wl >= 0)
            else torch.ones(a, b, dtype=torch.bool)
            for a, b in zip(lq, lk)
        ]
    )
    assert torch.equal(_dense_mask(mod, sum(lq), sum(lk)), want)


class IndexLog(TorchDispatchMode):
    """Records the index tensor of every gather (``t[idx]``) a mask/score mod makes."""

    def __init__(self):
        super().__init__()
        self.indices = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index.Tensor:
            self.indices += [i for i in args[1] if i is not None]
        return func(*args, **kwargs or {})


@pytest.mark.parametrize("mod", ["mask", "alibi"])
def test_varlen_mods_gather_int32_tables_by_q_and_kv_only(mod):
    # FLASH's CuTe code stores every gather index in an Int32 fragment: an index loaded from an
    # int64 table (offs[q_doc[q_idx]]) was "store Int64 ... to Tensor with element type Int32"
    case = Case(
        3, 2, 2, 1, 1, 16, causal=True, alibi=mod == "alibi", seqlens=(5, 9, 2), seqlens_k=(7, 9, 4)
    )
    inp = make_inputs(case, "cpu")
    cu = inp.cu_seqlens_q, inp.cu_seqlens_k
    assert all(t.dtype == torch.int32 for t in flex_mods.packed_positions(*cu, "cpu"))
    q, kv = torch.arange(16)[:, None], torch.arange(20)[None, :]
    if mod == "mask":
        fn = flex_mods.mask_mod_for(case, "cpu", *cu)
    else:
        score_mod = flex_mods.score_mod_for(case, torch.rand(2), *cu, "cpu")
        fn = lambda b, h, q, kv: score_mod(torch.zeros(()), b, h, q, kv)  # noqa: E731
    with IndexLog() as log:
        fn(0, 1, q, kv)
    assert log.indices and all(i is q or i is kv for i in log.indices if i.numel() > 1)


def test_varlen_alibi_is_the_reference_bias_per_sequence():
    lq, lk, h = (1, 37, 20), (3, 37, 9), 3
    case = Case(3, h, h, 1, 1, 16, causal=True, alibi=True, seqlens=lq, seqlens_k=lk)
    inp = make_inputs(case, "cpu")
    slopes = torch.rand(h)
    mod = flex_mods.score_mod_for(case, slopes, inp.cu_seqlens_q, inp.cu_seqlens_k, "cpu")
    q, kv = torch.arange(sum(lq))[None, :, None], torch.arange(sum(lk))[None, None, :]
    got = mod(torch.zeros(h, sum(lq), sum(lk)), 0, torch.arange(h)[:, None, None], q, kv)
    want = [alibi_bias(slopes, a, b)[0] for a, b in zip(lq, lk)]
    qs, ks = (0, *torch.tensor(lq).cumsum(0).tolist()), (0, *torch.tensor(lk).cumsum(0).tolist())
    for i, w in enumerate(want):
        assert torch.allclose(got[:, qs[i] : qs[i + 1], ks[i] : ks[i + 1]], w)


def test_score_mod_is_softcap_then_alibi():
    sq, sk, h = 9, 13, 4
    case = Case(1, h, h, sq, sk, 16, causal=True, softcap=5.0, alibi=True)
    slopes = torch.rand(h)
    mod = flex_mods.score_mod_for(case, slopes)
    s = torch.randn(1, h, sq, sk) * 10
    hi = torch.arange(h)[:, None, None]
    q, kv = torch.arange(sq)[None, :, None], torch.arange(sk)[None, None, :]
    want = 5.0 * torch.tanh(s / 5.0) + alibi_bias(slopes, sq, sk)
    assert torch.allclose(mod(s, 0, hi, q, kv), want)
    assert flex_mods.score_mod_for(Case(1, 1, 1, 8, 8, 16), None) is None


# ---- compiled FlexAttention on the CPU (forward; torch 2.13 compiles no backward there) ------------
@pytest.mark.parametrize(
    "case",
    [
        Case(2, 4, 2, 50, 131, 32, "fp32", causal=True, softcap=20.0, alibi=True),
        Case(3, 4, 4, 1, 1, 32, "fp32", causal=True, seqlens=(1, 37, 80), window_left=16),
    ],
    ids=lambda c: c.id,
)
def test_compiled_flex_forward_on_cpu(case):
    inp = make_inputs(case, "cpu")
    errs = check_backend(REGISTRY["flex"], case, inp, make_truth(inp, case, grads=False), False)
    assert [e.tensor for e in errs] == ["out"]  # no lse from FlexAttention on CPU
    assert errs[0].accuracy_ok and errs[0].max_abs_err > 0


def test_dynamic_flex_reuses_one_graph_across_lengths():
    # flex on CUDA compiles with automatic dynamic shapes: the seqlen sweep compiles once per
    # (dtype, head dim, mask), then once more with symbolic lengths, instead of once per case;
    # a fixed-shape compile in between (flex_fa4 after flex in every sweep case) must not undo it.
    # The mechanism, on the CPU (lengths of 2+ mask blocks of 128: dynamo specializes sizes 0, 1)
    from torch._dynamo.utils import counters

    fa = flex.flex_api()
    dynamic, fixed = flex.compiled_flex(dynamic=None), flex.compiled_flex(dynamic=False)
    new_graphs = []
    for s in (256, 512, 768):
        q, k, v = torch.randn(3, 2, 2, s, 32).unbind(0)
        causal = fa.create_block_mask(lambda b, h, i, j: j <= i, None, None, s, s, device="cpu")
        before = counters["stats"]["unique_graphs"]
        for bm in (None, causal):  # two graphs per length: no mask, causal mask
            out, _ = dynamic(q, k, v, None, bm, None, False, None, False)
            fixed(q, k, v, None, bm, None, False, None, False)
            ref = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=bm is not None
            )
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        new_graphs.append(counters["stats"]["unique_graphs"] - before)
    assert new_graphs == [4, 4, 2]  # 768 reuses both graphs compiled at 512 (2: the fixed ones)
    assert REGISTRY["flex"].dynamic(q) is False  # the CPU keeps fixed shapes
    assert REGISTRY["flex_fa4"].dynamic(q) is False


def test_dynamic_flex_traces_alibi_after_softcap(monkeypatch):
    # The H200 basic suite under ATTNBENCH_FLEX_DYNAMIC=1: the softcap case then the ALiBi case
    # (cap 30.0, then 0.0) made the closure's cap a symbolic float, and the ALiBi score mod's
    # `if cap:` failed to trace ("RuntimeError when making fake tensor call"). Floats stay
    # constants now. On the CPU: inputs that require grad (the GPU's joint-graph trace), torch's
    # CPU-backward refusal lifted and no Inductor (dynamo's trace is where it failed).
    import functools

    fa_mod = __import__("torch.nn.attention.flex_attention", fromlist=["_validate_device"])
    monkeypatch.setattr(fa_mod, "_validate_device", lambda *a, **k: None)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    flex.compiled_flex.cache_clear()
    try:
        fn = flex.compiled_flex(dynamic=None)
        for case in (
            Case(2, 4, 4, 64, 64, 32, "fp32", softcap=30.0),
            Case(2, 4, 4, 64, 64, 32, "fp32", alibi=True),
        ):
            inp = make_inputs(case, "cpu")
            q, k, v = (
                flex.to_flex_layout(t, False).requires_grad_() for t in (inp.q, inp.k, inp.v)
            )
            mod = flex_mods.score_mod_for(case, inp.alibi_slopes)
            out, _ = fn(q, k, v, mod, None, case.scale, False, None, True)
            ref = make_truth(inp, case, grads=False).ref.out
            torch.testing.assert_close(
                out.detach().transpose(1, 2).double(), ref, atol=1e-4, rtol=0
            )
    finally:
        flex.compiled_flex.cache_clear()


@pytest.mark.parametrize("env,want", [(None, False), ("0", False), ("1", None)])
def test_flex_dynamic_shapes_on_cuda_only_when_asked(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv("ATTNBENCH_FLEX_DYNAMIC", raising=False)
    else:
        monkeypatch.setenv("ATTNBENCH_FLEX_DYNAMIC", env)
    cuda_q = type("T", (), {"device": torch.device("cuda")})()  # only .device is read
    assert REGISTRY["flex"].dynamic(cuda_q) is want
    assert REGISTRY["flex_fa4"].dynamic(cuda_q) is False  # FA4's kernels: fixed shapes


@pytest.mark.parametrize(
    "sq,sk,divisible", [(256, 1024, True), (1537, 512, False), (512, 200, False)]
)
def test_flex_states_is_divisible_on_cuda_only(sq, sk, divisible):
    def t(s, dev):  # only .device and .shape are read
        return type("T", (), {"device": torch.device(dev), "shape": (1, 2, s, 8)})()

    assert flex.divisible_option(t(sq, "cpu"), t(sk, "cpu")) is None  # CPU lowering: no option
    assert flex.divisible_option(t(sq, "cuda"), t(sk, "cuda")) == {"IS_DIVISIBLE": divisible}


def test_one_compiled_flex_never_falls_back_to_eager():
    fn = flex.compiled_flex()
    assert fn is flex.compiled_flex()  # one compiled function for every case
    cfg = torch._dynamo.config
    assert cfg.recompile_limit >= flex.RECOMPILE_LIMIT
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        assert cfg.fail_on_recompile_limit_hit


def test_compiled_flex_turns_buffer_donation_off():
    # the timer replays one backward with retain_graph=True, which donated buffers forbid
    import torch._functorch.config

    torch._functorch.config.donated_buffer = True
    flex.compiled_flex.cache_clear()
    flex.compiled_flex()
    assert torch._functorch.config.donated_buffer is False


# ---- flex_fa4's lse: torch 2.11.0-2.12.1 return ln 2 x FA4's natural-log lse (pytorch#181645) ----
@pytest.mark.parametrize(
    "version,scaled",
    [("2.11.0+cu130", True), ("2.12.1", True), ("2.10.0", True), ("2.13.0+cpu", False),
     ("2.15.0", False), ("3.0.0a0", False)],
)  # fmt: skip
def test_flash_lse_fix_is_gated_on_torch_version(version, scaled):
    assert flex.flash_lse_scaled_by_ln2(version) is scaled


def test_gate_matches_the_installed_torch_source():
    # the fix (pytorch#181824) made _finalize_outputs skip "* ln2" for FLASH: stats_are_log2
    import inspect

    src = inspect.getsource(flex.flex_api().flex_attention)
    assert flex.TORCH_SCALES_FLASH_LSE is ("stats_are_log2" not in src)


def test_natural_lse_from_flex_flash_undoes_the_ln2():
    s = torch.randn(2, 3, 5, 7) * 4
    s[0, 1, 2] = float("-inf")  # a row with no visible key
    true = torch.logsumexp(s, -1)
    raw = true * torch.log(torch.tensor(2.0))  # what torch 2.11's _finalize_outputs returns
    flash = {"BACKEND": "FLASH"}
    fixed = flex.natural_lse_from_flex_flash(raw, flash, scaled=True)
    assert torch.allclose(fixed, true) and torch.isneginf(fixed[0, 1, 2])
    for opts, scaled in ((flash, False), ({"BACKEND": "TRITON"}, True), (None, True)):
        assert flex.natural_lse_from_flex_flash(raw, opts, scaled=scaled) is raw


def test_lse_conversion_traces_in_a_fullgraph_compile():
    # it runs inside the one compiled flex call: no graph break (fullgraph) on dict options
    def finish(lse, opts):
        return flex.natural_lse_from_flex_flash(lse, opts, scaled=True)

    fn = torch.compile(finish, backend="eager", fullgraph=True)
    lse = torch.randn(2, 3, 5)
    assert torch.allclose(fn(lse, {"BACKEND": "FLASH"}) * torch.log(torch.tensor(2.0)), lse)
    assert torch.equal(fn(lse, None), lse)
