"""The decode attention kernel compiled offline for a GPU target: registers, spill stack, SASS instruction count
and the programs per SM the registers allow. No GPU needed: Triton compiles for the target with its bundled ptxas
(or --ptxas) and disassembles with its bundled cuobjdump.

The launch is decode_attention_one_launch's own (kernels/attention.py: the pinned eager config and the PDL
launch options) at a seed-like shape: Llama-7B's 32 heads of 128, an fp16 cache of --cache slots, batch 1.
A schedule that depends on the ptxas version (docs/PERF.md, "The kernel package's attention registers") is compared here
before it is timed on a GPU.

  python scripts/sass_probe.py                      # the fastest path's launch (PDL, late trigger), sm_90
  python scripts/sass_probe.py --pdl 0 --sass a.sass  # the launch without PDL; the SASS written to a.sass
  python scripts/sass_probe.py --ptxas /usr/local/cuda/bin/ptxas
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

REGISTERS_PER_SM = 65536  # sm_80 and later
REGISTER_UNIT = 8  # registers per thread are allocated in steps of 8 (256 per warp)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sass_probe.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdl", type=int, choices=(0, 2), default=2,
                    help="PDL mode of the launch: 0 off, 2 PDL_TRIGGER_LATE (the fastest path's; default)")
    ap.add_argument("--cache", type=int, default=1200, help="KV cache slots (default 1200: prompt 1000 + 200 new)")
    ap.add_argument("--heads", type=int, default=32, help="attention heads, as many KV heads (default 32)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an integer (default 90)")
    ap.add_argument("--ptxas", default=None, help="a ptxas binary to use instead of Triton's bundled one")
    ap.add_argument("--sass", default=None, help="also write the SASS (cuobjdump -sass) to this file")
    args = ap.parse_args(argv)
    if args.cache < 1 or args.heads < 1:
        ap.error("--cache and --heads must be positive")
    if args.arch < 80:
        ap.error(f"--arch {args.arch}: the kernels target sm_80 and later")
    if args.ptxas is not None and not os.access(args.ptxas, os.X_OK):
        ap.error(f"--ptxas {args.ptxas}: not an executable file")
    return args


def programs_per_sm(registers: int, warps: int) -> int:
    """Programs (CTAs) of `warps` warps that fit one SM's register file at `registers` per thread."""
    per_thread = -(-registers // REGISTER_UNIT) * REGISTER_UNIT
    return REGISTERS_PER_SM // (per_thread * 32 * warps)


def count_instructions(sass: str) -> int:
    """SASS instructions in cuobjdump -sass output (one `/*addr*/ OPCODE ... ;` line each)."""
    return len(re.findall(r"^\s*/\*[0-9a-f]{4,}\*/\s+\S.*;", sass, flags=re.M))


def compile_offline(kernel, args: tuple, kwargs: dict, arch: int):
    """triton.compile of kernel for ('cuda', arch) with the specialization a launch with these arguments gets,
    without a driver. Uses Triton's launch binder (triton.runtime.jit): checked with Triton 3.6 and 3.9."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def seed_launch(heads: int, cache: int, pdl: int):
    """decode_attention_one_launch's (kernel, grid, arguments, keywords) on CPU tensors laid out as the model's:
    q a head view of the qkv GEMV's (1, heads*128) output, the cache (1, heads, cache, 128), the mask a row of
    (1, 1, 1, cache)."""
    import torch

    from llama_fast.kernels import attention

    D = 128
    q = torch.empty((1, heads * D), dtype=torch.float16).view(1, 1, heads, D).transpose(1, 2)
    k = torch.empty((1, heads, cache, D), dtype=torch.float16)
    mask = torch.ones((1, 1, 1, cache), dtype=torch.bool)[:, 0, 0, :]
    counters = torch.zeros((heads,), dtype=torch.int32)
    grid, args, kwargs, _ = attention.one_launch_call(q, k, torch.empty_like(k), mask, D ** -0.5, counters, pdl)
    return attention._decode_attn_one_launch_kernel, grid, args, kwargs


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ptxas is not None:  # Triton reads it when it runs ptxas
        os.environ["TRITON_PTXAS_PATH"] = os.environ["TRITON_PTXAS_BLACKWELL_PATH"] = args.ptxas
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a cached cubin may come from another ptxas (docs/PERF.md)
    try:
        import triton
        from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton runs for a target
    except ImportError:
        print("sass_probe.py: error: Triton with its NVIDIA backend is not installed", file=sys.stderr)
        return 2
    kernel, grid, launch_args, kwargs = seed_launch(args.heads, args.cache, args.pdl)
    compiled = compile_offline(kernel, launch_args, kwargs, args.arch)
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass, usage = (subprocess.run([os.path.join(bindir, "cuobjdump"), flag, cubin], check=True,
                                      capture_output=True, text=True).stdout for flag in ("-sass", "-res-usage"))
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(sass)
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    warps = kwargs["num_warps"]
    per_sm = programs_per_sm(registers, warps)
    print(f"{kernel.__name__} sm_{args.arch} | Triton {triton.__version__}, ptxas "
          f"{get_ptxas(args.arch).version} | CHUNK {kwargs['CHUNK']}, {warps} warps, "
          f"PDL {args.pdl}, maxnreg {kwargs.get('maxnreg')} | {registers} registers, {stack} B stack | "
          f"{count_instructions(sass)} instructions | {per_sm} programs/SM by registers, grid {grid[0]}x{grid[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
