"""Kernel configs and PDL on any GPU (llama_fast/kernels/configs.py, tuning.py, pdl.py), on the CPU: the GPU is
named through a patched configs.current_gpu_key, the autotune's timing function is a fake, and the cache lives
under a temporary $LLAMA_FAST_CACHE. One test runs every candidate config of the real launchers in Triton's
interpreter, so the candidates the autotune times on a GPU build and compute the same results."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (the CPU torch build has none): the launch policy "
                                       "lives beside the kernels")

REPO = Path(__file__).resolve().parents[1]
A10G = "NVIDIA A10G|sm86|80"

# the Llama-7B and Llama-3-8B decode shapes of every form: (form, n, K), the form with the launch's heads where
# the launch passes them (configs.heads_form)
SHAPES = [("qkv_rope:32/32", 12288, 4096), ("residual", 4096, 4096), ("swiglu", 11008, 4096),
          ("residual", 4096, 11008), ("rmsnorm", 32000, 4096), ("gemv", 12288, 4096), ("attention:32/32", 1200, 128),
          ("qkv_rope:32/8", 6144, 4096), ("swiglu", 14336, 4096), ("residual", 4096, 14336), ("rmsnorm", 128256, 4096),
          ("attention:32/8", 1200, 128)]


def quant_form(form: str, fmt: str) -> str:
    """form on weights of fmt, its heads kept: "qkv_rope:32/32" -> "qkv_rope_int4:32/32"."""
    base, sep, heads = form.partition(":")
    return f"{base}_{fmt}{sep}{heads}"


def base(form: str) -> str:
    return form.partition(":")[0]


QUANT_SHAPES = [(quant_form(form, fmt), n, K) for form, n, K in SHAPES[:5] for fmt in ("int8", "int4")]


def h200_pins(form: str, n: int) -> dict:
    """The configs every eager launch took before configs were keyed by GPU (written out here, not imported:
    the H200's table entry must keep launching exactly these)."""
    form = base(form)
    quant = {"int8": {"BLOCK_N": 8, "BLOCK_K": 2048, "num_warps": 4, "num_stages": 3},
             "swiglu_int8": {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 2},
             "qkv_rope_int8": {"BLOCK_N": 16, "BLOCK_K": 2048, "num_warps": 4, "num_stages": 3},  # trial set 23
             "int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3},
             # measured since (docs/PERF.md, trial set 12): the int4 residual GEMVs at 16 rows over 8 warps
             "residual_int4": {"BLOCK_N": 16, "BLOCK_K": 4096, "num_warps": 8, "num_stages": 3},
             # trial sets 13, 15, 21, 22: w13, wqkv and the head as persistent programs, 4 an SM
             "swiglu_int4": {"BLOCK_N": 4, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4},
             "qkv_rope_int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4},
             "rmsnorm_int4": {"BLOCK_N": 8, "BLOCK_K": 4096, "num_warps": 4, "num_stages": 3, "PERSIST": 4}}
    fmt = form.rpartition("_")[2]
    if fmt in ("int8", "int4"):
        return quant.get(form) or quant[fmt]
    if form == "qkv_rope":
        return {"BLOCK_N": 16, "BLOCK_K": 256, "num_warps": 4, "num_stages": 3}
    if form == "attention":
        return {"CHUNK": 128, "num_warps": 4}
    if form == "residual":
        return {"BLOCK_N": 8, "BLOCK_K": 1024, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_N": 16 if n >= 16384 else 8, "BLOCK_K": 512, "num_warps": 4,
            "num_stages": 2 if form == "swiglu" else 3}


class FakeTimer:
    """MAKE_TIMER's stand-in: a time per config from `cost` (default: fastest at the widest K tile, then the
    widest N tile, then the most warps), recording every (form, n, K) it built a timer for and every config it timed."""

    def __init__(self, cost=None):
        self.built, self.timed = [], []
        self.cost = cost or (lambda c: 1.0 / (c.get("BLOCK_K", c.get("CHUNK", 1)) * 1000 + c.get("BLOCK_N", 0) * 10
                                              + c["num_warps"]))

    def __call__(self, form, n, K):
        self.built.append((form, n, K))

        def time_fn(config):
            self.timed.append((form, n, K, dict(config)))
            return self.cost(config)

        return time_fn


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """A fresh tuning state (no cache read in this process), the cache under tmp_path, the table shown, no
    override, and a way to name the GPU the lookups see."""
    from llama_fast.kernels import configs, tuning

    monkeypatch.setenv("LLAMA_FAST_CACHE", str(tmp_path / "cache"))
    for var in ("LLAMA_FAST_CONFIG_TABLE", "LLAMA_FAST_GEMV_AUTOTUNE", "TRITON_INTERPRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(configs, "CONFIG_OVERRIDE", None)
    monkeypatch.setattr(tuning, "_caches", {})
    monkeypatch.setattr(tuning, "_warned", set())
    timer = FakeTimer()
    monkeypatch.setattr(tuning, "MAKE_TIMER", timer)

    def name(key):
        monkeypatch.setattr(configs, "current_gpu_key", lambda: key)
        return timer

    return name


def test_h200_config_table_launches_the_same_configs_as_before(gpu):
    """On the H200 (its key as its properties make it) every form at the Llama decode shapes takes exactly the
    configs pinned before the table existed, and nothing is timed."""
    from llama_fast.kernels import configs

    assert configs.gpu_key("NVIDIA H200", (9, 0), 132) == configs.H200
    timer = gpu(configs.H200)
    for form, n, K in SHAPES + QUANT_SHAPES:
        assert configs.pinned_config(base(form), n, K, form) == h200_pins(form, n), (form, n, K)
    assert timer.built == []
    # off a GPU (Triton's interpreter) the H200's configs apply too
    gpu(None)
    assert configs.pinned_config("swiglu", 11008, 4096) == h200_pins("swiglu", 11008)
    assert timer.built == []


def test_h200_pins_hold_at_the_shapes_measured_and_other_gemv_shapes_are_tuned(gpu):
    """The H200's fused-block GEMV and attention pins were measured at the Llama-7B and Llama-3-8B tp 1 decode
    shapes and heads; the same forms at a tensor-parallel rank's half shapes (Llama-7B at tp 2: 16 / 16 heads,
    whose wqkv GEMV has Llama-3-8B's (n, K)) take the tuned path (the pin its first candidate), once each, cached;
    forms keyed by form alone (the plain GEMV, the quantized GEMVs) keep their pins."""
    from llama_fast.kernels import configs, tuning

    shaped = {s for s in SHAPES if base(s[0]) in configs.SHAPED_FORMS}
    assert configs.H200_GEMV_SHAPES == shaped
    assert configs.H200_ATTENTION_HEADS == {configs.split_form(f)[1] for f, _, _ in SHAPES if base(f) == "attention"}
    timer = gpu(configs.H200)
    half = [("swiglu", 5504, 4096), ("residual", 4096, 2048), ("residual", 4096, 5504),
            ("qkv_rope:16/16", 6144, 4096), ("attention:16/16", 1200, 128)]
    for form, n, K in half:
        got = configs.pinned_config(base(form), n, K, form)
        assert got == min(tuning.candidates(form, n, K), key=timer.cost) != h200_pins(form, n), (form, n, K)
    assert timer.built == half
    for form, n, K in half:  # cached
        configs.pinned_config(base(form), n, K, form)
    assert configs.pinned_config("qkv_rope", 6144, 4096, configs.heads_form("qkv_rope", 32, 8)) == \
        h200_pins("qkv_rope", 6144)
    assert configs.pinned_config("attention", 600, 128, configs.attention_form(32, 8)) == h200_pins("attention", 600)
    assert configs.pinned_config("attention", 600, 128) == h200_pins("attention", 600)
    assert configs.pinned_config("gemv", 6144, 4096) == h200_pins("gemv", 6144)
    assert configs.pinned_config("swiglu_int4", 5504, 4096) == h200_pins("swiglu_int4", 5504)
    assert configs.pinned_config("qkv_rope_int4", 6144, 4096, "qkv_rope_int4:16/16") == \
        h200_pins("qkv_rope_int4", 6144)
    assert timer.built == half


def test_rows_gemv_takes_the_h200_changes_on_the_h200_and_is_tuned_at_its_rows_elsewhere(gpu):
    """configs.rows_config: past one row the H200 (and the CPU, whose configs are the H200's) takes the one-row
    pin with the changes measured at 2 rows, written out here; one row takes the pin as it was. An unmeasured GPU
    tunes the rows form ("rows_<form>") on its own, at its own key, once; an override of "rows_<form>" wins."""
    from llama_fast.kernels import configs, tuning

    changes = {"swiglu_int4": {"PERSIST": 2}, "qkv_rope_int4": {"PERSIST": 2}, "residual_int8": {"BLOCK_K": 1024}}
    for key in (configs.H200, None):
        timer = gpu(key)
        for form, n, K in QUANT_SHAPES:
            one = configs.rows_config(base(form), n, K, 1, form)
            assert one == h200_pins(form, n), (key, form)
            assert configs.rows_config(base(form), n, K, 2, form) == {**one, **changes.get(base(form), {})}, form
        assert timer.built == []
    timer = gpu(A10G)
    one = configs.rows_config("swiglu_int4", 11008, 4096, 1)
    rows = configs.rows_config("swiglu_int4", 11008, 4096, 2)
    assert timer.built == [("swiglu_int4", 11008, 4096), ("rows_swiglu_int4", 11008, 4096)]
    assert rows == tuning.load(A10G).get("rows_swiglu_int4", 11008, 4096) and rows == one  # FakeTimer's pick
    assert tuning.candidates("rows_swiglu_int4", 11008, 4096)[0] == {**h200_pins("swiglu_int4", 11008), "PERSIST": 2}
    configs.rows_config("qkv_rope_int4", 12288, 4096, 2, "qkv_rope_int4:32/32")
    assert timer.built[-1] == ("rows_qkv_rope_int4:32/32", 12288, 4096)
    configs.CONFIG_OVERRIDE = lambda form, n, K: {"BLOCK_N": 2} if form == "rows_swiglu_int4" else None
    assert configs.rows_config("swiglu_int4", 11008, 4096, 2) == {"BLOCK_N": 2}
    assert configs.rows_config("swiglu_int4", 11008, 4096, 1) == one and len(timer.built) == 3


def test_qkv_rope_launch_is_tuned_at_its_heads(gpu):
    """The wqkv GEMV's launch passes its heads: an unmeasured GPU tunes Llama-3-8B's 32 / 8 and a Llama-7B tp 2
    rank's 16 / 16 (the same (n, K)) apart (the autotune's launcher at those heads: the interpreter test below)."""
    import torch

    from llama_fast.kernels import qkv_rope, tuning

    timer = gpu(A10G)
    x = torch.zeros(1, 4096)
    for H, hkv in ((32, 8), (16, 16)):
        cache = torch.zeros(1, hkv, 16, 128)
        qkv_rope.qkv_rope_call(x, torch.zeros(1), torch.ones(4096), torch.zeros(6144, 4096), 1e-5, torch.ones(128),
                               torch.zeros(128), cache, cache, torch.zeros(1, dtype=torch.long), H, 0, None, None, 0)
    assert timer.built == [("qkv_rope:32/8", 6144, 4096), ("qkv_rope:16/16", 6144, 4096)]
    assert tuning.load(A10G).get("qkv_rope:16/16", 6144, 4096) is not None


def test_attention_is_tuned_at_its_launch_heads(gpu):
    """(cache slots, head dim) do not fix the attention's programs, nor for a grouped-query model its kernel: an
    unmeasured GPU tunes and caches each heads geometry on its own ("attention:H/Hkv"), the launch's own config
    lookup passes it, the H200 keeps its pin untimed, and a trial table's "attention" entry still overrides."""
    from llama_fast.kernels import attention, configs, tuning

    timer = gpu(A10G)
    timer.cost = lambda c: 1.0 / (c["CHUNK"] * 10 + c["num_warps"])  # the widest chunk, then the most warps
    assert attention._attn_config(1200, 128, 32, 8) == (256, 8)
    assert attention._attn_config(1200, 128, 16, 16) == (256, 8)
    attention._attn_config(1200, 128, 32, 8)  # cached
    assert timer.built == [("attention:32/8", 1200, 128), ("attention:16/16", 1200, 128)]
    assert tuning.load(A10G).get("attention:32/8", 1200, 128) == {"CHUNK": 256, "num_warps": 8}
    assert tuning.weight_bytes("attention:32/8", 1200, 128) == 2 * 8 * 1200 * 128 * 2
    assert tuning.base_form("attention:32/8") == ("attention", (32, 8)) and tuning.base_form("swiglu") == \
        ("swiglu", None)
    gpu(configs.H200)
    assert attention._attn_config(1200, 128, 32, 8) == (128, 4) and len(timer.built) == 2  # nothing timed
    configs.CONFIG_OVERRIDE = lambda form, n, K: {"CHUNK": 64, "num_warps": 2} if form == "attention" else None
    try:
        assert attention._attn_config(1200, 128, 32, 8) == (64, 2)
    finally:
        configs.CONFIG_OVERRIDE = None


def test_config_autotune_on_an_unknown_gpu_runs_once_and_is_cached(gpu, tmp_path, capsys):
    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    first = configs.pinned_config("residual", 4096, 11008)
    cands = tuning.candidates("residual", 4096, 11008)
    assert first == min(cands, key=timer.cost) != h200_pins("residual", 4096)
    assert [t[3] for t in timer.timed] == cands  # each candidate timed once
    assert "tuning the residual kernel (n=4096, K=11008) for NVIDIA A10G" in capsys.readouterr().err
    assert configs.pinned_config("residual", 4096, 11008) == first
    assert timer.built == [("residual", 4096, 11008)]  # not timed again
    configs.pinned_config("residual", 4096, 4096)  # another shape of the form: its own tuning
    assert timer.built == [("residual", 4096, 11008), ("residual", 4096, 4096)]
    path = tuning.cache_path(A10G)
    assert path.parent == tmp_path / "cache" and "a10g" in path.name and f"-v{tuning.SCHEMA}.json" in path.name
    data = json.loads(path.read_text())
    assert data["gpu"] == A10G and data["schema"] == tuning.SCHEMA
    assert data["configs"]["residual|4096|11008"] == first


def test_config_autotune_leaves_out_a_config_the_gpu_cannot_run(gpu, recwarn):
    """A candidate that does not build or fit on this GPU (OutOfResources, a ptxas error) is left out with one
    warning and the fastest of the rest is kept; when none runs, one clear error."""
    from triton.runtime.errors import OutOfResources

    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    cands = tuning.candidates("residual", 4096, 11008)
    fastest = min(cands, key=timer.cost)
    cost = timer.cost

    def refuse_the_fastest(c):
        if c == fastest:
            raise OutOfResources(300_000, 232_448, "shared memory")
        return cost(c)
    timer.cost = refuse_the_fastest
    chosen = configs.pinned_config("residual", 4096, 11008)
    assert chosen == min((c for c in cands if c != fastest), key=cost)
    warned = [str(w.message) for w in recwarn if issubclass(w.category, tuning.TuningWarning)]
    assert len(warned) == 1 and "left out 1 config(s)" in warned[0] and "OutOfResources" in warned[0], warned

    def refuse_all(c):
        raise OutOfResources(300_000, 232_448, "shared memory")
    timer.cost = refuse_all
    with pytest.raises(RuntimeError, match="no candidate config runs on this GPU"):
        configs.pinned_config("residual", 4096, 4096)


def test_config_cache_is_read_back_by_a_second_process(gpu, tmp_path):
    """Choices written by one process are what a fresh process launches, without timing anything."""
    from llama_fast.kernels import configs

    gpu(A10G)
    chosen = {shape: configs.pinned_config(*shape) for shape in SHAPES[:3]}
    script = f"""
import json
from llama_fast.kernels import configs, tuning
configs.current_gpu_key = lambda: {A10G!r}
def no_timing(form, n, K):
    raise AssertionError(f"timed {{form}} again")
tuning.MAKE_TIMER = no_timing
print(json.dumps([configs.pinned_config(*s) for s in {SHAPES[:3]!r}]))
"""
    env = {**os.environ, "LLAMA_FAST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == list(chosen.values())


def test_config_cache_keeps_what_another_process_wrote_meanwhile(gpu):
    from llama_fast.kernels import configs, tuning

    gpu(A10G)
    configs.pinned_config("gemv", 12288, 4096)
    other = tuning.ConfigCache(A10G)  # another process, started before this one's choice
    other.configs.clear()
    other.put("swiglu", 11008, 4096, {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2})
    configs.pinned_config("residual", 4096, 4096)
    assert set(json.loads(tuning.cache_path(A10G).read_text())["configs"]) == {
        "gemv|12288|4096", "swiglu|11008|4096", "residual|4096|4096"}


@pytest.mark.parametrize("content", ["{not json", '{"schema": 0, "gpu": "x", "configs": {}}',
                                     '{"schema": 1, "gpu": "NVIDIA A10G|sm86|80", "configs": {"gemv|1|1": 3}}'])
def test_config_cache_corrupt_file_is_ignored_with_one_warning_and_rewritten(gpu, content):
    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    path = tuning.cache_path(A10G)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.warns(tuning.TuningWarning, match="ignoring the kernel config cache") as record:
        chosen = configs.pinned_config("swiglu", 11008, 4096)
        configs.pinned_config("gemv", 12288, 4096)
    assert len(record) == 1
    assert [b[0] for b in timer.built] == ["swiglu", "gemv"]
    data = json.loads(path.read_text())
    assert data["configs"]["swiglu|11008|4096"] == chosen and "gemv|12288|4096" in data["configs"]


def test_config_table_hidden_forces_the_autotune(gpu, monkeypatch):
    """LLAMA_FAST_CONFIG_TABLE=0: the H200 takes the unknown GPU's path (timed, cached under its own key)."""
    from llama_fast.kernels import configs, tuning

    timer = gpu(configs.H200)
    monkeypatch.setenv("LLAMA_FAST_CONFIG_TABLE", "0")
    got = configs.pinned_config("attention", 1200, 128)
    assert timer.built == [("attention", 1200, 128)]
    assert got == min(tuning.candidates("attention", 1200, 128), key=timer.cost) != h200_pins("attention", 1200)
    assert tuning.cache_path(configs.H200).exists()
    monkeypatch.setenv("LLAMA_FAST_CONFIG_TABLE", "1")
    assert configs.pinned_config("attention", 1200, 128) == h200_pins("attention", 1200)


def test_config_ties_keep_the_h200_config(gpu):
    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    timer.cost = lambda c: 1.0
    assert configs.pinned_config("qkv_rope_int4", 12288, 4096) == h200_pins("qkv_rope_int4", 12288)
    assert len(timer.timed) == len(tuning.candidates("qkv_rope_int4", 12288, 4096))


def test_config_inside_a_capture_falls_back_and_warns_once(gpu, monkeypatch):
    """No timing inside a CUDA-graph capture: the H200's config, one warning per form, nothing cached; the next
    eager launch tunes."""
    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    monkeypatch.setattr(tuning, "capturing", lambda: True)
    with pytest.warns(tuning.TuningWarning, match="inside a CUDA-graph capture") as record:
        assert configs.pinned_config("swiglu", 11008, 4096) == h200_pins("swiglu", 11008)
        assert configs.pinned_config("swiglu", 14336, 4096) == h200_pins("swiglu", 14336)
    assert len(record) == 1 and timer.built == [] and not tuning.cache_path(A10G).exists()
    monkeypatch.setattr(tuning, "capturing", lambda: False)
    configs.pinned_config("swiglu", 11008, 4096)
    assert timer.built == [("swiglu", 11008, 4096)]


def test_config_inside_a_trace_takes_the_h200_config_untimed(gpu):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from llama_fast.kernels import configs, tuning

    timer = gpu(A10G)
    with FakeTensorMode():
        assert tuning.tracing()
        assert configs.pinned_config("gemv", 12288, 4096) == h200_pins("gemv", 12288)
    assert not tuning.tracing() and timer.built == []


@pytest.mark.parametrize("form", ["gemv", "rmsnorm", "residual", "swiglu", "qkv_rope", "attention"])
def test_config_candidates_keep_the_kernels_constraints(form):
    from llama_fast.kernels import configs, tuning
    from llama_fast.model import ROPE_MIN_HEAD_DIM

    for suffix in ([""] if form == "attention" else ["", "_int8", "_int4"]):
        f, n, K = form + suffix, 12288, 4096
        cands = tuning.candidates(f, n, K)
        assert cands[0] == configs.h200_config(f, n, K) and 4 <= len(cands) <= 10
        assert all(c not in cands[:i] for i, c in enumerate(cands))
        for c in cands:
            if form == "attention":
                assert set(c) == {"CHUNK", "num_warps"}
                continue
            rows = 4 if form == "swiglu" else 8  # the sum-of-squares group; SwiGLU writes no partials
            assert c["BLOCK_N"] % rows == 0 and ROPE_MIN_HEAD_DIM % c["BLOCK_N"] == 0, (f, c)
            if suffix:
                bytes_per_thread = c["BLOCK_K"] * (1 if suffix == "_int8" else 0.5) / (32 * c["num_warps"])
                assert bytes_per_thread in (8, 16), (f, c)


@pytest.mark.parametrize("form", ["gemm16_plain", "gemm16_rmsnorm", "gemm16_swiglu", "gemm32_plain_int8",
                                  "gemm16_swiglu_int4", "gemm64_rmsnorm_int4"])
def test_gemm_candidates_keep_the_kernels_constraints(form):
    """The small-M GEMM's candidates: the H200's (gemm.py's tables) first, then distinct tiles whose K tile is a
    power of two of 64-256 (an int4 group is a multiple or a divisor of it) and a K split of 1-8 programs per SM."""
    from llama_fast.kernels import configs, gemm, tuning

    cands = tuning.candidates(form, 4096, 4096)
    assert cands[0] == configs.h200_config(form, 4096, 4096) == gemm.gemm_config(*gemm.parse_form(form))
    assert 4 <= len(cands) <= 8 and all(c not in cands[:i] for i, c in enumerate(cands))
    for c in cands:
        assert c["BLOCK_K"] in (64, 128, 256) and c["BLOCK_N"] in (32, 64, 128) and 1 <= c.get("PER_SM", 1) <= 8


def test_gemm_takes_the_table_the_tuned_or_inside_a_trace_the_cached_config(gpu):
    """gemm.launch_config, which the GEMM's launch asks inside torch.compile too: the H200 (the table) its pins, an
    unknown GPU its tuned choice, timed once and cached; inside a trace (nothing can be timed) an untuned shape
    takes the H200's and a tuned one the cached choice."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from llama_fast.kernels import configs, gemm

    timer = gpu(configs.H200)
    assert gemm.launch_config(3, False, gemm.WFMT_DENSE, True, 12288, 4096) == gemm.GEMM_CONFIGS[(16, "rmsnorm")]
    assert timer.built == []
    timer = gpu(A10G)
    with FakeTensorMode():
        assert gemm.launch_config(8, True, gemm.WFMT_INT4, True, 11008, 4096) == \
            gemm.GEMM_INT4_CONFIGS[(16, "swiglu")]
    assert timer.built == []
    tuned = gemm.launch_config(8, True, gemm.WFMT_INT4, True, 11008, 4096)
    # FakeTimer's pick: the widest K tile, then the widest N tile, the first of equals (the H200's, timed first)
    assert timer.built == [("gemm16_swiglu_int4", 11008, 4096)]
    assert tuned == {"BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 8, "num_stages": 3, "PER_SM": 2}
    with FakeTensorMode():
        assert gemm.launch_config(8, True, gemm.WFMT_INT4, True, 11008, 4096) == tuned
    assert gemm.launch_config(5, True, gemm.WFMT_INT4, True, 11008, 4096) == tuned and len(timer.built) == 1


CANDIDATES_RUN = r"""
import sys, torch
from llama_fast.kernels import tuning

torch.manual_seed(0)
for form, n, K in [("residual", 64, 256), ("swiglu", 48, 256), ("qkv_rope", 192, 256), ("qkv_rope:4/2", 256, 256),
                   ("attention", 80, 32),
                   ("attention:8/2", 80, 32), ("rmsnorm_int8", 64, 256), ("swiglu_int4", 32, 256),
                   ("gemm16_rmsnorm", 64, 256),
                   ("gemm32_swiglu_int4", 32, 256), ("gemm16_plain_int8", 48, 256), ("rows_residual_int4", 64, 256),
                   ("rows_swiglu_int8", 32, 256), ("rows_rmsnorm_int4", 48, 256), ("rows_qkv_rope_int8:4/2", 256, 256)]:
    call = tuning.launcher(form, n, K, torch.device("cpu"), torch.float32)
    outs = []
    for config in tuning.candidates(form, n, K):
        with tuning.forced(tuning.base_form(form)[0], n, K, config):
            out = call()
        outs.append((config, out[0] if isinstance(out, tuple) else out))
    ref = outs[0][1]
    for config, out in outs[1:]:
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), (form, config, (out - ref).abs().max())
    timed = tuning.kernel_timer(form, n, K, "cpu", calls=1, reps=1)(outs[-1][0])
    assert timed > 0, timed
    print(form, len(outs), "candidates agree")
print("ok")
"""


def test_config_candidates_run_and_agree_in_the_interpreter():
    """Every candidate of each form launches through the autotune's own launcher (the op at the key's shape; a rows
    GEMV form at its 2 rows) and computes what the H200's config computes (fp32, Triton's interpreter)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", CANDIDATES_RUN], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


# ------------------------------------------------------------------------------------------- PDL
class _CudaLike:
    """What use_pdl reads of a tensor: on a CUDA device."""
    is_cuda = True
    device = torch.device("cuda", 0)


@pytest.mark.parametrize("capability, applies", [((8, 6), False), ((8, 0), False), ((9, 0), True), ((10, 0), True)])
def test_pdl_only_where_the_gpu_has_it(monkeypatch, capability, applies):
    """PDL from compute capability 9.0 on (an A10G, 8.6, launches without it); LLAMA_FAST_PDL=0 turns it off."""
    from llama_fast.kernels import pdl

    if pdl.gdc_wait is None:
        pytest.skip("this Triton has no grid dependency control: PDL never applies")
    for var in ("TRITON_INTERPRET", "LLAMA_FAST_PDL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pdl, "device_capability", lambda device: capability)
    for mode in (pdl.PDL_TRIGGER_EARLY, pdl.PDL_TRIGGER_LATE):
        assert pdl.use_pdl(_CudaLike(), mode) == (mode if applies else pdl.PDL_OFF)
    assert pdl.use_pdl(_CudaLike(), pdl.PDL_OFF) == pdl.PDL_OFF
    monkeypatch.setenv("LLAMA_FAST_PDL", "0")
    assert pdl.use_pdl(_CudaLike(), pdl.PDL_TRIGGER_LATE) == pdl.PDL_OFF
    monkeypatch.setenv("LLAMA_FAST_PDL", "1")
    assert pdl.use_pdl(_CudaLike(), pdl.PDL_TRIGGER_LATE) == (pdl.PDL_TRIGGER_LATE if applies else pdl.PDL_OFF)
