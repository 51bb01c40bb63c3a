"""`llama-fast quantize SRC DST --quantize SCHEME`: quantize a model once and save it (loading.save_quantized),
so later loads (load_model(DST), --model DST) read the quantized weights instead of quantizing again.

Every check runs before anything is written; a bad argument or a failed write is one line on stderr
('llama-fast: error: ...') and exit 2, with nothing left at DST or beside it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from .. import api, harness, loading, quant
from ..config import ConfigError
from .args import QUANTIZE_HELP, _dtype, _int_at_least, _Parser, _scheme, model_config

COMMAND = "quantize"
DEFAULT_DTYPE = "fp16"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"llama-fast {COMMAND}",
                description="Quantize a model's linear weights once and write a quantized checkpoint directory "
                            "(model.safetensors, config.json, quantization.json and the source's tokenizer "
                            "files) that load_model(DST) and --model DST read back.")
    p.add_argument("src", metavar="SRC", help="the model: a checkpoint directory, a .gguf file, a hub id in the local "
                                              "HF cache, 'smollm2-135m' or 'random:<shape>'")
    p.add_argument("dst", metavar="DST", help="the directory to create (must not exist; its parent must)")
    p.add_argument("--quantize", type=_scheme, required=True, metavar="SCHEME", help=QUANTIZE_HELP)
    p.add_argument("--dtype", type=_dtype, default=None, metavar="NAME",
                   help=f"dtype of the scales, offsets and unquantized tensors: {loading.DTYPE_CHOICES} "
                        f"(default: {DEFAULT_DTYPE}, the dtype GPU runs load it in; a load in another dtype casts)")
    p.add_argument("--device", default="auto",
                   help="where the weights are quantized: auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--weights-seed", type=_int_at_least(0, ">= 0"), default=0,
                   help="seed of random:<shape> weights (default: %(default)s)")
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dst = Path(args.dst)
    try:
        device = api.resolve_device(args.device)
        dtype = args.dtype or loading.parse_dtype(DEFAULT_DTYPE)
    except (api.DeviceError, RuntimeError) as e:
        parser.error(str(e))
    if dst.exists() or dst.is_symlink():
        parser.error(f"DST {dst} already exists (choose a new directory)")
    if not dst.parent.is_dir():
        parser.error(f"DST's parent {dst.parent} is not a directory")
    try:
        model_config(args.src)  # refuses unknown names and non-Llama models
        existing = loading.quantization_of(args.src)
    except (loading.ModelNotFoundError, ConfigError, quant.QuantError) as e:
        parser.error(str(e))
    except (OSError, ValueError, KeyError) as e:  # unreadable config.json
        parser.error(f"cannot read model {args.src!r}: {type(e).__name__}: {e}")
    if existing is not None:
        parser.error(f"SRC {args.src} is already quantized ({existing}); quantize its full-precision checkpoint "
                     "instead")

    loading.warm_up_meta_device()  # torch's one-time setup is not the quantization's memory
    with harness.PeakMemory(device) as mem:
        try:
            summary = loading.save_quantized(args.src, dst, args.quantize, device, dtype, seed=args.weights_seed)
        except (OSError, quant.QuantError) as e:  # a full disk, DST appearing meanwhile: nothing was left behind
            parser.error(f"cannot write {dst}: {e}")
    cfg = loading.read_config(dst, str(dst))
    full = harness.weight_bytes(cfg, dtype)
    print(f"{args.src} -> {dst}: {summary['scheme']} weights, model.safetensors {summary['bytes'] / harness.MB:.1f} MB "
          f"({full / harness.MB:.1f} MB in {loading.dtype_name(dtype)}); peak {mem.growth / harness.MB:.1f} MB "
          f"while quantizing on {device.type}")
    return 0
