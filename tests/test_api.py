"""llama_fast.api: load_model's device / dtype / option handling, DeviceError, output_hash, IdTokenizer,
and the compiled step functions agreeing with eager."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

import llama_fast
from llama_fast import ForwardOptions, LlamaFast, output_hash
from llama_fast.api import DeviceError, check_dtype_on_device, resolve_device
from llama_fast.loading import DTYPES, IdTokenizer, dtype_name, parse_dtype

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")


def test_public_names():
    for name in llama_fast.__all__:
        assert getattr(llama_fast, name) is not None


def test_auto_device_and_default_dtype_on_cpu_machine():
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine 'auto' picks the GPU")
    fast = llama_fast.load_model("random:tiny")
    assert fast.device == torch.device("cpu") and fast.dtype == torch.float32
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_requested_without_cuda(device):
    with pytest.raises(DeviceError, match="device 'cuda' requested but CUDA is not available"):
        llama_fast.load_model("random:tiny", device=device)


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)


@pytest.mark.parametrize("dtype", ["fp8", "int8", "float64", "bfloat", "FP32"])
def test_unknown_dtype(dtype):
    with pytest.raises(ValueError, match=f"unknown dtype '{dtype}' \\(choose from "
                                         "fp16\\|float16\\|half, bf16\\|bfloat16, fp32\\|float32\\|float\\)"):
        llama_fast.load_model("random:tiny", device="cpu", dtype=dtype)


def test_dtype_names():
    """One table of names (loading.DTYPE_NAMES), shared with the CLI's --dtype (tests/test_cli.py)."""
    expected = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    assert DTYPES == expected
    assert all(parse_dtype(name) is dtype for name, dtype in expected.items())
    assert parse_dtype(torch.float32) is torch.float32
    assert [dtype_name(d) for d in (torch.float16, torch.bfloat16, torch.float32)] == ["fp16", "bf16", "fp32"]


@pytest.mark.parametrize("name", ["fp32", "float32", "float"])
def test_load_model_takes_every_fp32_name(name):
    assert llama_fast.load_model("random:tiny", device="cpu", dtype=name).dtype == torch.float32


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_on_cpu(dtype, torch_dtype):
    """bf16 / fp16 either run on this CPU, or fp16 is refused with a DeviceError up front."""
    try:
        fast = llama_fast.load_model("random:tiny", device="cpu", dtype=dtype)
    except DeviceError as e:
        assert dtype == "fp16" and "fp16 is not supported on this CPU" in str(e)
        return
    assert {p.dtype for p in fast.model.parameters()} == {torch_dtype}
    out = fast.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (1, 7)


def test_fp16_refused_when_the_cpu_cannot_compute_it(monkeypatch):
    def no_half_matmul(*args, **kw):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    monkeypatch.setattr(torch.Tensor, "__matmul__", no_half_matmul)
    with pytest.raises(DeviceError, match="fp16 is not supported on this CPU.*Half"):
        check_dtype_on_device(torch.float16, torch.device("cpu"))
    check_dtype_on_device(torch.float32, torch.device("cpu"))  # fp32 never probed


def test_load_model_passes_options_through():
    opts = ForwardOptions(fused_qkv=False, rope_cat=True)
    fast = llama_fast.load_model("random:tiny", device="cpu", options=opts, prefill_chunk=8, cache_length=64)
    assert isinstance(fast, LlamaFast)
    assert fast.options == opts and fast.model.options == opts
    assert fast.prefill_chunk == 8 and fast.cache_length == 64 and fast.name == "random:tiny"
    fast.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)
    assert fast.model.max_seq_len == 64


def test_load_model_quantize_and_load_peak():
    """quantize= quantizes while loading; the result names its scheme and the load's peak memory."""
    from llama_fast.quant import QuantError, QuantLinear

    plain = llama_fast.load_model("random:tiny", device="cpu")
    assert plain.quantize is None and plain.load_peak_bytes >= 0
    fast = llama_fast.load_model("random:tiny", device="cpu", quantize="int8")
    assert fast.quantize == "int8" and isinstance(fast.model.layers[0].attention.wo, QuantLinear)
    assert fast.dtype == torch.float32 and fast.device == torch.device("cpu")
    out = fast.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (1, 6)
    with pytest.raises(QuantError, match="unknown quantization scheme 'int2' \\(choose from int8, int4"):
        llama_fast.load_model("random:tiny", device="cpu", quantize="int2")


def test_unknown_compile_mode():
    with pytest.raises(ValueError, match="unknown compile mode 'max'"):
        llama_fast.load_model("random:tiny", device="cpu", compile="max")  # refused before any work
    fast = llama_fast.load_model("random:tiny", device="cpu")
    with pytest.raises(ValueError, match="unknown compile mode 'max'"):
        fast.configure(compile="max")
    assert fast.compile == "no"  # unchanged


@pytest.mark.slow
@pytest.mark.parametrize("mode, chunk", [("static", None), ("dynamic", None), ("fullgraph", 16)])
def test_compiled_generation_equals_eager(mode, chunk):
    fast = llama_fast.load_model("random:tiny", device="cpu", dtype="fp32")
    ids = torch.randint(1, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    ref = fast.generate(ids, max_new_tokens=12, min_new_tokens=12)
    fast.configure(compile=mode, prefill_chunk=chunk)
    assert torch.equal(fast.generate(ids, max_new_tokens=12, min_new_tokens=12), ref)
    # a second prompt length reuses the compiled steps and still agrees
    ids2 = ids[:, :5]
    out = fast.generate(ids2, max_new_tokens=12, min_new_tokens=12)
    fast.configure(compile="no")
    assert torch.equal(out, fast.generate(ids2, max_new_tokens=12, min_new_tokens=12))


# ------------------------------------------------------------------------------------------- hash, tokenizer
def test_output_hash_with_id_tokenizer():
    tok = IdTokenizer(512, eos_token_id=2, pad_token_id=None)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    expected = hashlib.sha256(str(tok.batch_decode(ids)).encode()).hexdigest()[:8]
    assert output_hash(tok, ids) == expected == "1e9bd0a6"  # str(['1 2 3', '4 5 6'])
    assert output_hash(tok, ids[:, :2]) != expected


@pytest.mark.slow
def test_output_hash_with_real_tokenizer(smollm):
    tok = smollm.tokenizer
    ids = tok(["Hello world", "A longer prompt here"], return_tensors="pt", padding=True).input_ids
    expected = hashlib.sha256(str(tok.batch_decode(ids)).encode()).hexdigest()[:8]
    assert output_hash(tok, ids) == expected
    assert len(expected) == 8 and int(expected, 16) >= 0


def test_id_tokenizer():
    tok = IdTokenizer(100, eos_token_id=7, pad_token_id=None)
    assert tok.pad_token_id == 7 and tok.eos_token_id == 7 and tok.padding_side == "left"
    assert IdTokenizer(100, 7, 0).pad_token_id == 0
    assert tok.decode(torch.tensor([3, 14, 15])) == "3 14 15"
    assert tok.decode([9]) == "9"
    assert tok.batch_decode(torch.tensor([[1, 2], [3, 4]])) == ["1 2", "3 4"]
    assert tok.batch_decode([[5], [6, 7]]) == ["5", "6 7"]


def test_random_model_generation_is_hashable_and_deterministic():
    a = llama_fast.load_model("random:tiny", device="cpu")
    b = llama_fast.load_model("random:tiny", device="cpu")
    ids = torch.randint(1, 10, (1, 16), generator=torch.Generator().manual_seed(42))
    out_a = a.generate(ids, max_new_tokens=8, min_new_tokens=8)
    out_b = b.generate(ids, max_new_tokens=8, min_new_tokens=8)
    assert output_hash(a.tokenizer, out_a) == output_hash(b.tokenizer, out_b)
    assert a.tokenizer.batch_decode(out_a)[0].split()[:16] == [str(t) for t in ids[0].tolist()]


def test_cublas_workspace_limit_respects_the_user(monkeypatch):
    from llama_fast.api import CUBLAS_WORKSPACE_CONFIG, limit_cublas_workspace

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert limit_cublas_workspace() == CUBLAS_WORKSPACE_CONFIG == os.environ["CUBLAS_WORKSPACE_CONFIG"]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert limit_cublas_workspace() == ":16:8"
