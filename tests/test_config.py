"""Config validation: bad files exit 2 with the file, the key path and what was expected."""

import pytest

from attnbench.problems.base import expand
from attnbench.run.config import ConfigError, load_config, select_cases

SHIPPED = ["basic", "seqlen", "headdim"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    cfg, _ = load_config(name)
    gpu, _, _ = select_cases(cfg, "cuda")
    cpu, _, note = select_cases(cfg, "cpu")
    assert gpu and cpu and note


def test_basic_covers_the_issue():
    cfg, _ = load_config("basic")
    cases, _, _ = select_cases(cfg, "cuda")
    assert {c.dtype for c in cases} >= {"fp16", "bf16"}
    assert {c.causal for c in cases} == {False, True}
    assert {64, 128} <= {c.head_dim for c in cases}
    assert any(c.batch > 1 for c in cases)
    assert any(c.seqlen_q % 128 for c in cases if not c.varlen)
    assert any(c.gqa for c in cases)
    assert any(c.seqlen_q != c.seqlen_k for c in cases if not c.varlen)
    assert any(c.varlen for c in cases)


def test_seqlen_sweep_is_flash_attention_convention():
    cfg, _ = load_config("seqlen")
    cases, modes, _ = select_cases(cfg, "cuda")
    assert modes == ["fwd", "bwd", "fwd_bwd"]
    assert {c.seqlen_q for c in cases} == {512, 1024, 2048, 4096, 8192, 16384}
    assert all(c.batch * c.seqlen_q == 16384 and c.heads_q * c.head_dim == 2048 for c in cases)
    assert {(c.head_dim, c.causal, c.dtype) for c in cases} == {
        (d, c, t) for d in (64, 128) for c in (False, True) for t in ("bf16", "fp16")
    }


def test_grid_crosses_lists():
    from attnbench.problems.attention.grid import Grid

    cases = expand(
        Grid(
            batch=2, heads_q=8, heads_kv=[8, 2], seqlen=[64, 100], head_dim=64, causal=[False, True]
        )
    )
    assert len(cases) == 8 and len(set(cases)) == 8


BAD = {
    "unknown_key": (
        "name: x\ncases:\n  - {batch: 1, heads_q: 2, seqlen: 8, head_dim: 8, hedd: 1}\n",
        "cases.0.hedd: Extra inputs are not permitted",
    ),
    "wrong_type": (
        "name: x\ncases:\n  - {batch: two, heads_q: 2, seqlen: 8, head_dim: 8}\n",
        "cases.0.batch",
    ),
    "bad_dtype": (
        "name: x\ncases:\n  - {batch: 1, heads_q: 2, seqlen: 8, head_dim: 8, dtype: fp8}\n",
        "cases.0.dtype: Value error, unknown dtype 'fp8'",
    ),
    "gqa_not_dividing": (
        "name: x\ncases:\n  - {batch: 1, heads_q: 6, heads_kv: 4, seqlen: 8, head_dim: 8}\n",
        "cases.0: B1-H6/4-S8-D8-bf16-full: heads_kv=4 must divide",
    ),
    "missing_head_dim": (
        "name: x\ncases:\n  - {batch: 1, heads_q: 2, seqlen: 8}\n",
        "cases.0.head_dim: Field required",
    ),
    "bad_mode": (
        "name: x\nmodes: [fwd, back]\ncases:\n  - {batch: 1, heads_q: 2, seqlen: 8, head_dim: 8}\n",
        "modes.1: Input should be 'fwd', 'bwd' or 'fwd_bwd'",
    ),
    "yaml_syntax": ("name: x\ncases: [\n", "invalid YAML"),
    "cpu_block": (
        "name: x\ncases:\n  - {batch: 1, heads_q: 2, seqlen: 8, head_dim: 8}\ncpu:\n"
        "  cases:\n    - {batch: 1, heads_q: 2, seqlen: 8, head_dim: 8, causl: true}\n",
        "cpu.cases.0.causl: Extra inputs are not permitted",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_config_exits_2_with_key_path(name, tmp_path, cli):
    text, expected = BAD[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as ei:
        load_config(str(f))
    assert expected in str(ei.value) and str(f) in str(ei.value)
    res = cli("accuracy", "--suite", f, "--device", "cpu", "--out", tmp_path / "r")
    assert res.exit_code == 2
    assert expected in " ".join(res.output.split())
    assert not (tmp_path / "r").exists()  # nothing ran, nothing written


def test_unknown_suite_and_backend_exit_2(cli, tmp_path):
    res = cli("accuracy", "--suite", "nope", "--device", "cpu")
    assert res.exit_code == 2 and "unknown config 'nope'" in res.output and "basic" in res.output
    res = cli("perf", "--sweep", "seqlen", "--only", "naive,flashy", "--device", "cpu")
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "unknown backend 'flashy'; known:" in out
    assert "naive, sdpa_math, sdpa_flash, sdpa_efficient, sdpa_cudnn" in out
    res = cli("perf", "--sweep", "seqlen", "--dtype", "fp8", "--device", "cpu")
    assert res.exit_code == 2 and "--dtype 'fp8'" in res.output
