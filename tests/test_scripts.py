"""scripts/: every maintained tool answers --help, imports without CUDA or Triton, has its pure helpers tested
here, and runs a tiny case on the CPU where it can (perf_lab on the CPU; the micro-benchmarks in Triton's
interpreter), so none of them rots unseen."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from llama_fast.config import NAMED_SHAPES

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TOOLS = ["perf_lab", "profile_decode", "fused_bench", "gemv_bench", "attn_bench", "pick_bench", "allreduce_bench"]
OFFLINE_TOOLS = ["sass_probe"]  # need no GPU at all: they compile for one
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (the CPU torch build has none): "
                                                         "the kernels' launch configs live beside the kernels")


def run_tool(name: str, *args: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """python scripts/<name>.py args, with this checkout's llama_fast and no GPU visible."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **env}
    full_env.pop("TRITON_INTERPRET", None)  # the tools set it themselves for --device cpu
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tool(monkeypatch):
    """import a tool (or bench_util) as `python scripts/<tool>.py` would: scripts/ first on sys.path."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module


# ------------------------------------------------------------------------------------------- every tool
def test_scripts_holds_the_maintained_tools_each_listed_in_its_readme():
    names = {p.name for p in SCRIPTS.iterdir() if not p.name.startswith(".") and p.name != "__pycache__"}
    assert names == {"README.md", "install.sh", "bench_util.py"} | {f"{t}.py" for t in TOOLS + OFFLINE_TOOLS}
    readme = (SCRIPTS / "README.md").read_text()
    for name in names - {"README.md"}:
        assert len(re.findall(rf"^\| `{re.escape(name)}` \|", readme, flags=re.M)) == 1, name


@pytest.mark.parametrize("name", TOOLS + OFFLINE_TOOLS)
def test_help_runs(name):
    r = run_tool(name, "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {name}.py") and "--" in r.stdout


def test_tools_import_without_cuda_or_triton():
    """Importing a tool loads neither Triton nor llama_fast.kernels (they are imported where the kernels run),
    so --help and the argument checks work on a CPU box without Triton."""
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\n"
            + "".join(f"import {t}\n" for t in TOOLS + OFFLINE_TOOLS + ["bench_util"])
            + "print(sorted(m for m in ('triton', 'llama_fast.kernels') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(SCRIPTS)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
@pytest.mark.parametrize("name", TOOLS)
def test_without_a_gpu_each_tool_says_so_in_one_line(name):
    r = run_tool(name, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{name}.py: error: ") and "CUDA" in errors[0], r.stderr


# ------------------------------------------------------------------------------------------- bench_util
def test_resolve_variants_reads_keys_and_specs(tool):
    bu = tool("bench_util")
    from llama_fast.harness import VARIANTS

    got = bu.resolve_variants(["fused-gemv-early", "fused-prefill-graph~pdl~graphed_prefill",
                               "gate-up+triton_gemv@256", "hf"], VARIANTS)
    assert list(got) == ["fused-gemv-early", "fused-prefill-graph~pdl~graphed_prefill", "gate-up+triton_gemv@256",
                         "hf"]
    assert got["fused-gemv-early"] == VARIANTS["fused-gemv-early"]
    spec = got["fused-prefill-graph~pdl~graphed_prefill"]
    base = VARIANTS["fused-prefill-graph"]
    assert spec.key == "fused-prefill-graph~pdl~graphed_prefill" and spec.compile == base.compile
    assert not spec.options.pdl and not spec.options.graphed_prefill
    assert spec.options.compiled_glue and spec.options.split_mlp  # the other flags as in the base
    chunked = got["gate-up+triton_gemv@256"]
    assert chunked.options.triton_gemv and chunked.prefill_chunk == 256 and chunked.compile == "static"
    assert got["hf"].is_transformers
    assert "fused-prefill-graph~pdl~graphed_prefill" not in VARIANTS  # the harness's table is left alone


@pytest.mark.parametrize("key,message", [("nope", "unknown variant 'nope'"),
                                         ("fused+turbo", "unknown ForwardOptions flag turbo"),
                                         ("hf+pdl", "transformers baseline"),
                                         ("fused@x", "positive integer"), ("fused@0", "positive integer")])
def test_resolve_variants_names_a_bad_key(tool, key, message):
    bu = tool("bench_util")
    from llama_fast.harness import VARIANTS

    with pytest.raises(ValueError, match=re.escape(message)):
        bu.resolve_variants(["kv", key], VARIANTS)


def test_logger_prints_and_appends(tool, tmp_path, capsys):
    bu = tool("bench_util")
    log = tmp_path / "lab.log"
    log.write_text("earlier\n")
    say = bu.logger(str(log))
    say("one")
    say("two")
    assert capsys.readouterr().out == "one\ntwo\n"
    assert log.read_text() == "earlier\none\ntwo\n"
    bu.logger(None)("three")
    assert capsys.readouterr().out == "three\n" and log.read_text().endswith("two\n")


def test_shapes_rotation_and_the_cpu_timer(tool):
    bu = tool("bench_util")
    from llama_fast.config import NAMED_SHAPES

    assert bu.decode_gemv_shapes(NAMED_SHAPES["llama-7b"]) == {
        "wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008), "head": (32000, 4096)}
    assert bu.decode_gemv_shapes(NAMED_SHAPES["tiny"])["wqkv"] == (128 + 2 * 64, 128)  # GQA: 2 of 4 heads
    made = iter(range(100))
    nxt = bu.rotating(lambda: next(made), 3)
    assert [nxt() for _ in range(7)] == [1, 2, 0, 1, 2, 0, 1]
    calls = []
    t = bu.time_per_call(lambda: calls.append(1), torch.device("cpu"), reps=4, calls=5)
    assert len(calls) == 1 + 4 * 5 and 0 < t < 0.01


def test_kernel_device_sets_the_interpreter_before_the_kernels_load(tool, monkeypatch):
    bu = tool("bench_util")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(sys.modules, "llama_fast.kernels", types.ModuleType("llama_fast.kernels"))
    with pytest.raises(RuntimeError, match="imported before"):
        bu.kernel_device("cpu")
    monkeypatch.delitem(sys.modules, "llama_fast.kernels")
    assert bu.kernel_device("cpu") == torch.device("cpu") and os.environ["TRITON_INTERPRET"] == "1"


@needs_triton
def test_config_override_reaches_the_launch_configs_and_is_undone(tool):
    bu = tool("bench_util")
    from llama_fast.kernels import configs

    wide = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2}
    lookup = bu.trial_lookup({"residual@4096": wide, "attention": {"CHUNK": 64, "num_warps": 2}})
    assert lookup("residual", 4096, 4096) == wide and lookup("residual", 4096, 11008) is None
    assert lookup("attention", 1200, 128) == {"CHUNK": 64, "num_warps": 2} and lookup("swiglu", 1, 2) is None
    pinned_w2 = configs.pinned_config("residual", 4096, 11008)
    with pytest.raises(KeyError):
        with bu.config_override({"residual@4096": wide}):
            assert configs.pinned_config("residual", 4096, 4096) == wide  # wo
            assert configs.pinned_config("residual", 4096, 11008) == pinned_w2  # w2 keeps its pinned config
            raise KeyError("a trial that fails")
    assert configs.CONFIG_OVERRIDE is None
    assert configs.pinned_config("residual", 4096, 4096) == configs.gemv_config("residual", 4096)


# ------------------------------------------------------------------------------------------- perf_lab
def test_perf_lab_trial_sets_name_real_forms_and_start_and_end_pinned(tool):
    perf_lab = tool("perf_lab")
    dense = {"gemv", "rmsnorm", "residual", "swiglu", "qkv_rope"}
    # the small-M GEMM's forms (set 9; quantized: sets 29, 30)
    gemm = {f"gemm16_{kind}{q}" for kind in ("plain", "rmsnorm", "swiglu") for q in ("", "_int8", "_int4")}
    forms = dense | {f"{f}_{q}" for f in dense for q in ("int8", "int4")} | {"attention"} | gemm
    tile = {"BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}
    assert sorted(perf_lab.TRIAL_SETS) == [1, 2, 4, 5, 9, 10, 12, 13, 14, 15, 16, 17, 18, 21, 22, 23, 24, 25, 26,
                                           29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]
    # the rows GEMV's own configs of a quantized form (sets 31, 32: kernels.configs.rows_config)
    forms |= {f"rows_{f}_{q}" for f in dense for q in ("int8", "int4")}
    for number in perf_lab.TRIAL_SETS:
        trials = perf_lab.trial_set(number)
        names = list(trials)
        assert trials[names[0]] == {} and "pinned again" in names, number
        for name, table in trials.items():
            for key, config in table.items():
                # "form", "form@K" (one input width) or "form|n|K" (one shape: bench_util.trial_lookup)
                form, *shape = key.replace("@", "|").split("|")
                assert form in forms and len(shape) in (0, 1, 2) and all(d.isdigit() for d in shape), key
                if form == "attention":
                    # WAVES and STAGES: the GQA attention's span form (attention.span_config)
                    assert set(config) in ({"CHUNK", "num_warps"}, {"CHUNK", "num_warps", "WAVES", "STAGES"}), name
                else:
                    if form in gemm:
                        assert set(config) == tile | {"PER_SM"}, (number, name)
                    else:  # PERSIST: a persistent GEMV (kernels/gemv.py); maxnreg: a register cap
                        assert tile <= set(config) <= tile | {"PERSIST", "maxnreg"}, (number, name)
                    # the sum-of-squares partials take 8 rows at a time; SwiGLU writes none
                    rows = 4 if form.removeprefix("rows_").startswith("swiglu") else 8
                    assert config["BLOCK_N"] % rows == 0 and 128 % config["BLOCK_N"] == 0, (number, name)


def test_perf_lab_arguments(tool, capsys):
    perf_lab = tool("perf_lab")
    args = perf_lab.parse_args(["--device", "cpu", "--variants", "kv,fused@64", "--config-trials", "fused-eager"])
    assert list(args.variants) == ["kv", "fused@64"] and args.variants["fused@64"].prefill_chunk == 64
    assert args.config_trials.key == "fused-eager" and args.trial_set == 1
    assert perf_lab.parse_args(["--device", "cpu", "--quantize", "int4"]).quantize == "int4:g128"
    for bad, message in [(["--variants", "kv,nope"], "unknown variant 'nope'"),
                         (["--memory"], "--memory reads the CUDA allocator"),
                         (["--config-trials", "hf"], "transformers baseline"),
                         (["--dtype", "fp8"], "fp8"), (["--new", "0"], "at least 1"),
                         (["--trial-set", "3"], "invalid choice"),
                         (["--variants", "fused-gemv-early,int8"], "give --quantize SCHEME"),
                         (["--quantize", "int3"], "--quantize:")]:
        with pytest.raises(SystemExit) as exc:
            perf_lab.parse_args(["--device", "cpu", *bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err, (bad, err)


def test_perf_lab_trials_from_a_config_cache(tool, tmp_path, capsys):
    """--trial-cache: the table's configs first and last, all cached ones together, then each cached config that
    differs from the table's alone, keyed as the cache keys it (one shape); a file without configs is one clear
    error line, as is --trial-cache without --config-trials."""
    perf_lab, bu = tool("perf_lab"), tool("bench_util")
    from llama_fast.kernels.configs import h200_config

    same = h200_config("residual", 4096, 11008)
    other = {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}
    path = tmp_path / "kernel-configs.json"
    chunk = {"CHUNK": 64, "num_warps": 2}
    path.write_text(json.dumps({"schema": 1, "gpu": "G|sm86|80", "configs": {
        "residual|4096|11008": same, "residual|4096|4096": other, "attention:16/16|1200|128": chunk}}))
    args = perf_lab.parse_args(["--device", "cpu", "--config-trials", "fused-eager", "--trial-cache", str(path)])
    trials = args.trial_cache
    assert list(trials)[:2] == ["pinned", "tuned: all 3"] and list(trials)[-1] == "pinned again" and len(trials) == 5
    assert trials["tuned: all 3"] == {"residual|4096|4096": other, "residual|4096|11008": same,
                                      "attention|1200|128": chunk}  # the override hook is asked by plain form
    alone = trials[f"tuned: residual|4096|4096 {other}"]
    lookup = bu.trial_lookup(alone)
    assert lookup("residual", 4096, 4096) == other and lookup("residual", 4096, 11008) is None
    assert bu.trial_lookup(trials[f"tuned: attention|1200|128 {chunk}"])("attention", 1200, 128) == chunk
    for argv, message in ((["--config-trials", "fused-eager", "--trial-cache", str(tmp_path / "none.json")],
                           "--trial-cache"), (["--trial-cache", str(path)], "needs --config-trials")):
        with pytest.raises(SystemExit) as exc:
            perf_lab.parse_args(["--device", "cpu", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    path.write_text(json.dumps({"configs": {}}))
    with pytest.raises(SystemExit):
        perf_lab.parse_args(["--device", "cpu", "--config-trials", "fused-eager", "--trial-cache", str(path)])
    assert "no configs in it" in capsys.readouterr().err


def test_perf_lab_results_table(tool):
    perf_lab = tool("perf_lab")
    m = types.SimpleNamespace(tok_per_s=50.0, max_mem_mb=1234.4, warmup_s=2.25, hash="abc123")
    assert perf_lab.results_table([("kv", m)], roof=200.0) == [
        "| variant | tok/s | % roofline | max MB | warm-up s | hash |", "|---|---|---|---|---|---|",
        "| kv | 50.0 | 25.0 | 1234 | 2.2 | abc123 |"]


@pytest.mark.slow
def test_perf_lab_measures_a_tiny_workload_on_the_cpu(tmp_path):
    """transformers and two of our variants (one a spec) in one process: one output hash for all, our outputs
    pass the teacher-forced check, the prefill / decode split and (with Triton installed) a config trial set."""
    log = tmp_path / "lab.log"
    trials = ["--config-trials", "kv", "--trial-set", "5"] if HAS_TRITON else []
    r = run_tool("perf_lab", "--device", "cpu", "--model", "random:tiny", "--dtype", "fp32", "--prompt", "12",
                 "--new", "4", "--cache", "32", "--runs", "1", "--variants", "hf,kv,qkv+fused_gate_up@8",
                 "--breakdown", "--check", "--log", str(log), *trials)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    table = [line.split("|")[1:-1] for line in r.stdout.splitlines() if re.match(r"\| (hf|kv|qkv)", line)]
    assert [row[0].strip() for row in table] == ["hf", "kv", "qkv+fused_gate_up@8"]
    assert len({row[5].strip() for row in table}) == 1 and all(float(row[1]) > 0 for row in table)
    assert r.stdout.count("tf-check ok") == 2 and r.stdout.count("ms/step") == 2 + (5 if trials else 0)
    assert log.read_text() == r.stdout


def test_perf_lab_runs_quantized_weights_on_the_cpu():
    """--quantize loads the one model quantized: its roofline counts the quantized bytes (fewer than fp32's; the
    tok/s figure itself rests on a bandwidth measured in each process, too noisy on a shared CPU to compare), and
    --check compares it with transformers on the same weights dequantized (against the unquantized model this
    int4:g32 run's greedy tokens part at the fourth step)."""
    common = ["--device", "cpu", "--model", "random:tiny", "--dtype", "fp32", "--prompt", "12", "--new", "4",
              "--cache", "32", "--runs", "1", "--variants", "kv"]
    read_mb = {}
    for q in ([], ["--quantize", "int8"]):
        r = run_tool("perf_lab", *common, *q)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        line = next(x for x in r.stdout.splitlines() if x.startswith("# roofline"))
        assert float(line.split()[2]) > 0
        read_mb[bool(q)] = float(re.search(r"weights read a step ([\d.]+) MB", line).group(1))
        assert ("(int8 weights)" in line) == bool(q)
    # int8 codes + fp32 scales of each output row: a little over a quarter of the fp32 bytes
    assert 0.25 < read_mb[True] / read_mb[False] < 0.3
    r = run_tool("perf_lab", *common, "--quantize", "int4:g32", "--check")
    assert r.returncode == 0 and r.stdout.count("tf-check ok") == 1, r.stdout[-2000:] + r.stderr[-3000:]


def _refused(module, argv, capsys, monkeypatch, torchrun: dict | None = None) -> str:
    """A tool's parse_args refusing argv (exit 2): its stderr. torchrun: the environment torchrun would set (by
    default none: not under torchrun)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (torchrun or {}).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------- allreduce_bench
@pytest.mark.parametrize("bad,message", [(["--modes", "fused,ring"], "--modes: unknown ring"),
                                         (["--dims", "4096,abc"], "--dims: comma-separated integers"),
                                         (["--dims", "100"], "a positive multiple of 8"),
                                         (["--calls", "1"], "--calls must be at least 2"),
                                         (["--dtype", "fp8"], "--dtype: "),
                                         (["--device", "cpu"], "--device cpu runs only --modes nccl"),
                                         (["--device", "cpu", "--modes", "nccl"], "runs under torchrun")])
def test_allreduce_bench_arguments(tool, capsys, monkeypatch, bad, message):
    assert message in _refused(tool("allreduce_bench"), bad, capsys, monkeypatch)


def test_allreduce_bench_sums_over_gloo():
    """Two CPU processes under torchrun: each mode line of rank 0 only, the sums and partials checked (a wrong sum
    prints WRONG and exits 1)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(SCRIPTS / "allreduce_bench.py"), "--device", "cpu", "--modes", "nccl", "--dims", "64,4096",
                        "--calls", "4", "--reps", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("nccl ")]
    assert len(lines) == 2 and "dim     64" in lines[0] and "dim   4096" in lines[1], r.stdout
    assert r.stdout.startswith("# 2 ranks, CPU (gloo), torch.float32") and "WRONG" not in r.stdout, r.stdout


# ------------------------------------------------------------------------------------------- under torchrun
@pytest.mark.parametrize("script", ["run_llama.py", "scripts/profile_decode.py", "scripts/allreduce_bench.py"])
def test_torchrun_hands_every_option_to_the_script(tool, script):
    """torchrun's own parser sees the script's options too and refuses one that abbreviates several of its own
    (`--log` against `--log-dir` / `--log_dir`), before the script starts: every option of the scripts run under
    torchrun must pass through it."""
    from torch.distributed.run import get_args_parser

    if script == "run_llama.py":
        from llama_fast.cli.args import build_parser
    else:
        build_parser = tool(Path(script).stem).build_parser
    options = [o for a in build_parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert len(options) > 3
    torchrun = get_args_parser()
    for option in options:
        args = torchrun.parse_args(["--nproc-per-node", "2", script, option, "1"])
        assert args.training_script == script and args.training_script_args == [option, "1"], option


# ------------------------------------------------------------------------------------------- profile_decode
@pytest.mark.parametrize("bad,message", [(["--variants", "fused,nope"], "unknown variant 'nope'"),
                                         (["--variants", "hf-static,fused"], "hf-static: transformers baselines"),
                                         (["--new", "1"], "--new must be at least 2"),
                                         (["--batch", "0"], "--batch must be at least 1"),
                                         (["--variants", "int8"], "int8: every variant runs the one model"),
                                         (["--quantize", "int3"], "--quantize: "),
                                         (["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
                                         (["--tp", "0"], "--tp must be at least 1"),
                                         (["--tp", "2"], "--tp 2 runs under torchrun with 2 processes")])
def test_profile_decode_arguments(tool, capsys, monkeypatch, bad, message):
    assert message in _refused(tool("profile_decode"), bad, capsys, monkeypatch)


def test_profile_decode_tp_needs_torchrun_of_that_size(tool, capsys, monkeypatch):
    """--tp N under a torchrun of another size is refused before anything loads."""
    err = _refused(tool("profile_decode"), ["--tp", "2"], capsys, monkeypatch, {"RANK": "0", "WORLD_SIZE": "4"})
    assert "torchrun --nproc-per-node 2 scripts/profile_decode.py" in err


def test_profile_decode_rows_per_decode_step(tool):
    pd = tool("profile_decode")
    run = [("gemv", 100.0, 10), ("attn", 50.0, 5), ("idle", 0.0, 1), ("prefill-only", 20.0, 2)]
    prefill = [("gemv", 40.0, 2), ("prefill-only", 20.0, 2)]
    rows = pd.decode_rows(run, prefill, steps=3)
    assert [(round(us, 3), n, name) for us, n, name in rows] == [(20.0, 10, "gemv"), (16.667, 5, "attn")]


def test_profile_decode_timeline_labels_each_gemv_and_the_gaps(tool):
    """A synthetic trace of a 2-layer model: one stray GEMV, then two decode steps (wqkv, attention, wo, w13,
    w2 per layer, then the head), each kernel followed by a 1 us gap."""
    pd = tool("profile_decode")
    from llama_fast.config import NAMED_SHAPES

    cfg = NAMED_SHAPES["tiny"]
    durs = {"wqkv": 10.0, "wo": 4.0, "w13": 20.0, "w2": 8.0, "head": 30.0}
    events, ts = [], 0.0

    def kernel(name, dur):
        nonlocal ts
        events.append({"cat": "kernel", "name": name, "ts": ts, "dur": dur})
        ts += dur + 1.0

    kernel("_gemv_fused_kernel", 5.0)  # before the first whole step
    for _ in range(2):
        for _ in range(cfg.n_layers):
            kernel("_gemv_qkv_rope_kernel", durs["wqkv"])
            kernel("_decode_attn_one_launch_kernel", 3.0)
            for kind in ("wo", "w13", "w2"):
                kernel("_gemv_fused_kernel", durs[kind])
        kernel("_gemv_fused_kernel", durs["head"])
    events.append({"cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 1.0})

    class Profile:
        def export_chrome_trace(self, path):
            Path(path).write_text(json.dumps({"traceEvents": events}))

    lines = pd.timeline_report(Profile(), cfg)
    assert lines[0] == "  timeline: 1 projection kernels before the first whole step left out"
    shapes = pd.decode_gemv_shapes(cfg)
    for kind, dur in durs.items():
        n, k = shapes[kind]
        count = 2 * (cfg.n_layers if kind != "head" else 1)
        assert f"    {kind:5s} {dur:7.1f} us  {n * k * 2 / dur / 1e3:6.0f} GB/s  (x{count})" in lines, kind
    gaps = [line for line in lines if "  after " in line]
    assert gaps and all(line.strip().startswith("1.00 us") for line in gaps)
    assert any(line.endswith("after _decode_attn_one_launch_kernel") for line in gaps)
    assert pd.timeline_report(Profile(), NAMED_SHAPES["llama-7b"]) == [
        "  timeline: 19 projection kernels, fewer than one step's 129: per-kind split skipped"]
    for e in events:  # a trace whose kernels carry no durations says so instead of dividing by zero
        e["dur"] = 0.0
    assert pd.timeline_report(Profile(), cfg)[1:] == [
        "  timeline: the trace's 18 decode projection events carry no durations: per-kind split skipped (the "
        "per-kernel table above comes from the profiler's own averages)"]


def test_profile_decode_timeline_labels_the_small_m_gemms_above_batch_1(tool):
    """Above batch 1 the projections are the small-M GEMM's launches (the split-K reduces and the attention between
    them are not counted as projections); batch 1 looks for GEMVs."""
    pd = tool("profile_decode")
    from llama_fast.config import NAMED_SHAPES

    assert (pd.projection_kernel(1), pd.projection_kernel(8)) == ("_gemv", "_gemm_kernel")
    cfg = NAMED_SHAPES["tiny"]
    events, ts = [], 0.0
    for _ in range(2):
        for _ in range(cfg.n_layers):
            for name, dur in [("_gemm_kernel", 10.0), ("_decode_attn_split_kernel", 3.0), ("_gemm_kernel", 4.0),
                              ("_split_k_reduce_kernel", 1.0), ("_gemm_kernel", 20.0), ("_gemm_kernel", 8.0),
                              ("_split_k_reduce_kernel", 1.0)]:
                events.append({"cat": "kernel", "name": name, "ts": ts, "dur": dur})
                ts += dur + 2.0
        events.append({"cat": "kernel", "name": "_gemm_kernel", "ts": ts, "dur": 30.0})
        ts += 32.0

    class Profile:
        def export_chrome_trace(self, path):
            Path(path).write_text(json.dumps({"traceEvents": events}))

    lines = pd.timeline_report(Profile(), cfg, pd.projection_kernel(8))
    assert lines[0] == "  decode projections (_gemm_kernel) in place (mean over the run's steps):"
    shapes = pd.decode_gemv_shapes(cfg)
    for kind, dur in {"wqkv": 10.0, "wo": 4.0, "w13": 20.0, "w2": 8.0, "head": 30.0}.items():
        n, k = shapes[kind]
        assert f"    {kind:5s} {dur:7.1f} us  {n * k * 2 / dur / 1e3:6.0f} GB/s" in "\n".join(lines), kind
    assert pd.timeline_report(Profile(), cfg)[0].startswith("  timeline: 0 projection kernels")


# ------------------------------------------------------------------------------------------- micro-benchmarks
@pytest.fixture(scope="module")
def interpreter():
    """Skips when Triton's interpreter here cannot run the kernels (tests/test_kernels.py's probe says why)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (the CPU torch build has none): the micro-benchmarks run the "
                    "kernels in Triton's interpreter on the CPU")
    from test_kernels import LOOP_PROBE

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    probe = subprocess.run([sys.executable, "-c", LOOP_PROBE], env=env, capture_output=True, text=True,
                           timeout=120).stdout.strip()
    if probe != "ok":
        pytest.skip(f"Triton's interpreter here: {probe}")


def test_micro_benchmark_tables(tool):
    gemv_bench, fused_bench, attn_bench = tool("gemv_bench"), tool("fused_bench"), tool("attn_bench")
    assert gemv_bench.row("wo", "linear", 10e-6, 4096 * 4096 * 2, 1.5e-4) == (
        "wo    linear               10.0 us    3355 GB/s rel err 1.5e-04")
    assert set(fused_bench.STEP_FORMS) <= set(fused_bench.GEMV_FORMS)
    assert all(form in fused_bench.GEMV_FORMS[name] for name, form in fused_bench.STEP_FORMS.items())
    results = [(t, 8, bk, 4) for t, bk in ((5.0, 256), (3.0, 512), (4.0, 1024), (6.0, 128), (7.0, 64))]
    lines = fused_bench.best_and_pinned("wo", "residual", 2e6, results, [(8, 64, 4)])
    assert [line.split()[3] for line in lines] == ["3.0", "4.0", "5.0", "6.0", "7.0"]
    assert lines[0].split()[2] == "best" and lines[-1].split()[2] == "at" and lines[-1].endswith("BK64 warps 4")
    rows = attn_bench.configs_to_time()
    assert rows[0] == ("pinned", None) and len(rows) == 13 and len({name for name, _ in rows}) == 13
    with pytest.raises(SystemExit):
        gemv_bench.parse_args(["--device", "cpu", "--forms", "linear,cutlass"])
    # a persistent config's line names it; --persist needs a quantized sweep; --only names decode GEMVs
    line = fused_bench.best_and_pinned("w13", "swiglu/int4", 2e6, [(2.0, 8, 4096, 4, 2)], [(8, 4096, 4, 2)])[-1]
    assert line.split()[2] == "at" and line.endswith("BK4096 warps 4 persist 2")
    assert fused_bench.parse_args(["--device", "cpu", "--only", "w13,wo"]).only == ("w13", "wo")
    for bad in (["--persist"], ["--persist", "--sweep-configs"], ["--only", "w4"], ["--pdl", "1"]):
        with pytest.raises(SystemExit):
            fused_bench.parse_args(["--device", "cpu", *bad])
    assert all(bk == 4096 for grid in fused_bench.PERSIST_GRID.values() for _, bk, _, _ in grid)


@needs_triton
def test_the_sweeps_hold_the_pinned_configs(tool):
    fused_bench, attn_bench = tool("fused_bench"), tool("attn_bench")
    from llama_fast.kernels import configs

    for name, form in fused_bench.STEP_FORMS.items():
        pinned = configs.gemv_config(form, 32000 if name == "head" else 4096)
        assert (pinned["BLOCK_N"], pinned["BLOCK_K"], pinned["num_warps"]) in fused_bench.GEMV_GRID, name
    q = configs.QKV_ROPE_CONFIG
    assert (q["BLOCK_N"], q["BLOCK_K"], q["num_warps"]) in fused_bench.QKV_GRID
    assert configs.ATTN_EAGER_CONFIG in [config for _, config in attn_bench.configs_to_time()]


@pytest.mark.slow
def test_gemv_bench_in_the_interpreter(interpreter):
    r = run_tool("gemv_bench", "--device", "cpu", "--shape", "tiny", "--forms", "linear,triton-gemv", "--reps", "1",
                 "--calls", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    errs = {tuple(line.split()[:2]): float(line.split()[-1]) for line in r.stdout.splitlines() if "rel err" in line}
    assert set(errs) == {(n, f) for n in ("wqkv", "wo", "w13", "w2", "head") for f in ("linear", "triton-gemv")}
    assert max(errs.values()) < 1e-2, errs


@pytest.mark.slow
def test_gemv_bench_gemm_mode_in_the_interpreter(interpreter):
    """--gemm: F.linear against the small-M GEMM, plain and in each shape's step form, at two row counts."""
    r = run_tool("gemv_bench", "--device", "cpu", "--shape", "tiny", "--gemm", "3,17", "--reps", "1", "--calls", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line.split() for line in r.stdout.splitlines()]
    errs = {(s[0], s[1], s[2]): float(s[-1]) for s in lines if "rel err" in " ".join(s)}
    assert set(errs) == {(n, f"M={m}", f) for n in ("wqkv", "wo", "w13", "w2", "head") for m in (3, 17)
                         for f in ("linear", "gemm")}
    assert max(errs.values()) < 1e-2, errs
    steps = {(s[0], s[2]) for s in lines if len(s) > 2 and s[1] == "M=17"}
    assert {("wqkv", "rmsnorm"), ("wo", "residual"), ("w13", "rmsnorm-swiglu"), ("w2", "residual")} <= steps
    assert r.stdout.count("per layer-set totals") == 2


@pytest.mark.slow
def test_gemv_bench_gemm_mode_quantized_weights_in_the_interpreter(interpreter):
    """--gemm --weights int8,int4: each shape's fp16 F.linear, QuantLinear's dequantize-then-F.linear and the small-M
    GEMM over the packed weights (the int4 group falling back where K asks for it), with the GEMM's error against
    the dequantized weight."""
    r = run_tool("gemv_bench", "--device", "cpu", "--shape", "tiny", "--gemm", "3", "--weights", "int8,int4",
                 "--reps", "1", "--calls", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line.split() for line in r.stdout.splitlines()]
    errs = {(s[0], s[3]): float(s[-1]) for s in lines if "rel err" in " ".join(s)}
    names = ("wqkv", "wo", "w13", "w2", "head")
    # tiny: w2's K of 352 takes group 32, every other K (128) the asked 128
    assert set(errs) == {(n, "int8") for n in names} | {(n, "int4:g32" if n == "w2" else "int4:g128")
                                                          for n in names}, set(errs)
    assert max(errs.values()) < 1e-2, errs
    forms = {(s[0], s[2], s[3]) for s in lines if len(s) > 3 and s[1] == "M=3"}
    assert {("w13", "linear", "fp16"), ("w13", "dequant-linear", "int8"), ("w13", "rmsnorm-swiglu", "int8"),
            ("wo", "residual", "int4:g128")} <= forms, forms
    assert r.stdout.count("per layer-set totals") == 2


@pytest.mark.slow
def test_gemv_bench_gemm_sweep_reaches_the_k_split_in_the_interpreter(interpreter):
    """--gemm-sweep launches each grid point's config, PER_SM (the K split's programs per SM) included, for
    int8 and int4 weights, and prints the best three and the pinned config; the pinned table is restored after
    each point. Two grid points here (the whole grid is a GPU's work)."""
    code = f"""
import sys
sys.path.insert(0, {str(SCRIPTS)!r})
import gemv_bench
from llama_fast.kernels import gemm
gemv_bench.GEMM_GRID = [(32, 64, 4, 2, 1), (32, 64, 4, 2, 4)]
tables = (gemm.GEMM_QUANT_CONFIGS, gemm.GEMM_INT4_CONFIGS)
before = {{(i, k): dict(v) for i, t in enumerate(tables) for k, v in t.items()}}
code = gemv_bench.main(["--device", "cpu", "--shape", "tiny", "--gemm", "3", "--gemm-sweep", "--weights",
                        "int8,int4", "--reps", "1", "--calls", "1"])
assert {{(i, k): v for i, t in enumerate(tables) for k, v in t.items()}} == before
sys.exit(code)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    names = ("wqkv", "wo", "w13", "w2", "head")
    best = re.findall(r"^ +(\w+) .* int8 .* BN32 BK64 warps 4 stages 2 per SM (\d)$", r.stdout, flags=re.M)
    assert sorted(best) == sorted((name, per_sm) for name in names for per_sm in "14"), r.stdout
    best4 = re.findall(r"^ +(\w+) .* int4:g\d+ .* BN32 BK64 warps 4 stages 2 per SM (\d)$", r.stdout, flags=re.M)
    assert sorted(best4) == sorted((name, per_sm) for name in names for per_sm in "14"), r.stdout
    from llama_fast.kernels import gemm as gm

    def pinned(swiglu: bool, rmsnorm: bool, wfmt: int) -> str:
        table, key = gm.config_key(3, swiglu, wfmt, rmsnorm)
        c = table[key]
        return (f"  pinned: BN{c['BLOCK_N']} BK{c['BLOCK_K']} warps {c['num_warps']} stages {c['num_stages']} "
                f"per SM {c.get('PER_SM', 1)}")

    # wqkv the RMSNorm prologue, w13 SwiGLU, wo / w2 the residual epilogue, the head plain
    expected = Counter(pinned(swiglu, rmsnorm, wfmt) for wfmt in (gm.WFMT_INT8, gm.WFMT_INT4)
                       for swiglu, rmsnorm in [(False, True), (True, True)] + [(False, False)] * 3)
    assert Counter(line for line in r.stdout.splitlines() if line.startswith("  pinned:")) == expected, r.stdout


def test_gemv_bench_gemm_arguments(tool):
    gemv_bench = tool("gemv_bench")
    assert gemv_bench.parse_args(["--device", "cpu", "--gemm", "2,64"]).gemm == [2, 64]
    assert gemv_bench.parse_args(["--device", "cpu", "--gemm", "2", "--weights", "fp16,int8,int4:g32"]).weights == \
        ["fp16", "int8", "int4:g32"]
    for bad in (["--gemm", "1,8"], ["--gemm", "65"], ["--gemm", "x"], ["--gemm-sweep"], ["--weights", "int8"],
                ["--gemm", "2", "--weights", "int3"]):
        with pytest.raises(SystemExit):
            gemv_bench.parse_args(["--device", "cpu", *bad])
    assert set(gemv_bench.GEMM_STEP_FORMS) == set(gemv_bench.decode_gemv_shapes(NAMED_SHAPES["tiny"]))


@pytest.mark.slow
def test_fused_bench_in_the_interpreter(interpreter):
    """Every launch the micro-benchmark makes (the ops, the raw kernels over the sweep grids, attention over
    its grid) builds and runs: a config that fails is reported, and none may."""
    r = run_tool("fused_bench", "--device", "cpu", "--shape", "tiny", "--cache", "80", "--attended", "70",
                 "--reps", "1", "--calls", "1", "--sweep-configs")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert not [line for line in out if re.search(r"BN\d+ BK\d+ w\d+: \w+", line)], r.stdout
    for name, forms in [("wqkv", "gemv rmsnorm"), ("wo", "gemv residual"), ("w13", "gemv swiglu"),
                        ("w2", "gemv residual"), ("head", "gemv rmsnorm")]:
        timed = [m[1] for m in (re.match(rf"{name} +(\w+) +[\d.]+ us", line) for line in out) if m]
        assert timed == forms.split(), name
    assert len([line for line in out if " best " in line]) == 5 * 4  # the four step forms and qkv+RoPE
    assert len([line for line in out if " at " in line]) == 5  # each one's pinned config, timed in the sweep
    assert len([line for line in out if re.match(r"attn  chunk +\d+ warps \d: split", line)]) == 9
    assert any(line.startswith("attn  decode_attention_one_launch (chunk 128, 4 warps)") for line in out)


@pytest.mark.slow
def test_fused_bench_persistent_forms_and_dequant_in_the_interpreter(interpreter):
    """--persist adds the persistent configs to a quantized sweep (the pinned persistent w13 among them, so its
    own line is timed), --only keeps one decode GEMV, --dequant times the prefill's dequantization of its
    weight; no config fails."""
    r = run_tool("fused_bench", "--device", "cpu", "--shape", "tiny", "--reps", "1", "--calls", "1", "--weights",
                 "int4", "--gemv-only", "--sweep-configs", "--persist", "--dequant", "--only", "w13")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    assert not [line for line in out if re.search(r"BN\d+ BK\d+ w\d+( P\d)?: \w+", line)], r.stdout
    assert [line.split()[1] for line in out if re.match(r"\w+ +\S+/int4 +[\d.]+ us  +\d+ GB/s", line)] == [
        "gemv/int4", "swiglu/int4"]  # w13 only
    from llama_fast.kernels.configs import QUANT_CONFIGS

    pin = QUANT_CONFIGS["swiglu_int4"]
    pinned = f"BN{pin['BLOCK_N']} BK{pin['BLOCK_K']} warps {pin['num_warps']} persist {pin['PERSIST']}"
    assert [line for line in out if " at " in line and line.endswith(pinned)], r.stdout
    assert [line.split()[0] for line in out if "dequantize/int4" in line] == ["w13", "layer"]


@pytest.mark.slow
def test_attn_bench_in_the_interpreter(interpreter, tool):
    r = run_tool("attn_bench", "--device", "cpu", "--shape", "tiny", "--cache", "80", "--attended", "70",
                 "--layers", "2", "--reps", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    errs = [float(line.split()[-1]) for line in r.stdout.splitlines() if "max err" in line]
    assert "FAILED" not in r.stdout and len(errs) == 13 and max(errs) < 1e-2, r.stdout
    assert r.stdout.splitlines()[0].startswith("pinned chunk 128/4")
    # the two-kernel form of batches above 1, three rows of a GQA shape; its pinned row is the tensor-core GQA
    # kernel's eager config (the kernels-only step's)
    from llama_fast.kernels.configs import ATTN_GQA_EAGER_CONFIG as GQA

    r = run_tool("attn_bench", "--device", "cpu", "--shape", "tiny", "--form", "split", "--batch", "3", "--cache",
                 "80", "--attended", "70", "--layers", "2", "--reps", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    errs = [float(line.split()[-1]) for line in r.stdout.splitlines() if "max err" in line]
    span = len(tool("attn_bench").SPAN_GRID)
    assert "FAILED" not in r.stdout and len(errs) == 13 + 9 + span and max(errs) < 1e-2, r.stdout  # + GQA rows
    assert r.stdout.splitlines()[0].startswith(f"pinned chunk {GQA['CHUNK']}/{GQA['num_warps']}")
    assert len([line for line in r.stdout.splitlines() if line.startswith("gqa-dot chunk ")]) == 9, r.stdout
    assert len([line for line in r.stdout.splitlines() if line.startswith("gqa-span tile ")]) == span, r.stdout


# ------------------------------------------------------------------------------------------- pick_bench
def test_pick_bench_times_greedy_and_sampled_on_the_cpu():
    """The greedy and the sampled pick in one process: a row per (batch, pick), the greedy row's ratio 1."""
    r = run_tool("pick_bench", "--device", "cpu", "--model", "random:tiny", "--prompt-len", "12", "--new-tokens", "4",
                 "--batch-sizes", "1,2", "--rounds", "2", "--num-runs", "1", "--top-k", "5", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line.split(" | ") for line in r.stdout.splitlines() if re.match(r"^\| [12] \| ", line)]
    assert [(row[0], row[1].split()[0]) for row in rows] == [("| 1", "greedy"), ("| 1", "sampled"),
                                                             ("| 2", "greedy"), ("| 2", "sampled")]
    assert all(row[1] == "sampled temperature=0.8 top_k=5 top_p=0.95 seed=0" for row in rows[1::2])
    assert [row[4] for row in rows[::2]] == ["1.000 |", "1.000 |"]
    assert all(len(row[3].split(", ")) == 2 for row in rows)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the CPU torch build has none): the sweep runs the pick's kernels "
                           "in Triton's interpreter")
def test_pick_bench_kernel_sweep_checks_every_setting_on_the_cpu():
    """--kernel-sweep in the interpreter: a row per (filters, vocab, batch, chunk, warps), untimed, and every
    setting's tokens equal to the pinned chunk's (the tool exits non-zero otherwise)."""
    r = run_tool("pick_bench", "--device", "cpu", "--kernel-sweep", "--vocabs", "700", "--batch-sizes", "2",
                 "--chunks", "64,256", "--warps", "2,4", timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if re.match(r"^\| T=0\.8", line)]
    assert len(rows) == 4 * 2 * 2 and "untimed" in r.stdout
    assert {row.split(" | ")[0] for row in rows} == {"| T=0.8", "| T=0.8 top_k=50", "| T=0.8 top_p=0.95",
                                                     "| T=0.8 top_k=50 top_p=0.95"}


@pytest.mark.parametrize("bad, message", [(["--top-p", "2"], "top_p must lie"), (["--rounds", "0"], "at least 1"),
                                          (["--kernel-sweep", "--chunks", "100"], "powers of 2"),
                                          (["--batch-sizes", "1,x"], "invalid literal")])
def test_pick_bench_refuses_bad_arguments(bad, message):
    r = run_tool("pick_bench", "--device", "cpu", *bad, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------- sass_probe
def test_sass_probe_counts_programs_per_sm_and_instructions(tool):
    probe = tool("sass_probe")
    assert [probe.programs_per_sm(r, 4) for r in (168, 169, 211, 128)] == [3, 2, 2, 4]
    assert probe.programs_per_sm(168, 2) == 6
    # an H200 SM's 228 KB over 48 KB programs (+1 KB each): 4; an A10G's 100 KB: 2; no shared memory: no limit
    assert probe.programs_per_sm_by_shared(48 * 1024, 90) == 4 and probe.programs_per_sm_by_shared(48 * 1024, 86) == 2
    assert probe.programs_per_sm_by_shared(0, 90) is None and probe.programs_per_sm_by_shared(1024, 75) is None
    sass = ("\tcode for sm_90a\n        /*0000*/                   LDC R1, c[0x0][0x28] ;   /* 0x00000a00ff017b82 */\n"
            "                                                     /* 0x000e300000000800 */\n"
            "        /*0010*/              @!P0 LDG.E.U8 R6, desc[UR6][R2.64] ;   /* 0x0000000602068981 */\n")
    assert probe.count_instructions(sass) == 2
    loop = ("        /*0000*/                   MOV R1, R2 ;\n"
            "        /*0010*/                   LOP3.LUT R3, R4, 0xf, RZ, 0xc0, !PT ;\n"
            "        /*0020*/              @!P0 LOP3.LUT R5, R4, 0xf0, RZ, 0xc0, !PT ;\n"
            "        /*0030*/                   FFMA R6, R3, R7, R6 ;\n"
            "        /*0040*/                   BRA 0x10 ;\n"
            "        /*0050*/                   EXIT ;\n")
    assert probe.k_loop(loop) == (4, 0)  # 0x10..0x40: the branch back included, the MOV before it not
    assert probe.loop_mix(loop) == {"LOP3": 2, "FFMA": 1, "BRA": 1}


@pytest.mark.parametrize("bad,message", [
    (["--ptxas", "/nonexistent/ptxas"], "--ptxas /nonexistent/ptxas"),
    (["--config", "BLOCK_K=2048"], "--config and --weights are for the GEMV"),
    (["--kernel", "gemv", "--config", "BLOCK_K"], "--config 'BLOCK_K': give KEY=INTEGER"),
    (["--kernel", "gemv", "--config", "BLOCK_M=16"], "--config: unknown key BLOCK_M"),
    (["--kernel", "attention-split", "--config", "BLOCK_K=64"], "--config: unknown key BLOCK_K (the keys are CHUNK"),
    (["--kernel", "attention-split", "--weights", "int8"], "--weights is for the GEMV forms"),
    (["--kernel", "attention-split", "--batch", "0"], "--cache, --heads and --batch must be positive"),
    (["--kernel", "attention-split", "--kv-heads", "5"], "--kv-heads 5 must be positive and divide --heads 32"),
    (["--kernel", "gemv", "--mix", "-1"], "--mix -1: give a count"),
    (["--mix", "5"], "--mix is for the GEMV forms"),
    (["--kernel", "swiglu", "--gemv-rows", "2"], "--gemv-rows 2: 2..4 rows of a fused GEMV form (not gemv) with")])
def test_sass_probe_refuses_bad_arguments(bad, message):
    r = run_tool("sass_probe", *bad, timeout=120)
    assert r.returncode == 2 and f"sass_probe.py: error: {message}" in r.stderr, r.stderr


def _bundled_ptxas() -> bool:
    if not HAS_TRITON:
        return False
    bindir = Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin"
    return (bindir / "cuobjdump").exists() and any((bindir / name).exists() for name in ("ptxas", "ptxas-blackwell"))


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
def test_sass_probe_compiles_the_pdl_attention_within_its_register_cap():
    """The fastest path's attention launch, compiled for sm_90 without a GPU: the register cap holds (3 programs
    of 4 warps per SM, docs/PERF.md), so the seed's 320 programs fit one wave on 132 SMs."""
    from llama_fast.kernels.configs import ATTN_PDL_MAXNREG

    r = run_tool("sass_probe", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip()
    m = re.search(r"\| (\d+) registers, (\d+) B stack \| (\d+) instructions \| (\d+) programs/SM", line)
    assert m and line.startswith("_decode_attn_one_launch_kernel sm_90 | Triton "), line
    registers, _, instructions, per_sm = map(int, m.groups())
    assert f"CHUNK 128, 4 warps, PDL 2, maxnreg {ATTN_PDL_MAXNREG}" in line and "grid 32x10" in line
    assert registers <= ATTN_PDL_MAXNREG and per_sm == 3 and instructions > 1000, line


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
def test_sass_probe_compiles_the_batched_attention_at_its_compiled_config_and_others():
    """The two-kernel attention of batches above 1 (its chunk kernel), compiled for sm_90 without a GPU: at the
    compiled step's config (ATTN_CHUNK slots, ATTN_COMPILED_WARPS warps) over batch x heads programs and the
    cache's chunks, at a --config of half the chunk (twice the chunks), and the tensor-core GQA kernel, one chunk
    or a span of them a program."""
    from llama_fast.kernels.configs import ATTN_CHUNK, ATTN_COMPILED_WARPS

    lines = {}
    for name, extra in (("compiled", []), ("half", ["--config", f"CHUNK={ATTN_CHUNK // 2},num_warps=4"])):
        r = run_tool("sass_probe", "--kernel", "attention-split", "--batch", "8", *extra, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        lines[name] = r.stdout.strip()
        assert lines[name].startswith("_decode_attn_split_kernel sm_90 | Triton "), lines[name]
        assert re.search(r"\| \d+ registers, \d+ B stack \| \d+ instructions \| \d+ programs/SM", lines[name])
    chunks = -(-1200 // ATTN_CHUNK)
    assert f"CHUNK {ATTN_CHUNK}, {ATTN_COMPILED_WARPS} warps, PDL 0" in lines["compiled"]
    assert f"grid 256x{chunks}" in lines["compiled"], lines["compiled"]
    assert f"CHUNK {ATTN_CHUNK // 2}, 4 warps" in lines["half"] and f"grid 256x{-(-1200 // (ATTN_CHUNK // 2))}" in \
        lines["half"], lines["half"]
    # GQA (Llama-3-8B's 32 query / 8 KV heads) on the tensor cores: a program a KV head, nothing spilled
    r = run_tool("sass_probe", "--kernel", "attention-split", "--batch", "8", "--kv-heads", "8", "--config",
                 "GQA_DOT=1,num_warps=4", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    gqa = r.stdout.strip()
    assert gqa.startswith("_decode_attn_split_gqa_kernel sm_90 | Triton "), gqa
    assert f"CHUNK {ATTN_CHUNK}, 4 warps, PDL 0" in gqa and f"grid 64x{chunks}" in gqa and " 0 B stack |" in gqa, gqa
    # its span form (WAVES): 4 programs an SM of an H200 over 64 KV heads: 7 spans of three 64-slot tiles a head
    r = run_tool("sass_probe", "--kernel", "attention-split", "--batch", "8", "--kv-heads", "8", "--config",
                 "GQA_DOT=1,CHUNK=64,num_warps=4,WAVES=4,STAGES=2", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    span = r.stdout.strip()
    assert span.startswith("_decode_attn_span_gqa_kernel sm_90 | Triton "), span
    assert "CHUNK 64, 4 warps, PDL 0" in span and "grid 64x7" in span and " 0 B stack |" in span, span


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
def test_sass_probe_counts_the_quantized_gemv_k_loop():
    """The int4 GEMV at its pinned config (kernels/configs.py QUANT_CONFIGS), compiled for sm_90 without a GPU:
    4 programs of 4 warps per SM, 3-4.5 instructions per weight in the K loop (kernels/dequant.py; --mix: a mask
    and an FFMA a weight among its commonest opcodes) and the barriers of x's trips through shared memory;
    --config reaches the launch (half the K tile at half the warps: the same weights a thread, twice the programs
    per SM)."""
    lines = {}
    for name, extra in (("pinned", ["--mix", "4"]), ("config", ["--config", "BLOCK_K=2048,num_warps=2"]),
                        ("capped", ["--config", "maxnreg=96"])):
        r = run_tool("sass_probe", "--kernel", "gemv", "--weights", "int4", *extra, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        line, *mix = r.stdout.strip().splitlines()
        if name == "pinned":  # --mix: one more line, the loop's commonest opcodes: a mask and an FFMA a weight
            assert len(mix) == 1 and mix[0].startswith("K loop mix: "), mix
            ops = dict(item.rsplit(" ", 1) for item in mix[0][len("K loop mix: "):].split(", "))
            assert len(ops) == 4 and {"FFMA", "LOP3"} <= set(ops), mix
        else:
            assert not mix, mix
        m = re.search(r"\| (\d+) registers, (\d+) B stack \| \d+ instructions, K loop (\d+) = ([\d.]+) per weight "
                      r"\((\d+) a thread\), (\d+) barriers \| (\d+) programs/SM by registers(?:, \d+ by shared memory "
                      r"\(\d+ B\))?, grid (\d+)$", line)
        assert m and line.startswith("_gemv_fused_kernel sm_90 | Triton "), line
        lines[name] = dict(zip(("registers", "stack", "loop", "per_weight", "per_thread", "barriers", "per_sm", "grid"),
                               (float(v) for v in m.groups())))
        lines[name]["line"] = line
    pinned, config = lines["pinned"], lines["config"]
    assert (pinned["per_thread"], pinned["grid"], pinned["stack"]) == (8 * 4096 / 128, 12288 / 8, 0)
    assert pinned["per_sm"] == 4 and pinned["registers"] <= 128 and pinned["barriers"] >= 8
    assert 3.0 < pinned["per_weight"] < 4.5
    assert pinned["per_weight"] == pytest.approx(pinned["loop"] / pinned["per_thread"], abs=0.01)
    assert "BLOCK_N 8, BLOCK_K 2048, num_warps 2, num_stages 3" in config["line"], config["line"]
    assert config["per_thread"] == pinned["per_thread"] and config["grid"] == pinned["grid"]
    assert config["per_sm"] == 2 * pinned["per_sm"] and abs(config["loop"] - pinned["loop"]) < 0.1 * pinned["loop"]
    capped = lines["capped"]  # a register cap reaches ptxas: 96 a thread, 5 programs of 4 warps an SM
    assert "maxnreg 96" in capped["line"] and capped["registers"] <= 96 and capped["per_sm"] == 5, capped["line"]


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
def test_sass_probe_compiles_the_rows_gemv_at_its_own_config():
    """--gemv-rows 2: the int4 SwiGLU GEMV as the rows GEMV launches it (kernels/gemv_rows.py), at the rows
    form's config (configs.rows_config: 2 persistent programs an SM on the H200), compiled for sm_90 without a GPU:
    nothing spilled, its persistent programs fit an SM's registers, and the second row costs fewer instructions a
    weight than the first (the weight is dequantized once for both)."""
    lines = {}
    for rows in ("1", "2"):
        r = run_tool("sass_probe", "--kernel", "swiglu", "--weights", "int4", "--gemv-rows", rows, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        line = r.stdout.strip().splitlines()[-1]
        m = re.search(r"PERSIST (\d+),.*\| \d+ registers, (\d+) B stack \| \d+ instructions, K loop \d+ = "
                      r"([\d.]+) per weight .*\| (\d+) programs/SM by registers", line)
        assert m, line
        lines[rows] = (int(m[1]), int(m[2]), float(m[3]), int(m[4]), line)
    (p1, stack1, w1, _, _), (p2, stack2, w2, sm2, line) = lines["1"], lines["2"]
    assert "swiglu/2 rows/int4" in line and p2 == 2 < p1 and stack2 == stack1 == 0, line
    assert sm2 >= p2 and w1 < w2 < 2 * w1, (lines["1"][-1], line)


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
def test_sass_probe_compares_the_kernels_only_steps_wqkv_with_the_compiled_steps():
    """--gemm-form: the compiled batch 2-16 step's wqkv (RMSNorm prologue) and the kernels-only step's (RMSNorm from
    partials, RoPE and the cache write; PDL with --pdl 2), both at wqkv's shape, with their split and PDL mode."""
    lines = {}
    for form in ("rmsnorm", "step-qkv"):
        r = run_tool("sass_probe", "--kernel", "gemm", "--gemm-form", form, "--weights", "int8", "--rows", "8",
                     timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        lines[form] = r.stdout.strip()
    assert "gemm/rmsnorm/int8 BLOCK_M 16, BLOCK_N 64, BLOCK_K 64" in lines["rmsnorm"], lines
    # 12288 rows in 192 tiles, 64 K tiles each split for an H200's 132 SMs at 8 programs an SM
    assert "SPLIT_K 6 |" in lines["rmsnorm"] and "grid 192x6" in lines["rmsnorm"], lines
    assert "gemm/step-qkv/int8 " in lines["step-qkv"] and "SPLIT_K 6, PDL 1 |" in lines["step-qkv"], lines
    assert "grid 192x6" in lines["step-qkv"], lines


@pytest.mark.skipif(not _bundled_ptxas(), reason="needs Triton with its bundled ptxas and cuobjdump (NVIDIA backend)")
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_sass_probe_finds_no_integer_conversion_in_the_quantized_gemm(weights, tmp_path):
    """The small-M GEMM of an fp16 model (16 rows, sm_90) builds its int8 / int4 tiles under fp16's exponent, in
    the permuted K order that loads a thread's bytes at once: no I2F (a quarter-rate instruction, one a weight
    before) and no fp32 round trip (F2FP) in the kernel, and fewer instructions a weight; int4 also at a --config
    over the pinned config."""
    sass = tmp_path / "gemm.sass"
    r = run_tool("sass_probe", "--kernel", "gemm", "--weights", weights, "--sass", str(sass), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = r.stdout.strip()
    assert line.startswith("_gemm_kernel sm_90 | ") and f"gemm/{weights} BLOCK_M 16," in line, line
    # its cp.async pipeline stages the tiles in shared memory: the probe says how many programs that leaves an SM
    by_shared, shared = map(int, re.search(r", (\d+) by shared memory \((\d+) B\)", line).groups())
    assert shared > 4096 and by_shared == 228 * 1024 // (shared + 1024), line
    per_weight = float(re.search(r"K loop \d+ = ([\d.]+) per weight", line).group(1))
    assert per_weight < {"int8": 5.0, "int4": 6.5}[weights], line  # 6.36 and 7.91 with I2F and K in order
    opcodes = re.findall(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", sass.read_text(), flags=re.M)
    assert opcodes and not {"I2F", "I2FP", "F2FP"} & set(opcodes), sorted(set(opcodes))
    if weights == "int4":  # --config over the pinned config: half the K tile, half the weights a thread
        r = run_tool("sass_probe", "--kernel", "gemm", "--weights", weights, "--config", "BLOCK_K=64", timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        half_line = r.stdout.strip()
        assert ", BLOCK_K 64, " in half_line and "per weight (32 a thread)" in half_line, half_line
