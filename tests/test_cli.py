"""The command line (llama_fast.cli / run_llama.py) and its progress output (llama_fast.progress), on CPU.

Fast tests call cli.main in-process on random:tiny; --help, a bad argument, --threads, a weights-only
checkpoint and non-terminal progress run `python run_llama.py` as a real process; the ablation acceptance runs
the embedded SmolLM2 in fp32.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_fast import cli, harness, loading, progress
from llama_fast.cli import args as cli_args
from llama_fast.cli import report, runner
from llama_fast.model import ForwardOptions

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "random:tiny", "--prompt-lengths", "16", "--new-tokens", "8", "--warmup-runs", "0",
        "--num-runs", "1"]
ALL_FLAGS = ["--model", "--device", "--dtype", "--threads", "--preallocate", "--compile", "--profile", "--profile-dir",
             "--sweep", "--batch-sizes", "--prompt-lengths", "--new-tokens", "--cache-length", "--warmup-runs",
             "--num-runs", "--output", "--ablation", "--compare", "--compare-variants", "--weights-seed", "--sample",
             "--temperature", "--top-k", "--top-p", "--seed", "--prompt", "--quantize"]
# on CPU these ablation rows name CUDA-only code (CUDA graphs, Triton kernels, PDL) and run its fallback
CPU_FALLBACK_ROWS = ["graphs", "gemv", "fused", "fused-eager", "fused-pdl", "fused-glue", "fused-prefill-graph",
                     "fused-gemv-early", "fused-gemm", "fused-gemm-kernels", "int8", "int4"]
QUANTIZED_ROWS = {"int8": "int8", "int4": "int4:g128"}  # the ablation's rows over quantized weights


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """run_llama.py as a real process; stdout and stderr captured (so stderr is not a terminal)."""
    return subprocess.run([sys.executable, str(ROOT / "run_llama.py"), *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == report.CSV_COLUMNS
        rows = list(reader)
    for r in rows:
        assert len(r) == len(header), f"malformed row {r}"
    return [dict(zip(header, r)) for r in rows]


def assert_well_formed(row: dict, status: str = "ok"):
    assert row["status"] == status
    assert float(row["tok_per_s"]) > 0 and float(row["tok_per_s_best"]) >= float(row["tok_per_s"]) * 0.999
    assert float(row["max_mem_mb"]) > 0 and float(row["warmup_s"]) >= 0
    assert re.fullmatch(r"[0-9a-f]{8}", row["hash"])
    assert row["commit"] and row["timestamp"] and row["device"]
    assert int(row["cache_length"]) >= int(row["prompt_len"]) + int(row["new_tokens"])


def embedded_model_or_skip():
    try:
        loading.find_embedded_gguf()
    except loading.ModelNotFoundError as e:
        pytest.skip(f"embedded SmolLM2 not installed: {e}")


# ------------------------------------------------------------------------------------------- help
def test_help_lists_every_flag():
    res = run_cli("--help", timeout=120)
    assert res.returncode == 0, res.stderr
    for flag in ALL_FLAGS:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", res.stdout), f"{flag} missing from --help"
    # every option carries a help text (argparse prints a bare flag line otherwise)
    for action in cli_args.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"


# ------------------------------------------------------------------------------------------- runs
def test_cpu_run_prints_table_and_appends_one_row_per_run(tmp_path, capsys):
    out = tmp_path / "res" / "r.csv"
    for _ in range(2):
        assert cli.main([*TINY, "--preallocate", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("| variant | changes | compile | tok_per_s |") == 2
    assert "sample output" in stdout
    # --preallocate is the fastest code path, whose Triton kernels and PDL need CUDA: a fallback row on CPU
    table_rows = [line for line in stdout.splitlines() if line.startswith("| llama_fast-no |")]
    assert len(table_rows) == 2 and all(line.endswith("| fallback |") for line in table_rows)
    assert stdout.count("(fallback) llama_fast-no: CUDA only, not run on cpu: Triton kernels, PDL") == 2
    rows = read_rows(out)
    assert len(rows) == 2
    assert out.read_text().count("timestamp,commit") == 1
    for r in rows:
        assert_well_formed(r, status="fallback")
        assert (r["variant"], r["model"], r["dtype"], r["batch"], r["prompt_len"], r["new_tokens"]) == \
               ("llama_fast-no", "random:tiny", "fp32", "1", "16", "8")
    assert rows[0]["hash"] == rows[1]["hash"]


def test_default_variant_is_transformers_and_sweep_writes_chart(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--sweep", "batch", "--batch-sizes", "1,2", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["variant"], r["batch"]) for r in rows] == [("hf", "1"), ("hf", "2")]
    for r in rows:
        assert_well_formed(r)
    charts = list(tmp_path.glob("llama_sweep_*_batch.png"))
    assert len(charts) == 1 and charts[0].stat().st_size > 1000
    assert charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sample output (hf, first row" in stdout


def test_compare_table_on_cpu(tmp_path, capsys, monkeypatch):
    # the real FASTEST compiles for minutes on a small CPU; an eager llama_fast row with the Triton GEMV stands
    # in: on CPU its GEMVs run as torch matmuls, a fallback row
    eager_gemv = harness.Variant("gemv-eager", "Triton GEMV, eager", ForwardOptions(triton_gemv=True))
    monkeypatch.setitem(harness.VARIANTS, eager_gemv.key, eager_gemv)
    monkeypatch.setattr(harness, "FASTEST", eager_gemv.key)
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--compare", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = read_rows(out)
    assert [r["variant"] for r in rows] == ["hf", "hf-static", "gemv-eager"]  # run order: transformers first
    for r in rows:
        assert_well_formed(r, status="fallback" if r["variant"] == "gemv-eager" else "ok")
        assert r["mode"] == "compare" and float(r["roofline_pct"]) > 0
    assert len({r["hash"] for r in rows}) == 1
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert "% roofline" in table[0] and "vs hf-static" in table[0]
    assert [line.split("|")[2].strip() for line in table[1:]] == ["gemv-eager", "hf", "hf-static"]
    assert [line.split("|")[3].strip().endswith("(fallback)") for line in table[1:]] == [True, False, False]
    assert "(fallback) gemv-eager: CUDA only, not run on cpu: Triton kernels" in stdout
    assert table[3].rstrip(" |").endswith("1.00x")
    assert "roofline" in stdout


@pytest.mark.slow
def test_ablation_smollm2_fp32_same_hash_in_every_row(tmp_path):
    """Every full-precision row computes the same tokens (the same hash); the int8 and int4 rows run the fastest
    path over quantized weights (loaded once per scheme), recorded in the quantize column."""
    embedded_model_or_skip()
    out = tmp_path / "r.csv"
    res = run_cli("--ablation", "--dtype", "fp32", "--device", "cpu", "--prompt-lengths", "32", "--new-tokens", "24",
                  "--warmup-runs", "0", "--num-runs", "1", "--output", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    i = lines.index("| changes | compile | tok_per_s | max_mem_mb | hash | commit |")
    assert lines[i - 2].startswith("model smollm2-135m | batch 1 | prompt 32 | new tokens 24 | cache length 56 | fp32")
    table = [line.split("|")[1:-1] for line in lines[i + 2:i + 2 + len(harness.ABLATION)]]
    assert [c[0].strip() for c in table] == [harness.VARIANTS[k].label for k in harness.ABLATION]
    hashes = dict(zip(harness.ABLATION, (c[4].strip() for c in table)))
    full = {k: h for k, h in hashes.items() if k not in QUANTIZED_ROWS}
    assert len(set(full.values())) == 1, hashes
    assert all(re.fullmatch(r"[0-9a-f]{8}", hashes[k]) for k in QUANTIZED_ROWS)
    # rows of CUDA-only code paths ran their CPU fallback under the same label: marked, and a note each
    marked = [k for k, c in zip(harness.ABLATION, table) if c[2].strip().endswith("(fallback)")]
    assert marked == CPU_FALLBACK_ROWS
    notes = [line for line in lines if line.startswith("(fallback) ")]
    assert [n.split()[1].rstrip(":") for n in notes] == CPU_FALLBACK_ROWS
    assert notes[-1] == "(fallback) int4: CUDA only, not run on cpu: CUDA graphs, Triton kernels, PDL"
    rows = read_rows(out)
    assert [r["variant"] for r in rows] == harness.ABLATION
    for r in rows:
        assert_well_formed(r, status="fallback" if r["variant"] in CPU_FALLBACK_ROWS else "ok")
        assert r["quantize"] == QUANTIZED_ROWS.get(r["variant"], "none")
    hf = rows[0]["hash"]
    assert all(r["hash"] == hf for r in rows if r["variant"] not in QUANTIZED_ROWS), {r["variant"]: r["hash"]
                                                                                     for r in rows}
    assert hf == hashes["hf"]
    loads = [line for line in res.stderr.splitlines() if " weights loaded: " in line]
    assert [line.split("]")[1].split()[0] for line in loads] == ["fp32", "int8", "int4:g128"]


def test_profile_writes_a_trace(tmp_path, capsys):
    tb = tmp_path / "tb"
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--preallocate", "--profile", "--profile-dir", str(tb), "--output", str(out)]) == 0
    traces = list(tb.rglob("*.pt.trace.json"))
    assert len(traces) == 1, list(tb.rglob("*"))
    trace = json.loads(traces[0].read_text())
    assert trace["traceEvents"], "empty trace"
    assert not out.exists()  # profiling writes no CSV rows
    assert "traces written to" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- faults
def test_oom_at_one_sweep_point_records_a_row_and_continues(tmp_path, capsys, monkeypatch):
    real_measure = harness.measure
    seen = []

    def measure(runner, workload, *a, **kw):
        seen.append(workload.batch)
        if workload.batch == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real_measure(runner, workload, *a, **kw)

    monkeypatch.setattr(harness, "measure", measure)
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--preallocate", "--sweep", "batch", "--batch-sizes", "1,2,3", "--output", str(out)]) == 0
    assert seen == [1, 2, 3]
    rows = read_rows(out)
    # an OOM point has no numbers, so it is OOM even where the finished points are CPU fallbacks
    assert [(r["batch"], r["status"]) for r in rows] == [("1", "fallback"), ("2", "OOM"), ("3", "fallback")]
    assert rows[1]["tok_per_s"] == "" and rows[1]["hash"] == ""
    assert_well_formed(rows[0], status="fallback")
    assert_well_formed(rows[2], status="fallback")
    captured = capsys.readouterr()
    assert "| OOM |" in captured.out and "out of memory" in captured.err
    assert list(tmp_path.glob("llama_sweep_*_batch.png"))


def test_other_errors_propagate_after_finished_rows(tmp_path, monkeypatch):
    real_measure = harness.measure

    def measure(runner, workload, *a, **kw):
        if workload.batch == 2:
            raise ValueError("boom")
        return real_measure(runner, workload, *a, **kw)

    monkeypatch.setattr(harness, "measure", measure)
    out = tmp_path / "r.csv"
    with pytest.raises(ValueError, match="boom"):
        cli.main([*TINY, "--preallocate", "--batch-sizes", "1,2", "--output", str(out)])
    assert [r["batch"] for r in read_rows(out)] == ["1"]


def test_is_oom():
    assert runner.is_oom(torch.OutOfMemoryError("x"))
    assert runner.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert runner.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not runner.is_oom(RuntimeError("shape mismatch"))
    assert not runner.is_oom(ValueError("out of memory"))


def _half_matmul_unsupported(monkeypatch):
    """Make this CPU refuse fp16 matmuls, as some CPU builds do (api.check_dtype_on_device probes one)."""
    real = torch.Tensor.__matmul__

    def matmul(self, other):
        if self.dtype == torch.float16:
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return real(self, other)

    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)


def _non_llama_checkpoint(tmp_path: Path) -> str:
    d = tmp_path / "gpt2-ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                               "vocab_size": 100, "n_embd": 16, "n_layer": 1, "n_head": 2}))
    return str(d)


BAD_ARGS = {
    "unknown model": (["--model", "no-such-model"], "unknown model"),
    "unknown random shape": (["--model", "random:nope"], "random shape"),
    "hub id not cached": (["--model", "huggingface/llama-7b"], "huggingface/llama-7b"),
    "non-llama": (["--model", "<non-llama>"], "llama"),
    "empty batch list": (["--model", "random:tiny", "--batch-sizes", ""], "--batch-sizes"),
    "comma only": (["--model", "random:tiny", "--batch-sizes", ","], "--batch-sizes"),
    "zero batch": (["--model", "random:tiny", "--batch-sizes", "1,0"], "--batch-sizes"),
    "negative prompt": (["--model", "random:tiny", "--prompt-lengths", "-5"], "--prompt-lengths"),
    "not a number": (["--model", "random:tiny", "--prompt-lengths", "8,x"], "--prompt-lengths"),
    "zero new tokens": (["--model", "random:tiny", "--new-tokens", "0"], "--new-tokens"),
    "zero runs": (["--model", "random:tiny", "--num-runs", "0"], "--num-runs"),
    "beyond cache": (["--model", "random:tiny", "--prompt-lengths", "32", "--new-tokens", "24", "--cache-length",
                      "40"], "cache-length 40"),
    "beyond max positions": (["--model", "random:tiny", "--prompt-lengths", "4000", "--new-tokens", "200"],
                             "4096 positions"),
    "fp16 on this cpu": (["--model", "random:tiny", "--device", "cpu", "--dtype", "fp16"], "fp16"),
    "bad dtype": (["--model", "random:tiny", "--dtype", "fp8"],
                  "--dtype: unknown dtype 'fp8' (choose from fp16|float16|half, bf16|bfloat16, fp32|float32|float)"),
    "zero threads": (["--model", "random:tiny", "--threads", "0"], "--threads: must be a positive integer"),
    "threads not a number": (["--model", "random:tiny", "--threads", "two"], "--threads"),
    "bad device": (["--model", "random:tiny", "--device", "tpu"], "tpu"),
    "cuda without cuda": (["--model", "random:tiny", "--device", "cuda"], "cuda"),
    "prompt text on random model": (["--model", "random:tiny", "--prompt", "hello"], "tokenizer"),
    "ablation and compare": (["--model", "random:tiny", "--ablation", "--compare"], "--compare"),
    "compare variants alone": (["--model", "random:tiny", "--compare-variants", "fused,hf-static"], "needs --compare"),
    "compare variants unknown": (["--model", "random:tiny", "--compare", "--compare-variants", "fused,nope,hf-static"],
                                 "including hf-static"),
    "compare variants without reference": (["--model", "random:tiny", "--compare", "--compare-variants", "fused"],
                                           "including hf-static"),
    "temperature without sample": (["--model", "random:tiny", "--temperature", "0.7"], "--temperature needs --sample"),
    "zero temperature": (["--model", "random:tiny", "--sample", "--temperature", "0"], "temperature must be"),
    "negative temperature": (["--model", "random:tiny", "--sample", "--temperature", "-1"], "temperature must be"),
    "top-p above 1": (["--model", "random:tiny", "--sample", "--top-p", "1.5"], "top_p must lie in (0, 1]"),
    "top-p zero": (["--model", "random:tiny", "--sample", "--top-p", "0"], "top_p must lie in (0, 1]"),
    "top-k zero": (["--model", "random:tiny", "--sample", "--top-k", "0"], "top_k must be"),
    "unknown scheme": (["--model", "random:tiny", "--quantize", "int3"],
                       "--quantize: unknown quantization scheme 'int3' (choose from int8, int4, int4:g32, int4:g64, "
                       "int4:g128)"),
    "quantize with ablation": (["--model", "random:tiny", "--quantize", "int8", "--ablation"],
                               "--quantize does not apply to --ablation"),
    "re-quantize a quantized checkpoint": (["--model", "<int8 checkpoint>", "--quantize", "int4"],
                                           "holds int8 weights; --quantize int4:g128 cannot re-quantize them"),
    "ablation of a quantized checkpoint": (["--model", "<int8 checkpoint>", "--ablation"],
                                           "holds int8 weights: the ablation runs full-precision weights"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_argument_is_one_line_exit_2_and_csv_untouched(case, tmp_path, capsys, monkeypatch):
    args, needle = BAD_ARGS[case]
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    if case == "fp16 on this cpu":
        _half_matmul_unsupported(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [_non_llama_checkpoint(tmp_path) if a == "<non-llama>" else a for a in args]
    if "<int8 checkpoint>" in args:
        ckpt = tmp_path / "int8"
        loading.save_quantized("random:tiny", ckpt, "int8", "cpu", torch.float32)
        args = [str(ckpt) if a == "<int8 checkpoint>" else a for a in args]
    out = tmp_path / "r.csv"
    out.write_text(",".join(report.CSV_COLUMNS) + "\n" + ",".join(str(i) for i in range(len(report.CSV_COLUMNS)))
                   + "\n")
    before_bytes = out.read_bytes()
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--output", str(out)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip("\n").splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("llama-fast: error: ") and needle.lower() in lines[0].lower(), lines[0]
    assert captured.out == ""
    assert out.read_bytes() == before_bytes
    assert list(tmp_path.glob("*.png")) == []


def test_csv_with_other_columns_is_refused(tmp_path, capsys):
    out = tmp_path / "r.csv"
    out.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SystemExit) as exc:
        cli.main([*TINY, "--output", str(out)])
    assert exc.value.code == 2
    assert "other columns" in capsys.readouterr().err
    assert out.read_text() == "a,b,c\n1,2,3\n"


def test_bad_argument_as_a_process(tmp_path):
    out = tmp_path / "r.csv"
    out.write_bytes(b"keep me\n")
    res = run_cli("--model", _non_llama_checkpoint(tmp_path), "--output", str(out), timeout=120)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-fast: error: ") and "gpt2" in lines[0].lower(), res.stderr
    assert out.read_bytes() == b"keep me\n"


def test_append_row_writes_header_once_and_whole_lines(tmp_path):
    out = tmp_path / "sub" / "r.csv"
    for i in range(3):
        report.append_row(out, {"model": "m,with,commas", "batch": i, "changes": 'say "hi"\nthere', "status": "ok"})
    rows = read_rows(out)
    assert [r["batch"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["model"] == "m,with,commas" and rows[0]["changes"] == 'say "hi"\nthere'


# ------------------------------------------------------------------------------------------- dtype, threads
@pytest.mark.parametrize("name", sorted(loading.DTYPES))
def test_dtype_accepts_the_api_names(name):
    """--dtype takes exactly the names load_model(dtype=...) takes (loading.DTYPE_NAMES), each listed in --help."""
    args = cli_args.build_parser().parse_args(["--dtype", name])
    assert args.dtype is loading.parse_dtype(name) is loading.DTYPES[name]
    assert name in cli_args.build_parser().format_help()


def test_dtype_alias_runs_and_is_reported_by_its_short_name(tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--dtype", "float32", "--device", "cpu", "--output", str(out)]) == 0
    assert "| fp32 | cpu" in capsys.readouterr().out
    assert [r["dtype"] for r in read_rows(out)] == ["fp32"]


def test_threads_set_before_anything_runs(tmp_path):
    """--threads N: torch's thread count is N already while the model is resolved and while every run is timed."""
    n = (os.cpu_count() or 1) + 1  # never torch's default, so the check can fail
    out = tmp_path / "r.csv"
    script = f"""
import torch
from llama_fast import harness, loading
from llama_fast.cli import main
seen = []
real_config, real_measure = loading.random_config, harness.measure
def random_config(name):
    seen.append(("resolve", torch.get_num_threads()))
    return real_config(name)
def measure(*a, **kw):
    seen.append(("measure", torch.get_num_threads()))
    return real_measure(*a, **kw)
loading.random_config, harness.measure = random_config, measure
rc = main({[*TINY, "--threads", str(n), "--output", str(out)]!r})
print("RESULT", rc, torch.get_num_threads(), sorted(set(seen)))
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")][0]
    assert result == f"RESULT 0 {n} [('measure', {n}), ('resolve', {n})]"
    assert len(read_rows(out)) == 1


# ------------------------------------------------------------------------------------------- tokenizer
def test_weights_only_checkpoint_runs_with_the_id_tokenizer(tmp_path):
    """A transformers checkpoint directory without tokenizer files (save_pretrained of a model alone) runs with
    the id tokenizer and a warning, as load_model does, instead of failing in AutoTokenizer."""
    from core_helpers import TINY_CONFIGS, make_hf

    ckpt = tmp_path / "ckpt"
    make_hf(TINY_CONFIGS["gqa"], seed=3).save_pretrained(str(ckpt))
    assert not loading.has_tokenizer_files(ckpt)
    out = tmp_path / "r.csv"
    res = run_cli("--model", str(ckpt), "--preallocate", "--new-tokens", "4", "--prompt-lengths", "8",
                  "--warmup-runs", "0", "--num-runs", "1", "--output", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "has no tokenizer files" in res.stderr and "tokens decode to their ids" in res.stderr
    assert res.stderr.count("has no tokenizer files") == 1  # validation and loading share the warning
    rows = read_rows(out)
    assert [(r["model"], r["prompt_len"], r["new_tokens"]) for r in rows] == [(str(ckpt), "8", "4")]
    assert_well_formed(rows[0], status="fallback")


# ------------------------------------------------------------------------------------------- sweep chart
def test_sweep_keeps_earlier_charts(tmp_path, capsys):
    out = tmp_path / "r.csv"
    args = [*TINY, "--preallocate", "--sweep", "batch", "--batch-sizes", "1", "--output", str(out)]
    assert cli.main(args) == 0
    first = list(tmp_path.glob("llama_sweep_*_batch.png"))
    assert len(first) == 1
    first_bytes = first[0].read_bytes()
    assert cli.main(args) == 0
    second = first[0].with_name(first[0].stem + "_2.png")
    assert sorted(tmp_path.glob("llama_sweep_*.png")) == sorted([first[0], second])
    assert first[0].read_bytes() == first_bytes and second.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart: {second}" in capsys.readouterr().out


def test_new_chart_file_takes_the_first_free_suffix(tmp_path):
    for name in ["c.png", "c_2.png"]:
        (tmp_path / name).write_bytes(b"old")
    path, f = report.new_chart_file(tmp_path, "c")
    f.close()
    assert path == tmp_path / "c_3.png" and path.exists()
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "c_2.png").read_bytes() == b"old"


# ------------------------------------------------------------------------------------------- progress
def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path):
    out = tmp_path / "r.csv"
    res = run_cli(*TINY, "--preallocate", "--batch-sizes", "1,2", "--output", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "\x1b[" not in res.stderr and "\r" not in res.stderr, repr(res.stderr[-2000:])
    lines = res.stderr.splitlines()
    assert any(re.fullmatch(r"configurations: 0/2 cfg \(\d+\.\d s\)", line) for line in lines)
    assert any(re.fullmatch(r"configurations: 2/2 cfg \(\d+\.\d s\)", line) for line in lines)
    assert any(re.fullmatch(r"llama_fast-no b=2 p=16 n=8 cache=24: 1/1 run \(\d+\.\d s\)", line) for line in lines)
    assert any(line.startswith("[llama_fast-no b=1 p=16 n=8 cache=24] warm-up ") for line in lines)


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_draws_bars_only_on_a_terminal():
    from tqdm import tqdm

    plain = _Stream(tty=False)
    with progress.bar(2, "load", unit="step", stream=plain) as b:
        assert isinstance(b, progress.PlainBar)
        b.update(1)
        progress.note("halfway", stream=plain)
        b.update(1)
    assert [re.sub(r"\(\d+\.\d s\)", "(t)", line) for line in plain.getvalue().splitlines()] == \
        ["load: 0/2 step (t)", "load: 1/2 step (t)", "halfway", "load: 2/2 step (t)"]

    tty = _Stream(tty=True)
    with progress.bar(2, "load", unit="step", stream=tty) as b:
        assert isinstance(b, tqdm)
        b.update(2)
    assert "\r" in tty.getvalue() and "2/2" in tty.getvalue()


def test_library_bars_drop_redraws_off_a_terminal(capsys):
    """transformers' GGUF de-quantization bar is a bare tqdm: its redraws are dropped from a non-terminal
    stderr, while other text passes through."""
    from tqdm import tqdm

    with progress.library_bars():
        for _ in tqdm(range(3), desc="Converting"):
            pass
        print("a warning line", file=sys.stderr)
    err = capsys.readouterr().err
    assert err == "a warning line\n"


def test_sampled_run_records_its_parameters_and_hashes_the_same_twice(tmp_path, capsys):
    """--sample draws with a fixed seed: two processes' worth of runs give one hash, other than the greedy one;
    the CSV's sampling column and the table header name the parameters."""
    out = tmp_path / "r.csv"
    sampled = [*TINY, "--preallocate", "--output", str(out), "--sample", "--temperature", "0.8", "--top-p", "0.95"]
    for args in (sampled, sampled, [*TINY, "--preallocate", "--output", str(out)]):
        assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("| sampled temperature=0.8 top_p=0.95 seed=0") == 2 and stdout.count("| greedy") == 1
    rows = read_rows(out)
    assert [r["sampling"] for r in rows] == ["sampled temperature=0.8 top_p=0.95 seed=0"] * 2 + ["greedy"]
    assert rows[0]["hash"] == rows[1]["hash"] != rows[2]["hash"]


# ------------------------------------------------------------------------------------------- quantization
def test_quantized_run_records_its_scheme(tmp_path, capsys):
    """--quantize: the llama_fast row runs quantized weights, named in the header and the CSV's quantize column;
    a full-precision run says none."""
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--preallocate", "--quantize", "int4", "--output", str(out)]) == 0
    assert cli.main([*TINY, "--preallocate", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("| fp32 | cpu (") == 2 and captured.out.count("| greedy | int4:g128 weights") == 1
    rows = read_rows(out)
    assert [r["quantize"] for r in rows] == ["int4:g128", "none"]
    assert_well_formed(rows[0], status="fallback")
    assert rows[0]["hash"] != rows[1]["hash"]  # other weights, other tokens (random tiny, 8 tokens)
    assert "[random:tiny] int4:g128 weights loaded: " in captured.err and "peak" in captured.err


def test_compare_with_quantize_runs_transformers_on_the_dequantized_weights(tmp_path, capsys, monkeypatch):
    """--compare --quantize: the llama_fast row runs the quantized weights, the transformers rows the same weights
    dequantized, so all three compute the same tokens; % roofline counts the bytes each one reads."""
    eager = harness.Variant("eager", "eager", ForwardOptions())
    monkeypatch.setitem(harness.VARIANTS, eager.key, eager)
    monkeypatch.setattr(harness, "FASTEST", eager.key)
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--compare", "--quantize", "int8", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = read_rows(out)
    assert [(r["variant"], r["quantize"]) for r in rows] == [("hf", "int8"), ("hf-static", "int8"), ("eager", "int8")]
    assert len({r["hash"] for r in rows}) == 1
    roof = [line for line in stdout.splitlines() if line.startswith("roofline ")][0]
    assert re.match(r"roofline [\d.]+ tok/s; int8 weights [\d.]+ tok/s \(measured now: ", roof), roof
    dense, int8 = (float(x) for x in re.findall(r"([\d.]+) tok/s", roof))
    assert int8 > dense
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| llama_fast (fastest), int8 | eager |")


def test_quantized_checkpoint_as_model(tmp_path, capsys):
    """--model DIR of `llama-fast quantize`: runs its own scheme (no --quantize needed, or the same one)."""
    ckpt = tmp_path / "q"
    assert cli.main(["quantize", "random:tiny", str(ckpt), "--quantize", "int8", "--dtype", "fp32"]) == 0
    out = tmp_path / "r.csv"
    with pytest.warns(UserWarning, match="no tokenizer files"):
        assert cli.main([*TINY, "--model", str(ckpt), "--preallocate", "--output", str(out)]) == 0
    assert cli.main([*TINY, "--model", str(ckpt), "--preallocate", "--quantize", "int8", "--output", str(out)]) == 0
    assert cli.main([*TINY, "--preallocate", "--quantize", "int8", "--output", str(out)]) == 0
    rows = read_rows(out)
    assert [r["quantize"] for r in rows] == ["int8"] * 3
    assert rows[0]["hash"] == rows[1]["hash"] == rows[2]["hash"]  # the saved weights are the ones quantized at load
    assert "| int8 weights" in capsys.readouterr().out


def test_one_load_per_weight_scheme_the_previous_model_freed_first(tmp_path, capsys, monkeypatch):
    """Rows over other weights (an ablation's int8 / int4) load the model again, once per scheme, in the rows'
    order; the previous model is gone before the next one loads."""
    import gc
    import weakref

    from llama_fast import api

    rows = [harness.Variant("eager", "eager", ForwardOptions()),
            harness.Variant("eager-int8", "eager, int8 weights", ForwardOptions(), quantize="int8"),
            harness.Variant("eager-too", "eager again", ForwardOptions())]
    for v in rows:
        monkeypatch.setitem(harness.VARIANTS, v.key, v)
    assert [(q, [v.key for v in vs]) for q, vs in runner.by_quantize(rows)] == \
        [(None, ["eager", "eager-too"]), ("int8", ["eager-int8"])]
    loads, previous = [], []
    real_load = api.load_model

    def load_model(*args, **kw):
        gc.collect()
        loads.append((kw.get("quantize"), all(r() is None for r in previous)))
        fast = real_load(*args, **kw)
        previous.append(weakref.ref(fast))
        return fast

    monkeypatch.setattr(api, "load_model", load_model)
    out = tmp_path / "r.csv"
    assert cli.main([*TINY, "--compare", "--compare-variants", "eager,eager-int8,eager-too,hf-static",
                     "--output", str(out)]) == 0
    assert loads == [(None, True), ("int8", True)]
    got = [(r["variant"], r["quantize"]) for r in read_rows(out)]
    assert got == [("hf-static", "none"), ("eager", "none"), ("eager-too", "none"), ("eager-int8", "int8")]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| llama_fast (eager-int8) |")]
    assert len(table) == 1  # a row with its own scheme keeps its own name
