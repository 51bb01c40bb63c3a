"""A decode kernel compiled offline for a GPU target: registers, spill stack, SASS instruction count, the
programs per SM the registers allow and, for the GEMVs and the small-M GEMM, the instructions and barriers of the K
loop (per weight a thread multiplies). No GPU needed: Triton compiles for the target with its bundled ptxas (or
--ptxas) and disassembles with its bundled cuobjdump.

Each launch is the op's own (the pinned eager config and the PDL launch options: attention.one_launch_call,
gemv.fused_call, qkv_rope.qkv_rope_call, gemm.gemm_call) at Llama-7B's decode shapes: the attention over 32 heads
of 128 and an fp16 cache of --cache slots; the GEMV forms at their layer's shape (gemv and rmsnorm: wqkv 12288 x
4096, residual: wo 4096 x 4096, residual-w2: w2 4096 x 11008, swiglu: w13 2 x 11008 x 4096, qkv_rope: wqkv); the
small-M GEMM at wo's shape and --rows rows; in fp16 or quantized weights (int4: group 128). --config changes a
GEMV's pinned config (as perf_lab.py --config-trials does). A schedule that depends on the ptxas version
(docs/PERF.md, "The kernel package's attention registers") or a kernel change is compared here before it is timed
on a GPU.

  python scripts/sass_probe.py                      # the fastest path's attention launch (PDL, late trigger), sm_90
  python scripts/sass_probe.py --pdl 0 --sass a.sass  # the launch without PDL; the SASS written to a.sass
  python scripts/sass_probe.py --ptxas /usr/local/cuda/bin/ptxas
  python scripts/sass_probe.py --kernel swiglu --weights int4 --config BLOCK_K=2048,num_warps=2
  python scripts/sass_probe.py --kernel swiglu --weights int4 --mix 12   # also the K loop's 12 commonest opcodes
  python scripts/sass_probe.py --kernel gemm --weights int8 --rows 8
  python scripts/sass_probe.py --kernel gemm --gemm-form step-qkv --weights int8 --rows 8
    (the kernels-only batch 2-16 step's wqkv against the compiled step's: --gemm-form rmsnorm)
  python scripts/sass_probe.py --kernel attention-split --batch 8 --config CHUNK=32,num_warps=4
    (the two-kernel attention of batches above 1, at its compiled config or another; its chunk kernel)
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

REGISTERS_PER_SM = 65536  # sm_80 and later
GEMV_FORMS = ("gemv", "rmsnorm", "residual", "residual-w2", "swiglu", "qkv_rope")
H200_SMS = 132  # the small-M GEMM's split-K choice and the span attention's programs are made for an H200
WEIGHTS = ("fp16", "int8", "int4")
REGISTER_UNIT = 8  # registers per thread are allocated in steps of 8 (256 per warp)
# shared memory an SM can give its programs (KB, the largest carveout), and what each program costs the SM
SHARED_KB_PER_SM = {80: 164, 86: 100, 87: 164, 89: 100, 90: 228, 100: 228, 120: 100}
SHARED_RESERVED = 1024  # bytes the hardware keeps per program (sm_80 and later)
CONFIG_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "PERSIST", "maxnreg")  # --config keys
SPLIT_CONFIG_KEYS = ("CHUNK", "num_warps", "GQA_DOT", "WAVES", "STAGES")  # --kernel attention-split
GEMM_CONFIG_KEYS = ("BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "PER_SM", "maxnreg")  # for --kernel gemm
GEMM_FORMS = ("plain", "rmsnorm", "step-qkv")  # --gemm-form


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sass_probe.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="attention", choices=("attention", "attention-split") + GEMV_FORMS + ("gemm",),
                    help="the attention (default: batch 1's one-launch form), the two-kernel attention of batches "
                         "above 1 (attention-split: its chunk kernel at --batch rows, at the compiled step's config), "
                         "a fused GEMV form at its Llama-7B layer's shape, or the small-M GEMM (kernels/gemm.py) at "
                         "wo's 4096 x 4096 and --rows rows")
    ap.add_argument("--batch", type=int, default=8, help="attention-split: the rows (default 8)")
    ap.add_argument("--rows", type=int, default=16, help="gemm: the input rows (2-64; default 16)")
    ap.add_argument("--gemv-rows", type=int, default=1,
                    help="GEMV forms with quantized weights: the rows of a decode step (1-4; the decode step's rows "
                         "GEMV, kernels/gemv_rows.py, launches 2; default 1)")
    ap.add_argument("--gemm-form", default="plain", choices=GEMM_FORMS,
                    help="gemm: plain (wo's shape), rmsnorm (wqkv with the RMSNorm prologue: the compiled batch 2-16 "
                         "step's) or step-qkv (the kernels-only step's wqkv: RMSNorm from partials, RoPE and the "
                         "cache write; with --pdl 2 launched as that step does, PDL triggered early)")
    ap.add_argument("--weights", default="fp16", choices=WEIGHTS,
                    help="GEMV forms: the weight format (int4: group 128)")
    ap.add_argument("--config", default="", help="GEMV forms: KEY=VALUE,... over the pinned config (integers: "
                                                 f"{', '.join(CONFIG_KEYS)}); attention-split: "
                                                 f"{', '.join(SPLIT_CONFIG_KEYS)}; gemm: {', '.join(GEMM_CONFIG_KEYS)}")
    ap.add_argument("--pdl", type=int, choices=(0, 2), default=2,
                    help="PDL mode of the launch: 0 off, 2 PDL_TRIGGER_LATE (the fastest path's; default)")
    ap.add_argument("--cache", type=int, default=1200, help="KV cache slots (default 1200: prompt 1000 + 200 new)")
    ap.add_argument("--heads", type=int, default=32, help="attention heads, as many KV heads (default 32)")
    ap.add_argument("--kv-heads", type=int, default=None,
                    help="attention-split: KV heads, dividing --heads (Llama-3-8B: --heads 32 --kv-heads 8; "
                         "default: --heads); with --config GQA_DOT=1 the tensor-core GQA kernel")
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an integer (default 90)")
    ap.add_argument("--ptxas", default=None, help="a ptxas binary to use instead of Triton's bundled one")
    ap.add_argument("--sass", default=None, help="also write the SASS (cuobjdump -sass) to this file")
    ap.add_argument("--mix", type=int, default=0, metavar="N",
                    help="GEMV forms and gemm: also print the K loop's N most frequent opcodes with their counts")
    args = ap.parse_args(argv)
    if args.mix < 0:
        ap.error(f"--mix {args.mix}: give a count of opcodes (0: none)")
    if args.mix and args.kernel in ("attention", "attention-split"):
        ap.error("--mix is for the GEMV forms and the small-M GEMM (the attention kernels have no K loop)")
    if args.cache < 1 or args.heads < 1 or args.batch < 1:
        ap.error("--cache, --heads and --batch must be positive")
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.kv_heads < 1 or args.heads % args.kv_heads:
        ap.error(f"--kv-heads {args.kv_heads} must be positive and divide --heads {args.heads}")
    if args.arch < 80:
        ap.error(f"--arch {args.arch}: the kernels target sm_80 and later")
    if args.ptxas is not None and not os.access(args.ptxas, os.X_OK):
        ap.error(f"--ptxas {args.ptxas}: not an executable file")
    if args.kernel == "attention" and (args.config or args.weights != "fp16"):
        ap.error("--config and --weights are for the GEMV forms")
    if args.kernel == "attention-split" and args.weights != "fp16":
        ap.error("--weights is for the GEMV forms and the small-M GEMM")
    if not 2 <= args.rows <= 64:
        ap.error(f"--rows {args.rows}: the small-M GEMM takes 2..64 rows")
    if args.gemv_rows != 1 and (args.kernel not in GEMV_FORMS or args.weights == "fp16" or args.kernel == "gemv"
                                or not 2 <= args.gemv_rows <= 4):
        ap.error(f"--gemv-rows {args.gemv_rows}: 2..4 rows of a fused GEMV form (not gemv) with quantized weights")
    try:
        args.config = {k.strip(): int(v) for k, v in (item.split("=") for item in args.config.split(",") if item)}
    except ValueError:
        ap.error(f"--config {args.config!r}: give KEY=INTEGER pairs separated by commas")
    keys = {"attention-split": SPLIT_CONFIG_KEYS, "gemm": GEMM_CONFIG_KEYS}.get(args.kernel, CONFIG_KEYS)
    unknown = [k for k in args.config if k not in keys]
    if unknown:
        ap.error(f"--config: unknown key {', '.join(unknown)} (the keys are {', '.join(keys)})")
    return args


def programs_per_sm(registers: int, warps: int) -> int:
    """Programs (CTAs) of `warps` warps that fit one SM's register file at `registers` per thread."""
    per_thread = -(-registers // REGISTER_UNIT) * REGISTER_UNIT
    return REGISTERS_PER_SM // (per_thread * 32 * warps)


def programs_per_sm_by_shared(shared: int, arch: int) -> int | None:
    """Programs that fit one SM's shared memory at `shared` bytes each on sm_<arch> (None: no limit, or an
    architecture SHARED_KB_PER_SM does not list)."""
    if not shared or arch not in SHARED_KB_PER_SM:
        return None
    return SHARED_KB_PER_SM[arch] * 1024 // (shared + SHARED_RESERVED)


def count_instructions(sass: str) -> int:
    """SASS instructions in cuobjdump -sass output (one `/*addr*/ OPCODE ... ;` line each)."""
    return len(re.findall(r"^\s*/\*[0-9a-f]{4,}\*/\s+\S.*;", sass, flags=re.M))


def loop_body(sass: str) -> list[str] | None:
    """The instructions (text after the address) of the largest loop's body (a branch back to an earlier
    address), or None."""
    lines = re.findall(r"^\s*/\*([0-9a-f]{4,})\*/\s+(\S.*);", sass, flags=re.M)
    addrs = [int(a, 16) for a, _ in lines]
    best = None
    for a, ins in zip(addrs, lines):
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", ins[1])
        if m and int(m.group(1), 16) < a:
            body = [text for b, (_, text) in zip(addrs, lines) if int(m.group(1), 16) <= b <= a]
            if best is None or len(body) > len(best):
                best = body
    return best


def k_loop(sass: str) -> tuple[int, int] | None:
    """(SASS instructions, barriers) in the body of the largest loop, or None."""
    body = loop_body(sass)
    if body is None:
        return None
    return len(body), sum(1 for text in body if re.search(r"\bBAR\.", text))


def loop_mix(sass: str) -> collections.Counter:
    """The largest loop's opcodes (predicate and modifiers dropped: `@!P0 LOP3.LUT R1, ...` counts as LOP3) and
    how many of each."""
    body = loop_body(sass) or []
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0] for text in body)


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


def split_launch(batch: int, heads: int, cache: int, config: dict, kv_heads: int | None = None):
    """decode_attention's chunk kernel (kernel, grid, arguments, keywords: attention.split_call's) on CPU tensors
    laid out as the compiled step's: q (batch, heads, 1, 128) a view of the qkv GEMM's output, the cache (batch,
    kv_heads (default heads), cache, 128), the mask (batch, cache); the compiled config (ATTN_CHUNK,
    ATTN_COMPILED_WARPS) updated by config. No PDL (batches above 1 run it inside torch.compile, model.pdl_mode)."""
    import torch

    from llama_fast.kernels import attention, configs

    D = 128
    cfg = {"CHUNK": configs.ATTN_CHUNK, "num_warps": configs.ATTN_COMPILED_WARPS, **config}
    q = torch.empty((batch, heads * D), dtype=torch.float16).view(batch, 1, heads, D).transpose(1, 2)
    k = torch.empty((batch, kv_heads or heads, cache, D), dtype=torch.float16)
    mask = torch.ones((batch, cache), dtype=torch.bool)
    previous, sms = configs.CONFIG_OVERRIDE, attention.sm_count
    configs.CONFIG_OVERRIDE = lambda form, n, K: cfg if form == "attention" else None
    attention.sm_count = lambda device: H200_SMS  # the span form's programs (WAVES an SM) as on an H200
    try:
        kernel, grid, args, kwargs, _ = attention.split_call(q, k, torch.empty_like(k), mask, D ** -0.5, 0)
    finally:
        configs.CONFIG_OVERRIDE, attention.sm_count = previous, sms
    return kernel, grid, args, kwargs


def empty_weight(weights: str, rows: int, K: int):
    """(weight, the ops' quantization arguments) of rows x K in a format, uninitialized (fp16; int8, or int4 at
    group 128, as quant.py stores them: its layout read off a quantized 1 x K row)."""
    import torch

    from llama_fast.quant import QuantScheme, quantize_tensor

    dt = torch.float16
    if weights == "fp16":
        return torch.empty((rows, K), dtype=dt), {}
    bits, group = (8, None) if weights == "int8" else (4, 128)
    small = quantize_tensor(torch.zeros((1, K), dtype=dt), QuantScheme(bits, group))
    w = torch.empty((rows,) + small["qweight"].shape[1:], dtype=small["qweight"].dtype)
    quant = {"scales": torch.empty((rows,) + small["scales"].shape[1:], dtype=dt)}
    if bits == 4:
        quant.update(offsets=torch.empty_like(quant["scales"]), group=group)
    return w, quant


def gemv_launch(form: str, weights: str, config: dict, pdl: int, cache: int, rows: int = 1):
    """The fused GEMV form's (kernel, grid, arguments, keywords, weights a thread multiplies per K-loop iteration)
    on CPU tensors of its Llama-7B layer's shape at `rows` input rows, under the pinned config (past one row the
    rows GEMV's: configs.rows_config) updated by `config`."""
    import importlib

    import torch

    from llama_fast.kernels import configs

    gemv = importlib.import_module("llama_fast.kernels.gemv")  # the package exports the op of the same name
    qkv_rope = importlib.import_module("llama_fast.kernels.qkv_rope")
    K, H, D = 4096, 32, 128
    if form == "residual-w2":  # the residual form at w2's shape: three K tiles of 4096, the last 2816 wide
        form, K = "residual", 11008
    n = {"residual": 4096, "swiglu": 11008}.get(form, 12288)
    wrows = 2 * n if form == "swiglu" else n
    dt = torch.float16
    w, quant = empty_weight(weights, wrows, K)
    x, g = torch.empty((rows, K), dtype=dt), torch.empty((K,), dtype=dt)
    nss = K // gemv.SS_GROUP
    ss = torch.empty((nss,) if rows == 1 else (rows, nss), dtype=torch.float32)
    fmt = "" if weights == "fp16" else "_" + weights
    pinned = configs.rows_config(form + fmt, wrows if form == "qkv_rope" else n, K, rows)  # past 1 row: rows_<form>
    previous = configs.CONFIG_OVERRIDE
    configs.CONFIG_OVERRIDE = lambda f, nn, kk: {**pinned, **config}
    try:
        if form == "qkv_rope":
            cos = torch.empty((D,) if rows == 1 else (rows, D), dtype=dt)
            kc = torch.empty((rows, H, cache, D), dtype=dt)
            kernel, grid, args, kwargs, _ = qkv_rope.qkv_rope_call(
                x, ss, g, w, 1e-5, cos, cos, kc, kc, torch.zeros((1,), dtype=torch.long), H, pdl, quant.get("scales"),
                quant.get("offsets"), quant.get("group", 0))
        else:
            prologue = gemv.PROLOGUE_RMSNORM if form in ("rmsnorm", "swiglu") else gemv.PROLOGUE_NONE
            epilogue = {"residual": gemv.EPILOGUE_RESIDUAL_SS, "swiglu": gemv.EPILOGUE_SWIGLU}.get(form,
                                                                                                  gemv.EPILOGUE_NONE)
            kernel, grid, args, kwargs, _ = gemv.fused_call(x, w, g, torch.empty((rows, n), dtype=dt), ss, 1e-5,
                                                            prologue, epilogue, n, pdl, quant.get("scales"),
                                                            quant.get("offsets"), quant.get("group", 0))
    finally:
        configs.CONFIG_OVERRIDE = previous
    per_iteration = (2 if form == "swiglu" else 1) * kwargs["BLOCK_N"] * kwargs["BLOCK_K"] // (32 * kwargs["num_warps"])
    return kernel, grid(kwargs), args, kwargs, per_iteration


def gemm_launch(weights: str, rows: int, config: dict | None = None, gemm_form: str = "plain", pdl: int = 0):
    """The small-M GEMM's (kernel, grid, arguments, keywords, weights a thread dequantizes per K-loop iteration)
    on CPU tensors, the pinned config updated by config, split-K as on an H200. gemm_form: plain, rows x 4096 by
    wo's 4096 x 4096; rmsnorm, wqkv's 12288 x 4096 with the RMSNorm prologue (the compiled step's); step-qkv, the
    kernels-only step's wqkv (RMSNorm from partials, RoPE and the cache write, PDL launch mode pdl)."""
    import torch

    from llama_fast.kernels import configs, dequant, gemm

    K, N = 4096, (4096 if gemm_form == "plain" else 12288)
    x = torch.empty((rows, K), dtype=torch.float16)
    w, quant = empty_weight(weights, N, K)
    wfmt = {"fp16": dequant.WFMT_DENSE, "int8": dequant.WFMT_INT8, "int4": dequant.WFMT_INT4}[weights]
    rms = gemm_form != "plain"
    form = gemm.gemm_form(rows, False, wfmt, rms)
    cfg = {**gemm.gemm_config(rows, False, wfmt, rms), **(config or {})}
    previous = configs.CONFIG_OVERRIDE
    configs.CONFIG_OVERRIDE = lambda f, n, k: dict(cfg) if f == form else None
    g, rstd = (torch.empty(K, dtype=torch.float16), torch.empty(rows)) if rms else (None, None)
    step = {}
    if gemm_form == "step-qkv":
        D, S = 128, 1200
        cache = torch.empty((rows, 32, S, D), dtype=torch.float16)
        table = torch.empty((rows, D), dtype=torch.float16)
        step = dict(ss=torch.empty((rows, 16)), eps=1e-5, pdl=pdl,
                    rope=(table, table, cache, cache, torch.zeros(1, dtype=torch.long), 32))
    prologue = {"plain": gemm.PROLOGUE_NONE, "rmsnorm": gemm.PROLOGUE_RMSNORM}.get(gemm_form, gemm.PROLOGUE_RMSNORM_SS)
    epilogue = gemm.EPILOGUE_ROPE_CACHE if gemm_form == "step-qkv" else gemm.EPILOGUE_NONE
    try:
        grid, args, kwargs, *_ = gemm.gemm_call(x, w, None, g, None if gemm_form == "step-qkv" else rstd, prologue,
                                                epilogue, 0, quant.get("scales"), quant.get("offsets"),
                                                quant.get("group", 0), H200_SMS, **step)
    finally:
        configs.CONFIG_OVERRIDE = previous
    per_iteration = kwargs["BLOCK_N"] * kwargs["BLOCK_K"] // (32 * kwargs["num_warps"])
    return gemm._gemm_kernel, grid, args, kwargs, per_iteration


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
    if args.kernel == "attention":
        kernel, grid, launch_args, kwargs = seed_launch(args.heads, args.cache, args.pdl)
        per_iteration = None
    elif args.kernel == "attention-split":
        kernel, grid, launch_args, kwargs = split_launch(args.batch, args.heads, args.cache, args.config, args.kv_heads)
        per_iteration = None
    elif args.kernel == "gemm":
        kernel, grid, launch_args, kwargs, per_iteration = gemm_launch(args.weights, args.rows, args.config,
                                                                       args.gemm_form, 1 if args.pdl else 0)
    else:
        kernel, grid, launch_args, kwargs, per_iteration = gemv_launch(args.kernel, args.weights, args.config,
                                                                       args.pdl, args.cache, args.gemv_rows)
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
    head = f"{kernel.__name__} sm_{args.arch} | Triton {triton.__version__}, ptxas {get_ptxas(args.arch).version} | "
    shared = int(getattr(compiled.metadata, "shared", 0) or 0)
    by_shared = programs_per_sm_by_shared(shared, args.arch)
    tail = (f" | {per_sm} programs/SM by registers"
            + (f", {by_shared} by shared memory ({shared} B)" if by_shared is not None else "")
            + f", grid {'x'.join(str(g) for g in grid)}")
    if per_iteration is None:
        pdl = kwargs["USE_PDL"]
        print(f"{head}CHUNK {kwargs['CHUNK']}, {warps} warps, PDL {pdl}, maxnreg {kwargs.get('maxnreg')} | "
              f"{registers} registers, {stack} B stack | {count_instructions(sass)} instructions{tail}")
        return 0
    loop, barriers = k_loop(sass)
    config = ", ".join(f"{k} {kwargs[k]}" for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages",
                                                    "SPLIT_K", "PERSIST", "maxnreg") if k in kwargs)
    pdl = f", PDL {kwargs['USE_PDL']}" if args.kernel == "gemm" and args.gemm_form == "step-qkv" else (
        "" if args.kernel == "gemm" else f", PDL {args.pdl}")
    name = f"gemm/{args.gemm_form}" if args.kernel == "gemm" and args.gemm_form != "plain" else args.kernel
    name += f"/{args.gemv_rows} rows" if args.gemv_rows > 1 else ""
    print(f"{head}{name}/{args.weights} {config}{pdl} | {registers} registers, {stack} B stack | "
          f"{count_instructions(sass)} instructions, K loop {loop} = {loop / per_iteration:.2f} per weight "
          f"({per_iteration} a thread), {barriers} barriers{tail}")
    if args.mix:
        print("K loop mix: " + ", ".join(f"{op} {n}" for op, n in loop_mix(sass).most_common(args.mix)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
