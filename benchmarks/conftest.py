"""pytest-benchmark regression suite for llama_fast: options, case parametrization, baselines, hashes.

See docs/BENCHMARKS.md. Without CUDA every case is skipped unless --bench-device cpu is given (and
--benchmark-compare then has nothing to compare: the run passes and says why).
"""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

import bench_support as bs
import inject
from llama_fast import harness, parallel
from llama_fast.api import load_model, output_hash

NO_CUDA_REASON = "CUDA not available; use --bench-device cpu to test the machinery"
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's own default for --benchmark-storage


def _patch_storage_location():
    """pytest-benchmark (5.2.3) formats FileStorage.location as a path relative to the cwd when it warns that
    machine_info differs (it always does here: the commit is part of it); a storage outside the cwd (CI keeps
    it in $RUNNER_TEMP) then crashes with INTERNALERROR. Fall back to the absolute path."""
    try:
        from pytest_benchmark.storage.file import FileStorage
    except ImportError:
        return
    original = FileStorage.__dict__.get("location")
    if not isinstance(original, property) or getattr(original.fget, "_llama_fast", False):
        return

    def location(self):
        try:
            return original.fget(self)
        except ValueError:
            return str(self.path)

    location._llama_fast = True
    FileStorage.location = property(location)


def pytest_addoption(parser):
    g = parser.getgroup("llama_fast benchmarks")
    g.addoption("--bench-device", choices=["cuda", "cpu"], default="cuda",
                help="cuda (default; every case skipped without CUDA) or cpu (tiny workload, tests the machinery)")
    g.addoption("--bench-model", default=None,
                help=f"model name (default: {bs.SEED_MODEL} if in the local HF cache, else {bs.SEED_FALLBACK}; "
                     f"CPU mode: {bs.CPU_MODEL})")
    g.addoption("--bench-dtype", default=None, help="comma list of dtypes (default: fp16 on cuda, fp32 on cpu)")
    g.addoption("--bench-sweep", action="store_true",
                help="full sweep: every ablation row x batch 1..64 x prompt 100..4000 (hours on one GPU)")
    g.addoption("--bench-variants", default=None,
                help="comma list of variants (harness.VARIANTS keys), each over the default set's workloads")
    g.addoption("--bench-quantize", default=None, metavar="SCHEMES",
                help="comma list of llama_fast.quant schemes (int8, int4, int4:g32, int4:g64, int4:g128): every "
                     "llama_fast case also runs over each scheme's weights (id suffix -int8, -int4g128, ...)")
    g.addoption("--bench-rounds", type=int, default=3, help="timed rounds per llama_fast case (default 3)")
    g.addoption("--bench-warmup", type=int, default=1,
                help="untimed warm-up rounds inside pedantic, after the compile call (default 1; a prefill that "
                     "fits one chunk captures its CUDA graph in the second call)")
    g.addoption("--bench-reference-rounds", type=int, default=1,
                help="timed rounds per transformers case, no warm-up round (default 1: transformers is the "
                     "reference, never gated; its warm-up call already ran the whole workload)")
    g.addoption("--bench-update-hashes", action="store_true",
                help="record this run's output hashes in the hash file instead of checking them")
    g.addoption("--bench-hashes", default=str(bs.HASH_FILE), help="expected-hash file (default: %(default)s)")
    g.addoption("--bench-shard", default=None, metavar="I/N",
                help="run only cases k with k %% N == I (one process per GPU; see benchmarks/shard.py)")
    g.addoption("--bench-inject-slowdown", type=float, default=0.0, metavar="FRACTION",
                help="TEST ONLY: a calibrated delay after every decode step (a GPU sleep kernel on the step's "
                     "stream; a host sleep on CPU) so a llama_fast call takes (1+FRACTION)x as long; proves the "
                     "regression gate fires (benchmarks/inject.py)")
    g.addoption("--bench-threads", type=int, default=None, help="CPU mode: torch.set_num_threads")
    g.addoption("--bench-tp", type=int, default=1, metavar="N",
                help="tensor parallel over N ranks, launched by torchrun --nproc-per-node N -m pytest benchmarks/ "
                     "--bench-tp N: every llama_fast case loads the rank's shard (transformers rows are dropped; "
                     "it still checks correctness, whole, on each rank); memory is per rank against its shard's "
                     "budget; rank 0 alone saves the benchmark JSON and hashes; baselines under "
                     ".benchmarks/<gpu>-tpN/ (default: 1)")


# ------------------------------------------------------------------------------------------- configure
def pytest_configure(config):
    if not _is_bench_run(config):
        return
    _patch_storage_location()
    from llama_fast.api import limit_cublas_workspace

    limit_cublas_workspace()  # the memory budgets assume it; set before any case touches cuBLAS
    device = config.getoption("bench_device")
    st = config.stash
    st[KEY_DEVICE] = device
    cuda_ok = torch.cuda.is_available()
    st[KEY_SKIP] = NO_CUDA_REASON if device == "cuda" and not cuda_ok else None
    if st[KEY_SKIP] and "s" not in (config.option.reportchars or ""):
        config.option.reportchars = (config.option.reportchars or "") + "s"  # print the skip reason
    # Every case skipped: there is nothing to compare, so --benchmark-compare is dropped before
    # pytest-benchmark (its own trylast pytest_configure) looks for a baseline, and the run passes with the reason.
    st[KEY_NOTHING_TO_COMPARE] = bool(st[KEY_SKIP] and config.option.benchmark_compare)
    if st[KEY_NOTHING_TO_COMPARE]:
        config.option.benchmark_compare = []
        config.option.benchmark_compare_fail = None
    model = config.getoption("bench_model")
    why = "--bench-model"
    if model is None:
        model, why = bs.default_model(device)
    st[KEY_MODEL] = (model, why)
    dtypes = config.getoption("bench_dtype") or ("fp16" if device == "cuda" else "fp32")
    dtypes = [d.strip() for d in dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in bs.DTYPE_NAMES]
    if bad:
        raise pytest.UsageError(f"--bench-dtype: unknown {bad} (choose from {', '.join(bs.DTYPE_NAMES)})")
    st[KEY_DTYPES] = dtypes
    if config.getoption("bench_inject_slowdown") < 0:
        raise pytest.UsageError("--bench-inject-slowdown: the fraction must be >= 0")
    for name in ("bench_rounds", "bench_reference_rounds"):
        if config.getoption(name) < 1:
            raise pytest.UsageError(f"--{name.replace('_', '-')}: at least 1 timed round")
    variants = config.getoption("bench_variants")
    if variants:
        variants = [v.strip() for v in variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in harness.VARIANTS]
        if unknown:
            raise pytest.UsageError(f"--bench-variants: unknown {unknown} (known: {', '.join(harness.VARIANTS)})")
    try:
        schemes = bs.parse_quantize(config.getoption("bench_quantize"))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    st[KEY_QUANTIZE] = schemes
    st[KEY_CASES] = bs.build_cases(device, dtypes, config.getoption("bench_sweep"), variants, schemes)
    _configure_tp(config, model, device)
    shard = config.getoption("bench_shard")
    if shard:
        try:
            st[KEY_SHARD] = bs.parse_shard(shard)
        except ValueError as e:
            raise pytest.UsageError(str(e)) from None
    if config.getoption("bench_threads"):
        torch.set_num_threads(config.getoption("bench_threads"))
    if cuda_ok:  # fp32 cases must be real fp32 to be compared token for token with transformers
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # Baselines per GPU model: pytest-benchmark's storage (read in its own trylast pytest_configure) moves to
    # .benchmarks/<gpu-slug>/ unless the user chose a storage, so an A10G baseline never meets an H100 run.
    slug = None if st[KEY_SKIP] else harness.device_slug(device)
    if slug and st[KEY_TP] > 1:  # a tensor-parallel run is never compared with a one-GPU baseline
        slug = f"{slug}-tp{st[KEY_TP]}"
    st[KEY_SLUG] = slug
    chosen = config.option.benchmark_storage
    st[KEY_USER_STORAGE] = None if chosen == DEFAULT_STORAGE else chosen
    if slug and chosen == DEFAULT_STORAGE:
        config.option.benchmark_storage = f"file://{config.rootpath / '.benchmarks' / slug}"


def _configure_tp(config, model: str, device: str):
    """--bench-tp: checked (UsageError, one line) before any rank meets the others; the cases reduced to
    llama_fast's; a rank other than 0 writes no benchmark JSON and saves no run."""
    st = config.stash
    tp, world = config.getoption("bench_tp"), parallel.env_world()
    st[KEY_TP], st[KEY_RANK] = tp, (world[0] if world and tp > 1 else 0)
    try:
        bs.check_bench_tp(tp, world, config.getoption("bench_shard"))
        if tp > 1:
            from llama_fast.loading import random_config, read_config, resolve_checkpoint

            cfg = random_config(model) if bs.is_random(model) else read_config(resolve_checkpoint(model), model)
            parallel.check_plan(cfg, tp, torch.device(device))  # with $LLAMA_FAST_TP_HEAD / _ALLREDUCE
    except (ValueError, parallel.ParallelError) as e:
        msg = str(e)
        raise pytest.UsageError(f"--bench-{msg}" if msg.startswith("tp ") else msg) from None
    st[KEY_CASES] = bs.tp_cases(st[KEY_CASES], tp)
    if st[KEY_RANK] != 0:
        if config.option.benchmark_json is not None:
            config.option.benchmark_json.close()
        config.option.benchmark_json = None
        config.option.benchmark_save = config.option.benchmark_autosave = None


KEY_DEVICE = pytest.StashKey[str]()
KEY_SKIP = pytest.StashKey[object]()
KEY_MODEL = pytest.StashKey[tuple]()
KEY_DTYPES = pytest.StashKey[list]()
KEY_CASES = pytest.StashKey[list]()
KEY_QUANTIZE = pytest.StashKey[list]()
KEY_SHARD = pytest.StashKey[tuple]()
KEY_SLUG = pytest.StashKey[object]()
KEY_USER_STORAGE = pytest.StashKey[object]()
KEY_NOTHING_TO_COMPARE = pytest.StashKey[bool]()
KEY_CTX = pytest.StashKey[object]()
KEY_TP = pytest.StashKey[int]()
KEY_RANK = pytest.StashKey[int]()


def _is_bench_run(config) -> bool:
    return hasattr(config.option, "benchmark_storage")  # pytest-benchmark is loaded (not -p no:benchmark)


def _storage(config) -> str:
    return str(getattr(config.option, "benchmark_storage", "?"))


def pytest_report_header(config):
    st = config.stash
    if KEY_MODEL not in st:
        return None
    model, why = st[KEY_MODEL]
    device = st[KEY_DEVICE]
    dev_name = st[KEY_SKIP] or harness.device_name(torch.device(device if device == "cpu" else "cuda"))
    lines = [f"llama_fast benchmarks: model={model} ({why}); device={device}: {dev_name}; "
             f"dtype={','.join(st[KEY_DTYPES])}"
             + (f"; quantize={','.join(st[KEY_QUANTIZE])}" if st[KEY_QUANTIZE] else ""),
             f"  cases: {len(st[KEY_CASES])} ({'sweep' if config.getoption('bench_sweep') else 'default set'}); "
             f"rounds={config.getoption('bench_rounds')} warmup={config.getoption('bench_warmup')} "
             f"(transformers: {config.getoption('bench_reference_rounds')}, no warm-up round); "
             f"storage={_storage(config)}; hashes={config.getoption('bench_hashes')}"]
    if st[KEY_NOTHING_TO_COMPARE]:
        lines.append(f"  --benchmark-compare: {nothing_to_compare(st[KEY_SKIP])}")
    if config.getoption("bench_inject_slowdown"):
        lines.append(f"  TEST ONLY: injected slowdown +{config.getoption('bench_inject_slowdown'):.0%} per llama_fast call")
    if KEY_SHARD in st:
        lines.append(f"  shard {st[KEY_SHARD][0]}/{st[KEY_SHARD][1]}")
    if st[KEY_TP] > 1:
        lines.append(f"  tensor parallel: rank {st[KEY_RANK]} of {st[KEY_TP]} (llama_fast cases only; memory per rank)")
    return lines


def nothing_to_compare(reason: str) -> str:
    return f"nothing to compare, every benchmark case is skipped ({reason})"


def pytest_sessionstart(session):
    """Fail closed: --benchmark-compare with no baseline to compare against is an error, not a warning.
    (Without CUDA every case is skipped and pytest_configure has already dropped the comparison.)"""
    config = session.config
    bench = getattr(config, "_benchmarksession", None)  # pytest-benchmark's BenchmarkSession
    if KEY_MODEL not in config.stash or bench is None or not bench.compare or bench.compared_mapping:
        return
    device = torch.device("cuda" if config.stash[KEY_DEVICE] == "cuda" else "cpu")
    save_options = [f"--benchmark-storage={config.stash[KEY_USER_STORAGE]}"] if config.stash[KEY_USER_STORAGE] else []
    if device.type == "cpu":
        save_options.append("--bench-device cpu")
    raise pytest.UsageError(bs.no_baseline_message(
        harness.device_name(device), harness.device_family(device), bench.compare,
        bs.storage_searched(bench.storage, bench.compare), tuple(save_options)))


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames and KEY_CASES in metafunc.config.stash:
        cases = metafunc.config.stash[KEY_CASES]
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def _bench_items(items):
    return [it for it in items if BENCH_DIR in Path(str(it.path)).resolve().parents]


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: shards split what was selected
def pytest_collection_modifyitems(config, items):
    st = config.stash
    if KEY_MODEL not in st:
        return
    bench = _bench_items(items)
    if KEY_SHARD in st:
        i, n = st[KEY_SHARD]
        kept, dropped = bs.shard_select(bench, i, n)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            dropped_ids = {id(it) for it in dropped}
            items[:] = [it for it in items if id(it) not in dropped_ids]
    if st[KEY_SKIP]:
        for it in _bench_items(items):
            it.add_marker(pytest.mark.skip(reason=st[KEY_SKIP]))


# ------------------------------------------------------------------------------------------- pytest-benchmark
def pytest_benchmark_update_machine_info(config, machine_info):
    st = config.stash
    if KEY_MODEL not in st:
        return
    device = st[KEY_DEVICE]
    info = harness.environment_info(device if device == "cpu" or not st[KEY_SKIP] else "cpu")
    info.update(commit=harness.git_commit(str(config.rootpath)), model=st[KEY_MODEL][0],
                dtypes=st[KEY_DTYPES], storage_slug=st[KEY_SLUG], shard=config.getoption("bench_shard"),
                injected_slowdown=config.getoption("bench_inject_slowdown") or None, tp=st[KEY_TP])
    machine_info["llama_fast"] = info


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Never compare runs from different GPU models (pytest-benchmark itself only warns)."""
    ours = (machine_info.get("llama_fast") or {})
    theirs = (compared_benchmark.get("machine_info", {}).get("llama_fast") or {})
    if ours and theirs and (ours.get("gpu_name"), ours.get("device_family")) != \
            (theirs.get("gpu_name"), theirs.get("device_family")):
        raise pytest.UsageError(
            f"baseline is from {theirs.get('gpu_name') or theirs.get('device')}, this run is on "
            f"{ours.get('gpu_name') or ours.get('device')}: refusing to compare different GPU models")


# ------------------------------------------------------------------------------------------- run context
class BenchContext:
    """Loads each model once per run and weights (dtype, quantization scheme: the previous pair's models are dropped
    before the next loads), and each peak-memory figure holds one model: llama_fast is dropped while a
    transformers row is timed; while llama_fast is timed, transformers (needed by the correctness checks) stays on
    the device where bench_support.transformers_may_stay allows it, its bytes (measured as it arrived on the
    device) taken off the measured peak; otherwise it is parked on the CPU."""

    def __init__(self, config):
        st = config.stash
        self.config = config
        self.model, _ = st[KEY_MODEL]
        self.device = torch.device("cuda" if st[KEY_DEVICE] == "cuda" else "cpu")
        self.tp, self.rank = st[KEY_TP], st[KEY_RANK]
        if self.tp > 1:  # each rank on its own GPU (cuda:LOCAL_RANK)
            self.device = parallel.rank_device(self.device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        self.family = harness.device_family(self.device)
        self.book = bs.HashBook(config.getoption("bench_hashes"))
        self.update = config.getoption("bench_update_hashes")
        self.inject = config.getoption("bench_inject_slowdown") or 0.0
        self.rounds = config.getoption("bench_rounds")
        self.warmup = config.getoption("bench_warmup")
        self.reference_rounds = config.getoption("bench_reference_rounds")
        self._cfg = None
        self._tokenizer = None
        self._weights = None  # (dtype, quantize) of the models held
        self._fast = None
        self._hf = None
        self._hf_on_device = False
        self._hf_bytes = 0  # device bytes transformers' weights took when they arrived on the device
        self._refs: dict = {}
        self._ceilings: dict = {}

    # --- model config / tokenizer without loading weights
    @property
    def cfg(self):
        """The model's config; under --bench-tp N the rank's shard (its weights, KV heads and MLP slice: what its
        memory budget and its roofline count)."""
        if self._cfg is None:
            from llama_fast.loading import random_config, read_config, resolve_checkpoint

            self._cfg = (random_config(self.model) if bs.is_random(self.model)
                         else read_config(resolve_checkpoint(self.model), self.model))
            if self.tp > 1:
                self._cfg = parallel.shard_config(self._cfg, self.tp, parallel.head_mode())
        return self._cfg

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from llama_fast import loading

            self._tokenizer = loading.load_tokenizer(self.model)
        return self._tokenizer

    # --- models
    def _free(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _drop_models(self):
        self._fast = self._hf = None
        self._hf_on_device = False
        torch._dynamo.reset()
        self._free()

    def _switch_weights(self, dtype, quantize: str | None):
        """Hold the models of one (dtype, scheme) at a time: the previous pair is dropped before another loads."""
        if (dtype, quantize) != self._weights:
            self._drop_models()
            self._weights = (dtype, quantize)

    def fast(self, dtype, quantize: str | None = None, budget_bytes: int = 0):
        """Our model over the scheme's weights on the device, for a case whose peak may reach budget_bytes (see the
        class docstring)."""
        self._switch_weights(dtype, quantize)
        if not self._room_for_hf(budget_bytes):
            self.park_hf()
        if self._fast is None:
            try:
                self._fast = load_model(self.model, self.device, dtype, quantize=quantize, tp=self.tp)
            except parallel.ParallelError as e:  # refused identically on every rank, before any collective
                pytest.skip(f"--bench-tp {self.tp}: {e}")
        return self._fast

    def _allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def _room_for_hf(self, budget_bytes: int) -> bool:
        if self.device.type != "cuda" or self._hf is None or not self._hf_on_device:
            return False
        total = torch.cuda.get_device_properties(self.device).total_memory
        return bs.transformers_may_stay(total, self._hf_bytes, budget_bytes)

    @property
    def other_model_bytes(self) -> int:
        """Device bytes of transformers' weights while they sit beside our model (0 when parked or not loaded)."""
        if self.device.type != "cuda" or self._hf is None or not self._hf_on_device:
            return 0
        return self._hf_bytes

    def hf(self, dtype, quantize: str | None = None, exclusive: bool = False):
        """The transformers model on the device (exclusive: our model dropped first, for its timing); with a scheme,
        over the same quantized weights dequantized, so that a check compares like with like."""
        from llama_fast.loading import load_hf_model

        self._switch_weights(dtype, quantize)
        if exclusive and self._fast is not None:
            self._fast = None
            torch._dynamo.reset()
            self._free()
        if self._hf is None or not self._hf_on_device:
            before = self._allocated()
            if self._hf is None:
                self._hf = load_hf_model(self.model, self.device, dtype, quantize=quantize)
            else:
                self._hf.to(self.device)
            self._hf_bytes = self._allocated() - before
        self._hf_on_device = True
        return self._hf

    def park_hf(self):
        if self._hf is not None and self._hf_on_device and self.device.type != "cpu":
            self._hf.to("cpu")
            self._free()
        self._hf_on_device = self.device.type == "cpu" and self._hf is not None

    # --- reference and checks
    def reference(self, case: bs.Case) -> bs.Reference:
        """transformers' plain greedy generate on this workload (computed once per workload, scheme and dtype)."""
        key = (case.workload_key, case.dtype)
        if key not in self._refs:
            hf = self.hf(case.torch_dtype, case.quantize)
            runner = harness.hf_runner(hf, self.tokenizer, harness.VARIANTS[bs.REFERENCE], case.workload)
            out = runner(case.workload.prompt()).cpu()
            self._refs[key] = bs.Reference(out, output_hash(self.tokenizer, out))
        return self._refs[key]

    def set_reference(self, case: bs.Case, out: torch.Tensor, h: str):
        self._refs[(case.workload_key, case.dtype)] = bs.Reference(out, h)

    def teacher_forced(self, case: bs.Case, output_ids: torch.Tensor, tol: float):
        hf = self.hf(case.torch_dtype, case.quantize)
        ok, first, worst = True, None, 0.0
        for r in range(0, output_ids.shape[0], bs.TEACHER_FORCED_ROWS):
            ok_r, first_r, gap_r = harness.teacher_forced_check(hf, output_ids[r:r + bs.TEACHER_FORCED_ROWS],
                                                                case.workload.prompt_len, tol)
            worst = max(worst, gap_r)
            if not ok_r and (first is None or first_r < first):
                ok, first = False, first_r
        return ok, first, worst

    @torch.no_grad()
    def nucleus(self, case: bs.Case, output_ids: torch.Tensor, tol: float):
        """bench_support.nucleus_check of a sampled case's output against transformers' logits, teacher-forced over
        it (as teacher_forced does), a few rows per forward."""
        hf = self.hf(case.torch_dtype, case.quantize)
        s, prompt_len = case.workload.sampling, case.workload.prompt_len
        ok, first, worst = True, None, 0.0
        for r in range(0, output_ids.shape[0], bs.TEACHER_FORCED_ROWS):
            ids = output_ids[r:r + bs.TEACHER_FORCED_ROWS].to(hf.device)
            logits = hf(ids).logits[:, prompt_len - 1:-1]  # (rows, N, V): predicts each new token
            ok_r, first_r, worst_r = bs.nucleus_check(logits, ids[:, prompt_len:], s.temperature, s.top_p, tol)
            worst = max(worst, worst_r)
            if not ok_r and (first is None or first_r < first):
                ok, first = False, first_r
        return ok, first, worst

    def ceilings(self, dtype):
        if self.device.type == "cpu":  # CPU half matmuls take a slow path: its roofline is indicative only
            dtype = torch.float32
        if dtype not in self._ceilings:
            self._ceilings[dtype] = harness.measure_ceilings(self.device, dtype)
        return self._ceilings[dtype]

    # --- injected slowdown (test only)
    def inject_slowdown(self, fast, call, case: bs.Case) -> dict:
        """Set fast.step_hook to a calibrated delay after each decode step (benchmarks/inject.py) so that a call
        takes (1 + inject) x as long; the extra_info fields that say what was installed ({} when nothing is)."""
        if not self.inject or case.workload.new_tokens < 2:
            return {}
        cal, kind = inject.install(fast, call, self.inject, case.workload.new_tokens - 1, self.device)
        return dict(injected_slowdown=self.inject, injected_measured=cal.measured, injected_units_per_step=cal.units,
                    injected_sleep_rate_per_s=cal.rate.per_s, injected_tried=[list(t) for t in cal.tried],
                    injection=kind)

    def finish(self) -> list[str]:
        return self.book.save() if self.update and self.rank == 0 else []


@pytest.fixture(scope="session")
def bench_ctx(request):
    ctx = BenchContext(request.config)
    request.config.stash[KEY_CTX] = ctx
    yield ctx


def pytest_sessionfinish(session, exitstatus):
    ctx = session.config.stash.get(KEY_CTX, None)
    if ctx is not None:
        session.config.stash[KEY_CTX] = None
        changes = ctx.finish()
        session.config.stash[KEY_HASH_CHANGES] = changes


KEY_HASH_CHANGES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.stash.get(KEY_NOTHING_TO_COMPARE, False):
        terminalreporter.write_line(f"--benchmark-compare: {nothing_to_compare(config.stash[KEY_SKIP])}")
    changes = config.stash.get(KEY_HASH_CHANGES, None)
    if config.getoption("bench_update_hashes", False) and changes is not None:
        tr = terminalreporter
        tr.section("expected hashes (--bench-update-hashes)")
        path = config.getoption("bench_hashes")
        if changes:
            tr.write_line(f"updated {path}: review the diff before committing")
            for line in changes:
                tr.write_line("  " + line)
        else:
            tr.write_line(f"{path}: no change")
