"""Autotuning that is kept across runs, so a second run times the same kernel.

``autotune(name, configs, key, prune)`` replaces ``triton.autotune`` on the tuned kernels
(triton_fa2's ``fwd``, ``bwd_dkdv``, ``bwd_dq``; piecewise's ``piecewise_*``). Candidates are
timed with the timer the harness registered (:func:`set_bench`, called by the backends before
their first launch: attnbench's one timer, L2 flushed, host launch hidden, >= 100 reps), else
with Triton's ``do_bench``; the kernels never import the harness. Each choice is stored in a
JSON file keyed by

    GPU name | torch version | triton version  ->  kernel  ->  tuning key  ->  config

(:func:`env_key`; the tuning key is Triton's: the ``key`` arguments plus the dtypes of the tensor
arguments). A stored choice is reused only while it is still one of the kernel's candidates.

- file: ``$ATTNBENCH_TUNING_CACHE``, else ``$XDG_CACHE_HOME/attnbench/tuning.json``, else
  ``~/.cache/attnbench/tuning.json`` (the ``tuning_cache`` switch);
- shipped choices: ``tuning_data/*.json`` beside this module (package data, the same layout,
  e.g. the H200's, made by GPU sessions) stand in for the file where it has no choice for a
  key of the same env key (same GPU name, torch and triton versions); read-only, never written;
- ``ATTNBENCH_RETUNE=1`` (``attnbench perf --retune``, the ``retune`` switch) ignores stored and
  shipped choices, tunes again and overwrites the file's.

A kernel whose config is picked on the host rather than by ``triton.autotune`` (one that changes
the grid or a second launch, like the decode kernel's splits) keeps its choices in the same file
through :func:`choose` (or :func:`lookup`, :func:`bench` and :func:`remember` on its own).

Before a new tuning key is timed, its candidates are compiled in parallel threads
(:func:`precompile`, Triton's ``AsyncCompileMode``); the timing then finds them compiled. Triton's
own autotuner compiles each candidate at its first timed call, one after the other: the piecewise
kernels' candidates (up to 11-13 per kernel) took 133-165 s per new (head dim, causal, dtype) on the
H200 (2026-12-02). Offline, ``triton.compile`` of four piecewise dK/dV candidates for sm_90 took
41 s one after the other and 20 s in two threads on a 2-core machine (the compiler and ptxas
release the GIL). On the H200 (16 cores) a new piecewise family then tuned in 32 s (head dim 64)
and 46 s (128), a later session's ``first_call_s``. ``ATTNBENCH_PRECOMPILE=0`` turns it off.

Triton's own ``cache_results=True`` (triton 3.6) stores timings in Triton's kernel cache keyed by
the compile target (``cuda:90`` for both H100 and H200) and not by torch version; it cannot be
forced to re-tune short of deleting the compiled kernels too, so it is not used here.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path

import torch
from triton.runtime.autotuner import Autotuner, Config

from .. import switches
from . import configs as _configs

ENV_FILE = switches.ENV["tuning_cache"][0]
ENV_RETUNE = switches.ENV["retune"][0]
ENV_PRECOMPILE = switches.ENV["precompile"][0]


def cache_path() -> Path:
    if switches.text("tuning_cache"):
        return Path(switches.text("tuning_cache"))
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnbench" / "tuning.json"


def retune() -> bool:
    return switches.on("retune")


def env_key() -> str:
    """GPU name and the software versions a tuning choice is valid for:
    ``"NVIDIA H200 | torch 2.11.0+cu130 | triton 3.6.0"`` (``cpu`` without a GPU)."""
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"{gpu} | torch {torch.__version__} | triton {triton.__version__}"


def config_dict(cfg: Config) -> dict:
    return dict(
        kwargs=dict(cfg.kwargs),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        num_ctas=cfg.num_ctas,
        maxnreg=cfg.maxnreg,
    )


def describe(cfg: Config | None) -> str | None:
    """``128x64 w8 s3`` (the ``BLOCK_*`` kwargs joined by x; warps; stages) of a config; other
    kwargs follow as their initials and value (``BAND_STAGES=2`` -> ``bs2``) when they are not
    just the number of stages again, a true flag as its name's first two letters
    (``SPLIT_BAND=True`` -> ``sp``, a false one not at all) and a flag's numbered variant as
    those letters and the number (``SPLIT_BAND=2`` -> ``sp2``): without the spaces, a piecewise
    tile spec (``64x128w8s3bs2``, ``64x128w8s2sp``, ``64x128w8s2sp2``)."""
    if cfg is None:
        return None
    blocks = [v for k, v in cfg.kwargs.items() if k.startswith("BLOCK")]
    tiles = "x".join(str(v) for v in blocks or cfg.kwargs.values())
    extra = "".join(
        f" {_kwarg_tag(k, v)}"
        for k, v in cfg.kwargs.items()
        if blocks
        and not k.startswith("BLOCK")
        and not (k.endswith("STAGES") and v == cfg.num_stages)
        and v is not False
    )
    return f"{tiles} w{cfg.num_warps} s{cfg.num_stages}{extra}"


def chosen_configs(autotuned: dict) -> dict[str, str | None]:
    """{name: :func:`describe` of the config it last ran with} of {name: autotuned kernel}."""
    return {n: describe(getattr(k, "best_config", None)) for n, k in autotuned.items()}


FLAGS = ("SPLIT_BAND",)  # kwargs that are flags with numbered variants (piecewise's sp / sp2)


def _kwarg_tag(name: str, value) -> str:
    if value is True:
        return name[:2].lower()
    if name in FLAGS:
        return f"{name[:2].lower()}{value}"
    return f"{''.join(w[0] for w in name.lower().split('_'))}{value}"


def load(path: Path | None = None) -> dict:
    p = path or cache_path()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(env: str, kernel: str, choices: dict[tuple, Config], path: Path | None = None) -> None:
    """Merge ``choices`` into the file (read, update, atomic replace). The shipped files are
    never written (OSError)."""
    p = path or cache_path()
    if _is_shipped(p):
        raise OSError(f"{p}: the shipped tuning choices are read-only")
    data = load(p)
    entries = data.setdefault(env, {}).setdefault(kernel, {})
    for key, cfg in choices.items():
        entries[json.dumps(list(key))] = config_dict(cfg)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, p)


def _choices(data: dict, env: str, kernel: str, candidates: list[Config]) -> dict:
    by_dict = {json.dumps(config_dict(c), sort_keys=True): c for c in candidates}
    out = {}
    entries = data.get(env, {}).get(kernel, {})
    for key, d in entries.items() if isinstance(entries, dict) else ():
        cfg = by_dict.get(json.dumps(d, sort_keys=True))
        if cfg is not None:
            out[tuple(json.loads(key))] = cfg
    return out


def stored_choices(env: str, kernel: str, candidates: list[Config], path=None) -> dict:
    """{tuning key: candidate Config} of the file's choices that are still candidates."""
    return _choices(load(path), env, kernel, candidates)


SHIPPED = "tuning_data"  # package data beside this module: {env key: {kernel: {key: config}}}


def shipped_files() -> list:
    """The shipped choice files (``tuning_data/*.json``), in name order."""
    folder = resources.files(__package__).joinpath(SHIPPED)
    if not folder.is_dir():
        return []
    return sorted((f for f in folder.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)


def _is_shipped(p: Path) -> bool:
    folder = resources.files(__package__).joinpath(SHIPPED)
    try:
        return Path(str(folder)).resolve() in Path(p).resolve().parents
    except (OSError, ValueError):
        return False


@functools.cache
def shipped() -> dict:
    """The shipped choices of every file merged (read once per process; a broken file is
    skipped)."""
    merged: dict = {}
    for f in shipped_files():
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for env, kernels in data.items() if isinstance(data, dict) else ():
            for kernel, entries in kernels.items():
                merged.setdefault(env, {}).setdefault(kernel, {}).update(entries)
    return merged


def shipped_choices(env: str, kernel: str, candidates: list[Config]) -> dict:
    """{tuning key: candidate Config} of the shipped choices for ``env`` still candidates."""
    return _choices(shipped(), env, kernel, candidates)


def known_choices(env: str, kernel: str, candidates: list[Config]) -> dict:
    """The choices a launch starts from: the shipped ones, overridden by the file's; none while
    :func:`retune` is on."""
    if retune():
        return {}
    return {**shipped_choices(env, kernel, candidates), **stored_choices(env, kernel, candidates)}


def lookup(kernel: str, key, candidates: list[Config]) -> Config | None:
    """The known choice (:func:`known_choices`) of ``kernel`` for the tuning ``key`` on this
    GPU and software, or None: for a tuner of its own (reads the files at each call, so keep
    the answer in memory)."""
    return known_choices(env_key(), kernel, candidates).get(tuple(key))


def remember(kernel: str, key, cfg: Config) -> None:
    """Store a tuned choice of ``kernel`` for ``key`` in the tuning file (:func:`store`); a
    read-only file is not an error (the choice is just not kept)."""
    try:
        store(env_key(), kernel, {tuple(key): cfg})
    except OSError:
        pass


def precompile(fn, args, kwargs: dict, configs: list[Config], workers: int | None = None) -> int:
    """Compile ``fn`` (a ``JITFunction`` or ``Heuristics``) under each of ``configs`` for these
    launch arguments, in ``workers`` threads, without launching it: ``run(warmup=True)`` under
    Triton's ``AsyncCompileMode``, whose exit waits for every compile and puts the kernels in the
    JIT cache under the keys the timed launches look up. A candidate that fails (out of
    resources, a compile error) is skipped: its timed launch fails as it would have. Returns the
    number of candidates submitted."""
    from concurrent.futures import ThreadPoolExecutor

    from triton import AsyncCompileMode

    workers = workers or max(1, min(len(configs), os.cpu_count() or 1))
    submitted = 0
    pool = ThreadPoolExecutor(workers)
    mode = AsyncCompileMode(pool, ignore_errors=True)
    try:
        with mode:
            try:
                for cfg in configs:
                    try:
                        fn.run(*args, **{**kwargs, **cfg.all_kwargs(), "warmup": True})
                        submitted += 1
                    except Exception:  # noqa: BLE001  (the timed launch reports it)
                        continue
            except BaseException:
                _drop_queued(pool, mode)  # before the mode's exit waits for every compile
                raise
    except BaseException:
        _drop_queued(pool, mode)
        from triton.runtime._async_compile import active_mode

        if active_mode.get() is mode:  # stopped inside the mode's exit, before it cleared this
            active_mode.set(None)
        raise
    pool.shutdown()
    return submitted


def _drop_queued(pool, mode) -> None:
    """Ctrl-C or SIGTERM during :func:`precompile`: the compiles not yet started never start,
    so the run's summary line is not held up by the rest of the table (a whole table takes
    tens of seconds; the compiles already running finish in their threads). A future the
    shutdown cancels notifies no waiter until ``set_running_or_notify_cancel`` (what a worker
    would call), and the mode's exit waits on each of them."""
    pool.shutdown(wait=False, cancel_futures=True)
    for future in mode.raw_futures:
        if future.cancelled():
            try:
                future.set_running_or_notify_cancel()
            except RuntimeError:  # already notified
                pass


def precompile_on() -> bool:
    return switches.on("precompile") and not _configs.INTERPRET and torch.cuda.is_available()


class PersistentAutotuner(Autotuner):
    """``triton.autotune``'s Autotuner, with its choices restored from and saved to the file."""

    def __init__(self, *args, tuning_name: str, tune_env: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tuning_name = tuning_name
        self.tune_env = tune_env  # the pruner's on/off switch (.configs.make_pruner)
        self._tuning = self._tune_switch()
        self._restored = False

    def _tune_switch(self) -> bool | None:
        return _configs.tune_on(self.tune_env) if self.tune_env else None

    def run(self, *args, **kwargs):
        switch = self._tune_switch()
        if switch != self._tuning:
            # the switch flipped since the last launch (the GPU tests turn tuning off, one test
            # turns it on): the lone choices made with it off must not stand in for a tuning
            self._tuning = switch
            self.cache.clear()
            self._restored = False
        if not self._restored:
            self._restored = True
            if len(self.configs) > 1:  # shipped, then the file's (none with --retune)
                self.cache.update(known_choices(env_key(), self.tuning_name, self.configs))
        before = set(self.cache)
        ret = super().run(*args, **kwargs)
        new = {k: self.cache[k] for k in set(self.cache) - before}
        # keep only choices won against another candidate: a lone config (tuning off, or the
        # pruner left one) says nothing and must not stand in for a real tuning later
        contested = len(getattr(self, "configs_timings", None) or {}) > 1
        if new and contested:
            try:
                store(env_key(), self.tuning_name, new)
            except OSError:  # a read-only home: tuning still works, it is just not kept
                pass
        return ret

    def prune_configs(self, kwargs):
        """Triton's pruning; then, for a launch about to be tuned, the survivors compiled in
        parallel (:func:`precompile`)."""
        configs = super().prune_configs(kwargs)
        if len(configs) > 1 and kwargs.get("warmup") is False and precompile_on():
            try:
                precompile(self.fn, list(self.nargs.values()), kwargs, configs)
            except Exception:  # noqa: BLE001  (the timing compiles each candidate, as before)
                pass
        return configs


_bench_fn = None  # the registered timer (set_bench)


def set_bench(fn):
    """Time autotuning candidates with ``fn(kernel_call, quantiles)`` (``do_bench``'s contract:
    ms, or a list of ms per quantile); None: Triton's ``do_bench``. The harness registers its
    timer here (the backends, before their first launch); returns the previous one."""
    global _bench_fn
    previous, _bench_fn = _bench_fn, fn
    return previous


def bench(kernel_call, quantiles=None):
    """Time ``kernel_call`` with the registered timer, else Triton's ``do_bench``."""
    fn = _bench_fn
    if fn is None:
        from triton.testing import do_bench

        return do_bench(kernel_call, quantiles=quantiles)
    return fn(kernel_call, quantiles)


def choose(kernel: str, key, candidates: list[Config], launch, tune_env: str | None = None):
    """The config of a kernel picked on the host, for the tuning ``key`` (a tuple of plain
    values): what ``triton.autotune`` cannot do where a config changes the grid or a second
    launch (the decode kernel's split count). The known choice (:func:`lookup`: the file's,
    else the shipped one); else, while the switch ``tune_env`` is on (None: always), each
    candidate timed as ``launch(cfg)`` with :func:`bench` (one that fails to launch is left
    out) and the fastest :func:`remember`-ed; else the first. Reads the files: keep the answer
    in memory per key."""
    if len(candidates) == 1:
        return candidates[0]
    known = lookup(kernel, key, candidates)
    if known is not None:
        return known
    if tune_env is not None and not _configs.tune_on(tune_env):
        return candidates[0]
    times = {}
    for i, cfg in enumerate(candidates):
        try:
            times[i] = bench(lambda cfg=cfg: launch(cfg))
        except Exception:  # noqa: BLE001  (out of resources here: not a candidate)
            continue
    if not times:
        return candidates[0]
    best = candidates[min(times, key=times.get)]
    if len(times) > 1:
        remember(kernel, key, best)
    return best


def autotune(name: str, configs: list[Config], key: list[str], prune):
    """Decorator like ``triton.autotune(configs, key, prune_configs_by=...)``, kept across runs."""

    def deco(fn):
        return PersistentAutotuner(
            fn,
            fn.arg_names,
            configs,
            key,
            None,
            None,
            prune_configs_by={"early_config_prune": prune},
            do_bench=bench,
            tuning_name=name,
            tune_env=getattr(prune, "tune_env", None),
        )

    return deco
