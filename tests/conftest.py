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


# The quick lane (`python -m pytest -q -m "not slow and not gpu"`, under 3 minutes on 2 cores)
# leaves these out; the full lane (`python -m pytest -q`, what CI runs) keeps them. A whole file
# (torchrun ranks, nvcc, ptxas) or single tests measured at ~3 s or more on CI's 2 cores.
SLOW_FILES = {"test_dist.py", "test_cuda_compile.py", "test_kernel_resources.py"}
SLOW_TESTS = {
    "test_piecewise_perf_and_plot_through_the_cli",
    "test_old_runs_still_load_next_to_piecewise_rows",
    "test_perf_run_json_and_plots",
    "test_first_call_is_recorded_and_never_timed",
    "test_wrong_kernel_fails_and_its_speed_is_withheld",
    "test_failing_backend_is_a_row_and_the_run_goes_on",
    "test_plot_seqlen_lines",
    "test_accuracy_run_end_to_end",
    "test_kernel_config_column",
    "test_compiled_flex_forward_on_cpu",
    "test_dynamic_flex_reuses_one_graph_across_lengths",
    "test_dynamic_flex_traces_alibi_after_softcap",
    "test_piecewise_thresholds_draw_one_line_each_and_compare_matches",
    "test_a_threshold_that_grows_with_the_length_stays_one_line",
    "test_split_band_matches_fused_and_reference",  # 18 interpreter runs of 1-4 s
    "test_a_new_problem_runs_through_every_command",
    "test_ascii_terminal_and_a_non_ascii_out_path_do_not_crash",
    "test_where_given_twice_applies_both_on_the_command_line",
    "test_k_outliers_fail_without_smoothing_and_pass_with_it",  # FP8 under the interpreter
    "test_perf_rows_carry_quant_ms_rel_l1_and_draw_a_tradeoff",
    "test_ctrl_c_in_a_command_before_any_run_is_one_line_and_130",
    "test_perf_rows_of_a_lossy_backend_carry_its_verdict",
}


# The GPU tests in parts that each fit one device call (10 minutes), by file:
#   python -m pytest -m "gpu and gpu_kernels"   the in-repo kernels against the reference
#   python -m pytest -m "gpu and gpu_backends"  library backends, the registry, the block API
#   python -m pytest -m "gpu and gpu_runs"      whole runs: timing, ceilings, suites, dist
GPU_PARTS = {
    "gpu_kernels": {
        "test_triton_fa2.py", "test_piecewise_kernel.py", "test_decode_kernel.py",
        "test_cuda_fa.py", "test_fp8_kernel.py",
    },
    "gpu_backends": {"test_flash_attn.py", "test_fa4_flex_gpu.py", "test_registry.py"},
    "gpu_runs": {"test_gpu_core.py", "test_gpu_timing.py", "test_gpu_piecewise.py", "test_dist.py"},
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu"):
            part = [p for p, files in GPU_PARTS.items() if item.path.name in files]
            item.add_marker(getattr(pytest.mark, part[0] if part else "gpu_runs"))
