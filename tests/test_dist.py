"""Distributed attention on CPU (gloo): every strategy against the non-distributed run of the
same local kernel and the fp32 reference, rank by rank, plus layouts, setup errors, the hang
guard and the CLI end to end. The GPU part (NCCL) is marked ``gpu``.

Processes are started once per world size (module cache) and run the whole matrix; each test
then reads its own (world, strategy, kernel, case) result.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnbench.distributed.check import run_distributed, run_single
from attnbench.distributed.config import load_dist_config, select
from attnbench.distributed.local import get_local_kernel, recompute_backward
from attnbench.distributed.merge import merge_into, start_from
from attnbench.distributed.strategy import STRATEGIES, DistSetupError, Layout, check_setup
from attnbench.problems.attention import AttentionCase as Case
from attnbench.problems.attention.reference import attention_ref

CASES = [
    Case(1, 4, 4, 128, 128, 32, "fp32", causal=False),
    Case(1, 4, 4, 128, 128, 32, "fp32", causal=True),
    Case(1, 4, 2, 128, 128, 32, "fp32", causal=False),
    Case(1, 4, 2, 128, 128, 32, "fp32", causal=True),
    Case(2, 4, 4, 64, 64, 32, "bf16", causal=True),
]
KERNELS = ("naive", "sdpa_flash")
WORLD_STRATEGIES = {2: ("ring", "zigzag", "ulysses"), 4: STRATEGIES}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the spawned worker --------------------------------------------------------------------------
def _worker(rank, world, port, out_path, job, device, timeout_s):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from attnbench.distributed import comm

    env = comm.init(device, timeout_s)
    try:
        result = globals()[f"_job_{job}"](env, comm)
    finally:
        comm.shutdown()
    if rank == 0:
        Path(out_path).write_bytes(pickle.dumps(result))


def _job_matrix(env, comm, cases=CASES, kernels=KERNELS):
    """Every strategy x kernel x case: per-rank errors (gathered) or the setup error."""
    import torch.distributed as dist

    from attnbench.distributed.check import compare
    from attnbench.distributed.strategy import make_groups
    from attnbench.problems.attention.inputs import make_inputs
    from attnbench.problems.attention.reference import reference

    res, groups = {}, {}
    for case in cases:
        inp = make_inputs(case, env.device, 0)
        truth = reference(inp, case, upcast=True)
        for name in kernels:
            kernel = get_local_kernel(name)
            single = run_single(inp, case, kernel)
            for strategy in WORLD_STRATEGIES.get(env.world_size, STRATEGIES):
                layout = Layout(strategy, env.world_size, 2 if strategy.startswith("hybrid") else 1)
                key = (strategy, name, case.id)
                try:
                    check_setup(layout, case, kernel, env.device.split(":")[0])
                except DistSetupError as e:
                    res[key] = str(e)
                    continue
                if layout not in groups:
                    groups[layout] = make_groups(layout, env)
                got = run_distributed(inp, case, kernel, layout, groups[layout], env.rank)
                errs = compare(got, single, truth, layout, env.rank, case)
                gathered = [None] * env.world_size
                dist.all_gather_object(gathered, errs)
                res[key] = gathered
    # a bad local shape is refused before any collective (zigzag needs two chunks per rank)
    from attnbench.distributed.strategy import Groups, dist_attention

    q = torch.randn(1, 7, 4, 32, device=env.device)
    try:
        dist_attention(
            q,
            q,
            q,
            Layout("zigzag", env.world_size),
            Groups(),
            get_local_kernel("naive"),
            True,
            0.1,
        )
        res["odd"] = None
    except DistSetupError as e:
        res["odd"] = str(e)
    return res


def _job_exact(env, comm):
    """World size 1: every strategy returns exactly the non-distributed result."""
    from attnbench.distributed.strategy import Groups
    from attnbench.problems.attention.inputs import make_inputs

    res = {}
    for case in (CASES[3], CASES[4]):
        inp = make_inputs(case, env.device, 0)
        for name in ("naive", "sdpa_flash"):
            kernel = get_local_kernel(name)
            single = run_single(inp, case, kernel)
            for strategy in ("ring", "zigzag", "ulysses"):
                got = run_distributed(inp, case, kernel, Layout(strategy, 1), Groups(), 0)
                res[(strategy, name, case.id)] = {
                    t: bool(torch.equal(getattr(got, t), getattr(single, t)))
                    for t in ("out", "lse", "dq", "dk", "dv")
                }
    return res


def _job_timeout(env, comm):
    """Rank 1 skips a collective: rank 0 gets a DistTimeout naming rank 1 and the phase."""
    import torch.distributed as dist

    wd = comm.Watchdog(env.rank, env.timeout_s)
    if env.rank == 1:
        time.sleep(env.timeout_s + 1.5)
        return None
    try:
        with wd.phase("test phase: rank 1 skips this all_reduce"):
            dist.all_reduce(torch.ones(1))
    except comm.DistTimeout as e:
        return str(e)
    return None


_CACHE: dict = {}


def _spawn(world: int, job: str, tmp: Path, device: str = "cpu", timeout_s: float = 60.0):
    key = (world, job, device)
    if key not in _CACHE:
        import torch.multiprocessing as mp

        out = tmp / f"{job}-{world}-{device}.pkl"
        mp.spawn(
            _worker,
            args=(world, _free_port(), str(out), job, device, timeout_s),
            nprocs=world,
            join=True,
        )
        _CACHE[key] = pickle.loads(out.read_bytes())
    return _CACHE[key]


@pytest.fixture(scope="module")
def tmp_mod(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


# ---- strategies vs the non-distributed run ------------------------------------------------------
MATRIX = [
    (w, s, k, c)
    for w, strats in WORLD_STRATEGIES.items()
    for s in strats
    for k in KERNELS
    for c in CASES
]


@pytest.mark.parametrize(
    "world,strategy,kernel,case", MATRIX, ids=[f"w{w}-{s}-{k}-{c.id}" for w, s, k, c in MATRIX]
)
def test_strategy_matches_single(tmp_mod, world, strategy, kernel, case):
    res = _spawn(world, "matrix", tmp_mod)[(strategy, kernel, case.id)]
    if strategy == "ulysses" and world == 4 and case.heads_kv == 2:
        assert isinstance(res, str) and "heads_kv=2 must both be divisible" in res
        return
    assert not isinstance(res, str), res
    assert [e.rank for errs in res for e in errs[:1]] == list(range(world))
    for errs in res:
        assert [e.tensor for e in errs] == ["out", "lse", "dq", "dk", "dv"]
        for e in errs:
            assert e.accuracy_ok, (
                f"rank {e.rank} {e.tensor}: max err {e.max_abs_err:.3g} (mean "
                f"{e.mean_abs_err:.3g}) vs non-distributed {e.baseline_max_abs_err:.3g}; dist - "
                f"single max {e.diff_max:.3g}"
            )
            if case.dtype == "fp32":  # fp32: the distributed run is the same maths
                assert e.diff_max < 1e-5, (e.tensor, e.rank, e.diff_max)


def test_bad_local_shape_refused_before_collectives(tmp_mod):
    msg = _spawn(2, "matrix", tmp_mod)["odd"]
    assert msg is not None and "local seqlen 7 must be even" in msg


def test_one_process_is_exactly_single(tmp_mod):
    res = _spawn(1, "exact", tmp_mod)
    assert len(res) == 2 * 2 * 3
    for key, same in res.items():
        assert all(same.values()), (key, same)


def test_hung_collective_times_out_naming_the_rank(tmp_mod):
    msg = _spawn(2, "timeout", tmp_mod, timeout_s=2.0)
    assert msg is not None and "rank 0 waited 2 s in 'test phase" in msg and "timed out" in msg
    assert "rank 1 never reached it (it started no phase)" in msg


def test_watchdog_ends_a_stuck_rank():
    code = (
        "import time\nfrom attnbench.distributed.comm import Watchdog\n"
        "wd = Watchdog(3, 0.5, grace_s=0.5)\n"
        "with wd.phase('ring step 2'):\n    time.sleep(30)\n"
    )
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 124
    assert "rank 3 waited 0.5 s in 'ring step 2'" in p.stderr
    assert time.monotonic() - t0 < 20


# ---- pieces: layouts, merge, block backward, setup errors ----------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_layout_covers_every_token_once(strategy, world):
    u = 2 if strategy.startswith("hybrid") else 1
    if u > 1 and world < 4:
        pytest.skip("hybrid needs >= 2 Ulysses x 2 ring ranks")
    lay = Layout(strategy, world, u)
    s = 16 * world
    idx = torch.cat([lay.indices(r, s) for r in range(world)])
    assert sorted(idx.tolist()) == list(range(s))
    if strategy == "zigzag":
        c = s // (2 * world)
        assert lay.indices(0, s).tolist() == [*range(c), *range(s - c, s)]


def _merge_impls():
    import os

    impls = ["torch"]
    try:
        import triton  # noqa: F401

        if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
            impls.append("triton")
    except ImportError:
        pass
    return impls


@pytest.mark.parametrize("impl", _merge_impls())
@pytest.mark.parametrize("block_dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_merge_into_rows_of_a_view_matches_full_attention(impl, block_dtype):
    """In-place merge into the second half of the rows (a strided view, as zigzag does), with
    head dim 40 (not a power of two), and rows that see no key in one block or in both."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(2)
    b, s, h, d = 2, 24, 3, 40
    q = torch.randn(b, s, h, d, dtype=torch.float64)
    k, v = (torch.randn(b, 20, h, d, dtype=torch.float64) for _ in "kv")
    o1, l1 = attention_ref(q, k[:, :8], v[:, :8], upcast=False)
    o2, l2 = attention_ref(q, k[:, 8:], v[:, 8:], upcast=False)
    full, full_lse = attention_ref(q, k, v, upcast=False)
    # rows 12-14 of head 0 see nothing in block 2 (reference convention: lse +inf, out 0)
    e = slice(s // 2, s // 2 + 3)
    l2[:, 0, e], o2[:, e, 0] = float("inf"), 0.0
    out = torch.zeros(b, s, h, d, dtype=torch.float32, device=dev)
    lse = torch.zeros(b, h, s, dtype=torch.float32, device=dev)
    half = slice(s // 2, s)
    start_from(out[:, half], lse[:, :, half], o1.to(dev)[:, half], l1.to(dev)[..., half])
    merge_into(
        out[:, half],
        lse[:, :, half],
        o2.to(dev, block_dtype)[:, half],
        l2.to(dev).float()[..., half],
        impl=impl,
    )
    want, want_lse = full.clone(), full_lse.clone()
    want[:, e, 0], want_lse[:, 0, e] = o1[:, e, 0], l1[:, 0, e]
    tol = 1e-5 if block_dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out[:, half].cpu(), want[:, half].float(), atol=tol, rtol=0)
    torch.testing.assert_close(lse[..., half].cpu(), want_lse[..., half].float(), atol=1e-5, rtol=0)
    assert (out[:, : s // 2] == 0).all() and (lse[..., : s // 2] == 0).all()  # untouched rows
    # neither side sees a key: 0 and -inf, never NaN
    o, l_ = torch.ones(1, 4, 1, 8, device=dev), torch.full((1, 1, 4), float("-inf"), device=dev)
    merge_into(o, l_, torch.full_like(o, float("nan")), torch.full_like(l_, float("inf")), impl)
    assert (o == 0).all() and torch.isneginf(l_).all()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("hkv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_recompute_backward_is_autograd_of_the_reference(causal, hkv):
    torch.manual_seed(1)
    q = torch.randn(2, 24, 4, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 24, hkv, 8, dtype=torch.float64, requires_grad=True) for _ in "kv")
    out, lse = attention_ref(q, k, v, causal=causal, softmax_scale=0.3, upcast=False)
    dout = torch.randn_like(out)
    want = torch.autograd.grad(out, (q, k, v), dout)
    got = recompute_backward(
        dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, causal, 0.3, budget_bytes=1
    )  # one kv head per chunk
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w.float(), atol=1e-5, rtol=1e-5)


def _case(s=128, hq=4, hkv=4, **kw):
    return Case(1, hq, hkv, s, s, 32, "fp32", causal=True, **kw)


BAD_SETUPS = [
    (Layout("ring", 3), _case(128), "seqlen 128 not divisible by the world size 3"),
    (Layout("zigzag", 4), _case(124), "not divisible into 2P = 8 zigzag chunks"),
    (Layout("ulysses", 4), _case(128, 6, 6), "heads_q=6 and heads_kv=6 must both be divisible"),
    (Layout("ulysses", 2), _case(128, 4, 1), "heads_kv=1 must both be divisible"),
    (Layout("hybrid", 4, 2), _case(128, 3, 3), "must be divisible by ulysses_size 2"),
    (Layout("hybrid", 2, 2), _case(128), "dividing the world size into >= 2 ring groups"),
    (Layout("hybrid_zigzag", 4, 2), _case(130), "must split into 4 zigzag chunks"),
    (Layout("ring", 2), Case(1, 4, 4, 128, 64, 32, "fp32"), "seqlen_q must equal seqlen_k"),
    (Layout("ring", 2), _case(128, window_left=8), "sliding window"),
]


@pytest.mark.parametrize(
    "layout,case,why",
    BAD_SETUPS,
    ids=[f"{lay.strategy}-w{lay.world_size}-{c.id}" for lay, c, _ in BAD_SETUPS],
)
def test_bad_setup_errors(layout, case, why):
    with pytest.raises(DistSetupError, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_setup(layout, case, get_local_kernel("naive"), "cpu")


def test_backend_without_block_api_is_refused():
    with pytest.raises(KeyError, match="'sdpa_math' has no block API"):
        get_local_kernel("sdpa_math")
    with pytest.raises(KeyError, match="unknown local backend"):
        get_local_kernel("no_such_kernel")


def test_cuda_only_local_kernels_say_why_on_cpu():
    case = _case(128)
    for name in ("sdpa_efficient", "flash_attn_func"):
        assert "does not run on cpu" in get_local_kernel(name).why_unsupported(case, "cpu")


def test_config_selects_cases_per_world_size():
    cfg, _ = load_dist_config("dist")
    gpu = select(cfg, "cuda", 4)
    bench = [c for c in gpu.cases if c.heads_q == 32]
    assert bench and bench[0].seqlen_q == 8192 * 4 and bench[0].heads_kv == 8
    assert bench[0].head_dim == 128 and bench[0].dtype == "bf16" and bench[0].causal
    cpu = select(cfg, "cpu", 2)
    assert (
        cpu.local_backends == ["naive", "sdpa_flash"] and max(c.seqlen_q for c in cpu.cases) <= 256
    )


# ---- the CLI end to end ----------------------------------------------------------------------
def _dist_cli(*args, timeout=300):
    """``python -m attnbench dist ARGS`` in a fresh process (it starts torchrun itself)."""
    cmd = [sys.executable, "-m", "attnbench", "dist", *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_cli_accuracy_end_to_end(tmp_path):
    import pandas as pd

    p = _dist_cli("accuracy", "--suite", "dist", "--nproc", 2, "--device", "cpu", "--out", tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "rank 1 out (distributed) - out_ref (non-distributed) diff:" in p.stdout
    assert "Rank[1] max" in p.stdout
    df = pd.read_parquet(tmp_path)
    assert set(df["kind"]) == {"dist_accuracy"} and set(df["world_size"]) == {2}
    ok = df[df["status"] == "ok"]
    assert set(ok["strategy"]) == {"ring", "zigzag", "ulysses"}
    assert set(ok["rank"]) == {0, 1} and set(ok["tensor"]) == {"out", "lse", "dq", "dk", "dv"}
    assert set(df[df["status"] == "unsupported"]["strategy"]) == {"hybrid", "hybrid_zigzag"}
    # the relative metrics single-device rows have, of each rank's shard
    assert (
        (ok["cos_sim"] > 0.999).all() and (ok["rel_l1"] < 0.05).all() and ok["rmse"].notna().all()
    )


def test_dist_rows_carry_a_repro_that_reruns_exactly_their_case(tmp_path):
    """Every distributed row names the command that runs its case, local kernel and strategy
    again at its world size; running one gives that case alone (every rank's rows)."""
    import shlex

    import pandas as pd

    first = tmp_path / "first"
    p = _dist_cli("accuracy", "--suite", "dist", "--nproc", 2, "--device", "cpu", "--out", first)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df = pd.read_parquet(first)
    ok = df[df["status"] == "ok"]
    assert ok.repro.notna().all()
    assert ok.groupby(["case_id", "backend", "strategy"]).repro.nunique().eq(1).all()
    row = ok[ok.strategy == "zigzag"].iloc[-1]
    words = shlex.split(row.repro)
    words = words[words.index("attnbench") :]  # after the variables (TRITON_INTERPRET=1 here)
    assert words[:5] == ["attnbench", "dist", "accuracy", "--suite", "dist"]
    assert "--nproc" in words and words[words.index("--nproc") + 1] == "2"
    again = tmp_path / "again"
    p = _dist_cli(*words[2:], "--out", again)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    re_rows = pd.read_parquet(again)
    assert set(re_rows.case_id) == {row.case_id} and set(re_rows.strategy) == {"zigzag"}
    assert set(re_rows.backend) == {row.backend} and (re_rows.repro == row.repro).all()


def test_cli_perf_end_to_end_with_both_baselines(tmp_path):
    """dist perf (gloo, 2 processes): per-rank rows plus a slowest-rank row per strategy and
    mode, each with its verdict; rank 0's single-device baselines at S and at S/P, so both
    efficiencies (strict, and ring-flash-attention's) are printed and recomputable."""
    import pandas as pd

    p = _dist_cli(
        "perf",
        "--sweep",
        "dist_bench",
        "--nproc",
        2,
        "--device",
        "cpu",
        "--out",
        tmp_path,
        "--strategies",
        "zigzag",
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "vs P x S/P" in p.stdout
    df = pd.read_parquet(tmp_path)
    single = df[df["strategy"] == "single"]
    assert set(single["seqlen_q"]) == {128, 64} and (single["status"] == "ok").all()
    grp = df[(df["strategy"] == "zigzag") & df["rank"].isna()]
    assert len(grp) == 4 and (grp["status"] == "ok").all()  # 2 kernels x fwd, fwd_bwd
    # the stored efficiencies are the ones recomputed from the stored baselines
    for _, r in grp.iterrows():
        mine = (single["mode"] == r["mode"]) & (single["backend"] == r.backend)
        one = single[mine].set_index("seqlen_q").latency_ms
        assert r.efficiency == pytest.approx(one[128] / (2 * r.latency_ms))
        assert r.efficiency_share == pytest.approx(2 * one[64] / r.latency_ms)
    per_rank = df[(df["strategy"] == "zigzag") & df["rank"].notna()]
    assert set(per_rank["rank"]) == {0, 1} and (per_rank["latency_ms"] > 0).all()


def test_cli_usage_errors_before_launch(tmp_path):
    args = ("accuracy", "--nproc", 2, "--device", "cpu", "--out", tmp_path)
    p = _dist_cli(*args, "--strategies", "spiral", timeout=120)
    assert p.returncode == 2 and "unknown strategy 'spiral'" in p.stderr
    p = _dist_cli(*args, "--local-backends", "sdpa_mat", timeout=120)
    assert p.returncode == 2 and "unknown local backend 'sdpa_mat'" in p.stderr
    for flags, msg in (
        (("--nproc", 0), "--nproc must be >= 1, got 0"),
        (("--nproc", -1), "--nproc must be >= 1, got -1"),
        (("--timeout", -5), "--timeout must be a number of seconds > 0, got -5"),
        (("--strategies", ""), "--strategies given an empty list"),
    ):
        p = _dist_cli("accuracy", "--device", "cpu", "--out", tmp_path, *flags, timeout=120)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_cli_only_skip_where_json_and_the_launchers_settings(tmp_path):
    """``--only``/``--skip`` pick strategies, ``--where`` cases, ``--json`` puts the rows on
    stdout (the rest on stderr), and every rank runs under the launcher's settings, which every
    row records."""
    import json

    import pandas as pd

    cmd = [sys.executable, "-m", "attnbench", "dist", "accuracy", "--nproc", "2", "--device"]
    cmd += ["cpu", "--out", str(tmp_path), "--local-backends", "naive", "--json"]
    cmd += ["--only", "ring,zigzag", "--skip", "zigzag", "--where", "causal=true,heads_kv=4"]
    env = dict(os.environ, ATTNBENCH_FLEX_DYNAMIC="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(line) for line in p.stdout.splitlines()]  # nothing else on stdout
    # 2 cases (fp32 S128 and bf16 S64, both causal with 4 kv heads) x 2 ranks x 5 tensors
    assert len(rows) == 20 and {r["strategy"] for r in rows} == {"ring"}
    assert {(r["causal"], r["heads_kv"]) for r in rows} == {(True, 4)}
    assert {r["settings"] for r in rows} == {'{"flex_dynamic": true}'}
    assert "run " in p.stderr and "world size 2 (gloo)" in p.stderr
    assert "20 finished rows kept in" in p.stderr
    df = pd.read_parquet(tmp_path)
    assert len(df) == 20 and set(df["settings"]) == {'{"flex_dynamic": true}'}


STRATEGY_PICKS = {
    "config-default": ({}, ["ring", "zigzag", "ulysses"]),
    "only-in-given-order": ({"only": "zigzag,ring"}, ["zigzag", "ring"]),
    "skip": ({"skip": "ulysses"}, ["ring", "zigzag"]),
    "only-minus-skip": ({"only": "ring,hybrid", "skip": "ring"}, ["hybrid"]),
    "old-name-strategies": ({"strategies": "ulysses"}, ["ulysses"]),
}


@pytest.mark.parametrize("flags, expected", list(STRATEGY_PICKS.values()), ids=list(STRATEGY_PICKS))
def test_only_and_skip_pick_strategies(flags, expected):
    from attnbench.distributed.driver import DistRequest, strategies

    req = DistRequest("accuracy", "dist", **flags)
    assert strategies(["ring", "zigzag", "ulysses"], req) == expected


def test_cli_new_flag_errors_before_launch(cli, tmp_path):
    """The new flags fail like the single-device ones: one line, exit 2, before any launch (in
    this process: nothing is started)."""
    for flags, msg in (
        (("--where", "foo=1"), "--where: unknown field 'foo'"),
        (("--where", "seqlen>=100000"), "no cases to run on cpu at world size 2 where seqlen"),
        (("--skip", "spiral"), "unknown strategy 'spiral'"),
        (("--only", "ring", "--skip", "ring"), "--only/--skip leave no strategy to run"),
        (("--only", "ring", "--strategies", "ring"), "--strategies is the old name of --only"),
        (("--only", ""), "--only given an empty list"),
    ):
        res = cli("dist", "accuracy", "--nproc", 2, "--device", "cpu", "--out", tmp_path, *flags)
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and msg in out, res.output
        assert "Traceback" not in out and "torchrun" not in out, res.output


HANG = """
import os, time
if os.environ.get("RANK") == "1":
    from attnbench.distributed import comm
    _phase = comm.Watchdog.phase
    def phase(self, name):
        if "distributed forward" in name:
            time.sleep(600)  # rank 1 never reaches the collective
        return _phase(self, name)
    comm.Watchdog.phase = phase
"""


def test_cli_stuck_rank_is_named_and_exits_124(tmp_path):
    """Rank 1 stops answering before the distributed forward: rank 0's collective times out,
    the line names rank 1 and where it was last seen; exit 124, no launcher traceback."""
    (tmp_path / "sitecustomize.py").write_text(HANG)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "attnbench", "dist", "accuracy", "--nproc", "2", "--device"]
    cmd += ["cpu", "--out", str(tmp_path / "r"), "--timeout", "3", "--strategies", "ring"]
    cmd += ["--local-backends", "naive"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 124, p.stdout[-2000:] + p.stderr[-3000:]
    assert "rank 1 never reached it (last seen in" in p.stderr, p.stderr[-3000:]
    assert "agreeing to start" in p.stderr
    assert "Traceback" not in p.stderr and "ChildFailedError" not in p.stderr, p.stderr[-3000:]


def test_cli_run_with_every_case_unsupported_exits_1(tmp_path):
    p = _dist_cli(
        "accuracy", "--nproc", 3, "--device", "cpu", "--out", tmp_path, "--strategies", "ulysses"
    )
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "world size 3: no case ran" in p.stderr and "Traceback" not in p.stderr


# ---- GPU (NCCL) ------------------------------------------------------------------------------
GPU_CASES = [
    Case(1, 8, 4, 2048, 2048, 128, "bf16", causal=True),
    Case(2, 8, 8, 1024, 1024, 64, "fp16", causal=False),
]


def _gpu_kernels():
    ks = ["sdpa_flash", "sdpa_efficient"]
    if get_local_kernel("flash_attn_func").why_unsupported(GPU_CASES[0], "cuda") is None:
        ks.append("flash_attn_func")
    return tuple(ks)


@pytest.mark.gpu
@pytest.mark.parametrize("world", [2, 4])
def test_gpu_strategies_nccl(tmp_path, world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    res = _spawn(world, "gpu_matrix", tmp_path, device="cuda", timeout_s=120)
    bad = []
    for key, val in res.items():
        if key == "odd" or isinstance(val, str):
            continue
        bad += [
            f"{key} rank {e.rank} {e.tensor} {e.max_abs_err:.3g} vs {e.baseline_max_abs_err:.3g}"
            for errs in val
            for e in errs
            if not e.accuracy_ok
        ]
    assert len([v for v in res.values() if isinstance(v, list)]) >= 3
    assert not bad, bad


def _job_gpu_matrix(env, comm):
    return _job_matrix(env, comm, cases=GPU_CASES, kernels=_gpu_kernels())


@pytest.mark.gpu
def test_gpu_cli_accuracy(tmp_path):
    n = min(4, torch.cuda.device_count())
    if n < 2:
        pytest.skip("needs 2 GPUs")
    p = _dist_cli(
        "accuracy",
        "--suite",
        "dist",
        "--nproc",
        n,
        "--device",
        "cuda",
        "--out",
        tmp_path,
        "--local-backends",
        "sdpa_flash",
        timeout=1200,
    )
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-3000:]
