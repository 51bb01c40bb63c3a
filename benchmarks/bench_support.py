"""Cases, expected hashes, memory allowances and correctness verdicts for benchmarks/ (no pytest here).

Timing, hashing, peak memory and the roofline live in llama_fast.harness (shared with the CLI); this module
only decides *what* is run and *what counts as correct*.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from llama_fast.config import LlamaConfig
from llama_fast import quant
from llama_fast.harness import ABLATION, FASTEST, MB, VARIANTS, Variant, Workload
from llama_fast.sampling import Sampling

HERE = Path(__file__).resolve().parent
HASH_FILE = HERE / "expected_hashes.json"

# ------------------------------------------------------------------------------------------- models
SEED_MODEL = "huggingface/llama-7b"  # the seed's model; used when its weights are in the local HF cache
SEED_FALLBACK = "random:llama-7b"  # same shape, seeded random weights: needs no download
CPU_MODEL = "random:tiny"

DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def default_model(device: str) -> tuple[str, str]:
    """(model name, why it was chosen). Never downloads: the seed model only if already cached."""
    if device == "cpu":
        return CPU_MODEL, "CPU mode default"
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(SEED_MODEL, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"]))
        if any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
            return SEED_MODEL, "found in the local Hugging Face cache"
    except Exception:  # not cached / offline / bad id: fall back without touching the network
        pass
    return SEED_FALLBACK, f"{SEED_MODEL} is not in the local Hugging Face cache"


def is_random(model: str) -> bool:
    return model.startswith("random:")


# ------------------------------------------------------------------------------------------- cases
SEED_WORKLOAD = Workload(batch=1, prompt_len=1000, new_tokens=200, cache_length=1200)
CPU_WORKLOAD = Workload(batch=1, prompt_len=32, new_tokens=16)

# The default (fast) set: transformers' fastest form (static cache, auto-compiled: the row to beat) and the fastest
# path on the seed workload, then the fastest path over a few batch sizes and prompt lengths (batches > 1 run its
# cuBLAS CUDA-graph path). Prompt lengths stay within llama-7b's 2048 positions. Plain transformers (`hf`, 49 s of
# the suite's 294 s on an H200, docs/PERF.md run 66) and the cuBLAS graph row at batch 1 (`graphs`, 28 s) stay in
# the sweep and --bench-variants; the correctness reference does not need the `hf` row (computed on demand).
KEY_VARIANTS = ["hf-static", FASTEST]
# Sampling (temperature 0.8, nucleus 0.95, seeded: the same tokens in every run) on the fastest path at the seed
# workload: the cost of the sampled pick against the greedy case beside it. Its id names it before the workload
# (`fused-gemm-sampled-b1-...`) so that no -k expression naming a greedy case (GATE_K) selects it too.
SAMPLING = Sampling(temperature=0.8, top_p=0.95, seed=0)
SAMPLED_VARIANTS = [FASTEST]
GPU_EXTRA = [Workload(4, 1000, 200), Workload(8, 1000, 200), Workload(1, 200, 200), Workload(1, 1600, 200)]
CPU_EXTRA = [Workload(4, 32, 16), Workload(8, 32, 16), Workload(1, 8, 16), Workload(1, 128, 16)]

# The pull-request gate's cases (benchmarks/gate.py; .github/workflows/gpu-bench.yml passes them as -k, which any
# merge base's suite understands): the fastest path on the seed workload (the gate's targets are measured there),
# at batch 8 (the batched path) and on the longest prompt (prefill in several chunks, the longest attention).
# Three processes per side of these fit the job's 15 minutes on one H200; the rest of the default set is
# checked for correctness in the same job, untimed.
GATE_K = (f"{FASTEST}-b1-p1000-n200-fp16 or {FASTEST}-b8-p1000-n200-fp16 or "
          f"{FASTEST}-b1-p1600-n200-fp16")
GATE_ROUNDS = 5  # timed rounds per gated case and process

# --bench-sweep: every ablation row (plus hf-static) over batch sizes and prompt lengths.
SWEEP_VARIANTS = ["hf", "hf-static"] + [v for v in ABLATION if v != "hf"]
SWEEP_BATCHES = [1, 2, 4, 8, 16, 32, 64]
SWEEP_PROMPTS = [100, 200, 400, 800, 1600, 4000]
GPU_SWEEP_NEW, CPU_SWEEP_NEW = 200, 16
CPU_SWEEP_PROMPTS = [8, 16, 32, 64, 128, 256]


_OWN_SCHEME = "(the variant's own)"  # Case.quantize's default: VARIANTS[variant].quantize


@dataclass(frozen=True)
class Case:
    variant: str
    workload: Workload
    dtype: str  # fp16 | bf16 | fp32
    # the weights' llama_fast.quant scheme (canonical name) or None: the model dtype. Default: the variant's own
    # (the int8 / int4 ablation rows carry theirs); --bench-quantize adds cases with another scheme
    quantize: str | None = field(default=_OWN_SCHEME)

    def __post_init__(self):
        q = VARIANTS[self.variant].quantize if self.quantize == _OWN_SCHEME else self.quantize
        object.__setattr__(self, "quantize", quant.scheme_name(q))

    @property
    def v(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_NAMES[self.dtype]

    @property
    def sampled(self) -> bool:
        return self.workload.sampling is not None

    @property
    def workload_key(self) -> str:
        """The hash book's and the references' key: the workload (sampling included) and the weights' scheme."""
        return workload_key(self.workload) + (f"-{scheme_suffix(self.quantize)}" if self.quantize else "")

    @property
    def id(self) -> str:
        w = self.workload
        sampled = "-sampled" if self.sampled else ""
        own = self.quantize is None or self.quantize == self.v.quantize  # an ablation row's scheme is its name
        suffix = "" if own else f"-{scheme_suffix(self.quantize)}"
        return f"{self.variant}{sampled}-b{w.batch}-p{w.prompt_len}-n{w.new_tokens}-{self.dtype}{suffix}"


def scheme_suffix(scheme: str) -> str:
    """'int8' -> 'int8', 'int4:g128' -> 'int4g128' (no ':' in test ids and keys)."""
    return scheme.replace(":", "")


def workload_key(w: Workload) -> str:
    key = f"b{w.batch}-p{w.prompt_len}-n{w.new_tokens}-c{w.cache}"
    s = w.sampling
    if s is not None:
        key += f"-sampled-t{s.temperature:g}" + (f"-topk{s.top_k}" if s.top_k is not None else "") + \
               (f"-topp{s.top_p:g}" if s.top_p is not None else "") + f"-seed{s.seed}"
    return key


def parse_quantize(text: str | None) -> list[str]:
    """--bench-quantize: a comma list of llama_fast.quant schemes -> canonical names, in order, without repeats.
    Raises ValueError with one line naming the bad scheme."""
    out: list[str] = []
    for name in (x.strip() for x in (text or "").split(",")):
        if not name:
            continue
        try:
            canonical = quant.parse_scheme(name).name
        except quant.QuantError as e:
            raise ValueError(f"--bench-quantize: {e}") from None
        if canonical not in out:
            out.append(canonical)
    return out


def _dedup(cases: list[Case]) -> list[Case]:
    seen, out = set(), []
    for c in cases:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out


def build_cases(device: str, dtypes: list[str], sweep: bool = False, variants: list[str] | None = None,
                quantize: list[str] | None = None) -> list[Case]:
    """The cases to parametrize, ordered per dtype with transformers rows first (so transformers is
    measured before our model is loaded: each peak-memory figure holds one model only), then llama_fast's grouped
    by weights (model dtype first, then each scheme: each group loads its model once).

    The default set and the sweep add the sampled case (SAMPLING on the fastest path, seed workload); explicit
    --bench-variants add it when they name the fastest path. quantize: canonical scheme names; every llama_fast
    case whose variant has no scheme of its own is also run over each scheme's weights."""
    cpu = device == "cpu"
    seed = CPU_WORKLOAD if cpu else SEED_WORKLOAD
    sampled = replace(seed, sampling=SAMPLING)
    if sweep:
        new = CPU_SWEEP_NEW if cpu else GPU_SWEEP_NEW
        prompt = seed.prompt_len
        workloads = [seed] + [Workload(b, prompt, new) for b in SWEEP_BATCHES] + \
                    [Workload(1, p, new) for p in (CPU_SWEEP_PROMPTS if cpu else SWEEP_PROMPTS)]
        rows = variants or SWEEP_VARIANTS
        pairs = [(v, w) for v in rows for w in workloads]
    elif variants:  # explicit rows: each over the default set's workloads
        rows = variants
        pairs = [(v, w) for v in variants for w in [seed] + (CPU_EXTRA if cpu else GPU_EXTRA)]
    else:
        rows = KEY_VARIANTS
        pairs = [(v, seed) for v in KEY_VARIANTS] + [(FASTEST, w) for w in (CPU_EXTRA if cpu else GPU_EXTRA)]
    pairs += [(v, sampled) for v in SAMPLED_VARIANTS if v in rows]
    base = [Case(v, w, d) for d in dtypes for v, w in pairs]
    cases = list(base)
    schemes: list[str | None] = [None]
    for q in (quant.scheme_name(q) for q in quantize or []):
        schemes.append(q)
        cases += [replace(c, quantize=q) for c in base if not c.v.is_transformers and c.v.quantize is None]
    schemes += [c.quantize for c in cases if c.quantize not in schemes]  # the ablation rows' own schemes
    cases.sort(key=lambda c: (dtypes.index(c.dtype), not c.v.is_transformers, schemes.index(c.quantize)))
    return _dedup(cases)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (i = the GPU index the shard runs on)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--bench-shard expects i/n (e.g. 0/2), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--bench-shard {text}: need n >= 1 and 0 <= i < n")
    return i, n


def shard_select(items: list, i: int, n: int) -> tuple[list, list]:
    """Round-robin by case index: (kept, deselected). Disjoint over i and covering for i in range(n)."""
    kept = [it for k, it in enumerate(items) if k % n == i]
    dropped = [it for k, it in enumerate(items) if k % n != i]
    return kept, dropped


# ------------------------------------------------------------------------------------------- baselines
# ------------------------------------------------------------------------------------------- tensor parallel
def check_bench_tp(tp: int, world: tuple[int, int, int] | None, shard: str | None) -> None:
    """--bench-tp N: refuse (ValueError, one line) N < 1, N > 1 outside torchrun or under a world size other
    than N, and N > 1 with --bench-shard (the ranks of one run share every case)."""
    if tp < 1:
        raise ValueError(f"--bench-tp {tp}: need N >= 1")
    if tp == 1:
        return
    launch = f"torchrun --nproc-per-node {tp} -m pytest benchmarks/ --bench-tp {tp} ..."
    if world is None:
        raise ValueError(f"--bench-tp {tp} runs one process per rank: launch it as {launch}")
    if world[1] != tp:
        raise ValueError(f"--bench-tp {tp} needs {tp} processes, torchrun started {world[1]}: launch it as {launch}")
    if shard:
        raise ValueError(f"--bench-tp {tp} and --bench-shard do not combine: the ranks run every case together")


def tp_cases(cases: list[Case], tp: int) -> list[Case]:
    """The cases a --bench-tp N run times: llama_fast's (transformers rows do not run tensor parallel; transformers
    still serves the correctness checks, whole, on each rank)."""
    return cases if tp == 1 else [c for c in cases if not c.v.is_transformers]


def no_baseline_message(device_name: str, family: str, compare: object, searched: str,
                        save_options: tuple[str, ...] = ()) -> str:
    """The fail-closed error of `--benchmark-compare` when the storage holds nothing to compare against.

    device_name: the GPU's full name ('NVIDIA A10G'); family: its baseline family ('A10G'), shown when the
    name does not already say it. compare: pytest-benchmark's option value (True for the latest saved run, or
    the glob the user gave). searched: the directory pytest-benchmark looked in. save_options: options the
    save command must repeat to write where this run reads (a chosen --benchmark-storage, --bench-device cpu)."""
    device = device_name if family.lower() in device_name.lower() else f"{device_name} ({family})"
    wanted = "no saved run" if compare is True else f"no saved run matching {str(compare)!r}"
    save = " ".join(["pytest benchmarks/ --benchmark-save=main", *save_options])
    return (f"NO BASELINE to compare against on {device}: {wanted} in {searched}. "
            f"Save one first on the base commit: {save}")


def storage_searched(storage: object, compare: object) -> str:
    """Where pytest-benchmark's file storage looks for the runs to compare: its directory for this platform
    (<storage>/<machine id>/, where --benchmark-save writes), or the storage itself for an explicit
    'platform/name' glob or a non-file storage."""
    path = getattr(storage, "path", None)
    if path is None:
        return str(storage)
    machine = getattr(storage, "default_machine_id", None)
    if machine and (compare is True or "/" not in str(compare)):
        return str(Path(path) / machine)
    return str(path)


# ------------------------------------------------------------------------------------------- memory
# Budget = weights + KV cache for the workload (harness.memory_budget_bytes) + an allowance. The allowance is
# a stated constant plus the prefill activations of the largest chunk, computed from the shape (no per-case
# numbers). Under --bench-tp N each rank's peak is set against its own budget: the shape is the rank's shard
# (parallel.shard_config: its weights, its KV heads, its slice of the MLP; a vocabulary-parallel head counted
# whole, which overstates the budget by (N-1)/N of the head). llama_fast: RoPE tables, masks, logits, CUDA-graph
# pool, allocator rounding. transformers builds its cache by concatenation (a transient copy of one layer's K/V
# per step) and keeps more buffers.
LLAMA_FAST_ALLOWANCE_MB = 256
TRANSFORMERS_ALLOWANCE_MB = 1024


# Device memory left free beside both models before transformers may stay on the device while ours is timed.
RESIDENT_HEADROOM_MB = 4096


def transformers_may_stay(total_bytes: int, transformers_bytes: int, budget_bytes: int) -> bool:
    """Whether transformers (needed by the correctness checks) may stay on the device while a llama_fast case whose
    peak may reach budget_bytes is timed: the device must hold both with RESIDENT_HEADROOM_MB to spare. Staying
    saves parking a 7B model on the CPU and bringing it back (2 x 13.5 GB of copies in fp16) for every case; its
    bytes are then taken off the case's measured peak, which so still holds one model."""
    return total_bytes - transformers_bytes >= budget_bytes + RESIDENT_HEADROOM_MB * MB


def prefill_activation_bytes(cfg: LlamaConfig, dtype: torch.dtype, w: Workload, chunk: int | None) -> int:
    """Live tensors of one layer during prefill of a chunk: hidden states, q/k/v, gate/up/down products,
    the boolean masks, and the fp32 logits of the last position."""
    elem = torch.empty((), dtype=dtype).element_size()
    C = chunk or w.prompt_len  # a fixed prefill chunk pads short prompts up to its length
    per_token = elem * (4 * cfg.intermediate_size + 4 * cfg.dim + cfg.q_size + 2 * cfg.kv_size)
    masks = 3 * C * w.cache  # causal, same-kind and combined bool masks (B, C, S)
    return w.batch * (C * per_token + masks) + 2 * w.batch * cfg.vocab_size * 4


def allowance_bytes(variant: Variant, cfg: LlamaConfig, dtype: torch.dtype, w: Workload) -> int:
    act = prefill_activation_bytes(cfg, dtype, w, variant.prefill_chunk)
    if variant.is_transformers:
        elem = torch.empty((), dtype=dtype).element_size()
        cat_copy = 2 * w.batch * w.cache * cfg.kv_size * elem  # one layer's K and V re-allocated by torch.cat
        return int(TRANSFORMERS_ALLOWANCE_MB * MB) + act + cat_copy
    return int(LLAMA_FAST_ALLOWANCE_MB * MB) + act


# ------------------------------------------------------------------------------------------- correctness
# Teacher-forced check (fp16/bf16 on random weights): each generated token must be transformers' argmax, or
# within this many logits of its max logit. Random-weight logits are O(1) and half-precision rounding over
# 32 layers moves them by ~1e-3..1e-2, so 0.05 (fp16) leaves headroom while a wrongly computed token
# (gap O(0.1-1)) fails; bf16 keeps 3 fewer mantissa bits, hence 8x.
TEACHER_FORCED_TOL = {torch.float16: 0.05, torch.bfloat16: 0.4}
TEACHER_FORCED_ROWS = 8  # rows per reference forward (bounds the (rows, T, vocab) logits)

# Nucleus check (sampled cases): the probability mass the reference ranks above each sampled token must stay below
# top_p + this. A token at the nucleus' edge moves in or out with the rounding noise of the reference's logits
# (see TEACHER_FORCED_TOL: ~1e-3..1e-2 in half precision over 32 layers, which moves a cumulative mass by about
# as much); a token sampled from outside the nucleus is usually far outside it (the tail holds 1 - top_p = 5 %).
# fp32 agrees to rounding of the softmax only.
NUCLEUS_TOL = {torch.float16: 0.02, torch.bfloat16: 0.02, torch.float32: 1e-4}


@torch.no_grad()
def nucleus_check(logits: torch.Tensor, chosen: torch.Tensor, temperature: float, top_p: float | None,
                  tol: float) -> tuple[bool, int | None, float]:
    """Whether every sampled token lies in the reference's nucleus, up to tol.

    logits (B, N, V): the reference's logits predicting each of the N new tokens (teacher-forced over our output);
    chosen (B, N): the tokens we sampled. Temperature then top-p are applied as llama_fast.sampling.sample does
    (a token is kept while the probability ranked above it is below top_p); the check requires that mass to be
    < top_p + tol. top_p None (no nucleus) accepts every token. Returns (ok, first bad new-token step or None,
    the largest mass ranked above a sampled token)."""
    probs = (logits.float() / temperature).softmax(-1)
    p_chosen = probs.gather(-1, chosen[..., None].to(probs.device))  # (B, N, 1)
    above = torch.where(probs > p_chosen, probs, torch.zeros_like(probs)).sum(-1)  # (B, N)
    worst = float(above.max()) if above.numel() else 0.0
    if top_p is None:
        return True, None, worst
    bad = (above >= top_p + tol).any(0).nonzero()
    first = int(bad[0]) if len(bad) else None
    return first is None, first, worst

REFERENCE = "hf"  # the reference row: plain transformers generate (dynamic cache, eager)
ANY = "*"  # an entry's value shared by every variant unless a variant has its own


class HashBook:
    """benchmarks/expected_hashes.json: {model: {workload: {dtype: {gpu family: {variant or "*": hash}}}}}.

    Written only by --bench-update-hashes (at the end of the run, merged under a file lock so shards can share it)."""

    def __init__(self, path: Path | str = HASH_FILE):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.pending: dict[tuple[str, str, str, str, str], str] = {}

    def entry(self, model: str, wkey: str, dtype: str, family: str) -> dict[str, str]:
        return self.data.get(model, {}).get(wkey, {}).get(dtype, {}).get(family, {})

    def expected(self, model, wkey, dtype, family, variant) -> str | None:
        e = self.entry(model, wkey, dtype, family)
        return e.get(variant) or e.get(ANY)

    def record(self, model, wkey, dtype, family, variant, value):
        self.pending[(model, wkey, dtype, family, variant)] = value

    def save(self) -> list[str]:
        """Merge pending hashes into the file; returns a line per changed value."""
        if not self.pending:
            return []
        import fcntl

        lock = self.path.with_suffix(".lock")
        changes = []
        with open(lock, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            for (model, wkey, dtype, family, variant), value in sorted(self.pending.items()):
                e = data.setdefault(model, {}).setdefault(wkey, {}).setdefault(dtype, {}).setdefault(family, {})
                old = e.get(variant) or e.get(ANY)
                if old == value and variant not in e:
                    continue  # already covered by the shared "*" value
                if e.get(variant) != value:
                    changes.append(f"{model} {wkey} {dtype} {family} {variant}: {old or '(none)'} -> {value}")
                e[variant] = value
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        try:
            lock.unlink()
        except OSError:
            pass
        self.data, self.pending = data, {}
        return changes


@dataclass
class Reference:
    output_ids: torch.Tensor
    hash: str


def first_difference(a: torch.Tensor, b: torch.Tensor, prompt_len: int) -> str:
    if a.shape != b.shape:
        return f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a != b).nonzero()
    if not len(diff):
        return "token ids equal (decoding differs)"
    row, col = (int(x) for x in diff[0])
    return f"first differing token: row {row}, new-token step {col - prompt_len} ({int(a[row, col])} vs {int(b[row, col])})"


class CorrectnessFailure(AssertionError):
    pass


def update_hint(case_id: str) -> str:
    return (f"to record it: pytest benchmarks/ --bench-update-hashes -k '{case_id}' (with the same --bench-* options),"
            f" then review and commit the change to benchmarks/expected_hashes.json")


def check_output(*, case: Case, model: str, family: str, book: HashBook, output_ids: torch.Tensor, our_hash: str,
                 reference: Callable[[], Reference], teacher_forced: Callable[[torch.Tensor, float], tuple],
                 update: bool, nucleus: Callable[[torch.Tensor, float], tuple] | None = None) -> list[str]:
    """Correctness of one case. Raises CorrectnessFailure naming what broke; returns notes for extra_info.

    fp32: our hash must equal transformers' hash computed in the same run (TF32 off).
    fp16/bf16: random weights pass a teacher-forced check against transformers, and every case equals
    its recorded hash. A hash mismatch is blamed on the reference when transformers' own hash moved too.
    Exception, measured: fp16 greedy output of *random* weights on a GPU is not reproducible from one
    process to the next, transformers' own included (H200, 2026-11-26: the reference's hash for the seed
    workload went 8c9788f7 -> e6e727dd between two identical runs; kernel choices differ per process and
    near-tied random logits flip). There the teacher-forced check is the assertion and the recorded hash is
    reported, not enforced. Real weights, fp32 and the CPU stay strict.

    Quantized cases (case.quantize) follow the same rules against transformers running the same quantized weights
    dequantized (the context loads it so), under keys that name the scheme.

    Sampled cases (case.sampled): transformers' greedy reference and the fp32 "equals transformers" rule do not
    apply (transformers samples with its own generator). Instead: (a) the hash, seeded, is enforced against the
    recorded one like a greedy case's (fp32, the CPU, real weights), and on a GPU with random fp16/bf16 weights
    reported, not enforced (same reason as greedy); (b) nucleus(output_ids, tol) (every dtype and model): the
    reference runs over our output, temperature and top-p are applied to its logits at each generated position,
    and every sampled token must lie inside that nucleus: the mass ranked above it < top_p + NUCLEUS_TOL
    (nucleus_check)."""
    if case.sampled:
        return _check_sampled(case=case, model=model, family=family, book=book, our_hash=our_hash,
                              output_ids=output_ids, nucleus=nucleus, update=update)
    wkey, dtype, variant = case.workload_key, case.dtype, case.variant
    label = f"{case.id} ({model}, {family})"
    expected = book.expected(model, wkey, dtype, family, variant)
    expected_ref = book.expected(model, wkey, dtype, family, REFERENCE)
    notes = []

    def reference_moved(ref: Reference) -> str | None:
        if expected_ref is not None and ref.hash != expected_ref:
            import transformers

            return (f"REFERENCE CHANGED for {label}: transformers {transformers.__version__} now generates hash "
                    f"{ref.hash} for this workload, recorded {expected_ref}. The reference itself changed (e.g. a new "
                    f"transformers), not necessarily our code; {update_hint(case.id)}")
        return None

    if dtype == "fp32":
        ref = reference()
        if our_hash != ref.hash:
            raise CorrectnessFailure(
                f"OUR OUTPUT CHANGED for {label}: fp32 hash {our_hash} != transformers' hash {ref.hash} computed in "
                f"the same run ({first_difference(output_ids, ref.output_ids, case.workload.prompt_len)})")
        moved = reference_moved(ref)
        if update:
            book.record(model, wkey, dtype, family, REFERENCE, ref.hash)
        elif moved:
            raise CorrectnessFailure(moved)
        notes.append(f"equals transformers ({ref.hash})")
        return notes

    if is_random(model) and variant != REFERENCE:
        tol = TEACHER_FORCED_TOL[case.torch_dtype]
        ok, step, gap = teacher_forced(output_ids, tol)
        if not ok:
            raise CorrectnessFailure(
                f"OUR OUTPUT CHANGED for {label}: teacher-forced check against transformers failed at new-token step "
                f"{step}: our token's logit is {gap:.4f} below transformers' max (tolerance {tol})")
        notes.append(f"teacher-forced max gap {gap:.4f} <= {tol}")

    if update:
        book.record(model, wkey, dtype, family, variant, our_hash)
        if variant != REFERENCE:
            book.record(model, wkey, dtype, family, REFERENCE, reference().hash)
        notes.append("hash recorded")
        return notes
    if is_random(model) and family != "cpu":  # not reproducible across processes: see the docstring
        notes.append(reported_hash(our_hash, expected, "fp16"))
        return notes
    if expected is None:
        raise CorrectnessFailure(f"no recorded hash for {label} in {book.path.name} (ours: {our_hash}); "
                                 + update_hint(case.id))
    if our_hash != expected:
        ref = reference()
        moved = reference_moved(ref)
        if moved:
            raise CorrectnessFailure(moved + f" (this case: {our_hash}, recorded {expected})")
        if case.v.is_transformers:
            raise CorrectnessFailure(
                f"REFERENCE CHANGED for {label}: transformers' {variant} path now gives {our_hash}, recorded "
                f"{expected}, while its eager path is unchanged ({ref.hash}); {update_hint(case.id)}")
        known = f"recorded {expected_ref}" if expected_ref else "none recorded"
        raise CorrectnessFailure(
            f"OUR OUTPUT CHANGED for {label}: hash {our_hash} != recorded {expected}, while transformers' own hash "
            f"{ref.hash} is unchanged ({known})")
    notes.append(f"hash {our_hash} as recorded")
    return notes


def reported_hash(our_hash: str, expected: str | None, dtype: str) -> str:
    """The note for a hash that is reported, not enforced (random low-precision weights on a GPU)."""
    if expected is not None and our_hash == expected:
        return f"hash {our_hash} as recorded"
    return f"hash {our_hash} (recorded {expected or 'none'}; {dtype} random weights on a GPU: reported, not enforced)"


def _check_sampled(*, case: Case, model: str, family: str, book: HashBook, our_hash: str, output_ids: torch.Tensor,
                   nucleus: Callable[[torch.Tensor, float], tuple] | None, update: bool) -> list[str]:
    """check_output for a sampled case (see its docstring)."""
    if nucleus is None:
        raise ValueError(f"{case.id}: a sampled case needs the nucleus check")
    wkey, dtype, variant = case.workload_key, case.dtype, case.variant
    label = f"{case.id} ({model}, {family})"
    s = case.workload.sampling
    tol = NUCLEUS_TOL[case.torch_dtype]
    ok, step, mass = nucleus(output_ids, tol)
    if not ok:
        raise CorrectnessFailure(
            f"OUR OUTPUT CHANGED for {label}: nucleus check against transformers failed at new-token step {step}: "
            f"a sampled token has probability mass {mass:.4f} ranked above it (top_p {s.top_p} + tolerance {tol})")
    notes = [f"in transformers' nucleus (largest mass above a sampled token {mass:.4f} < top_p {s.top_p} + {tol})"]
    if update:
        book.record(model, wkey, dtype, family, variant, our_hash)
        notes.append("hash recorded")
        return notes
    expected = book.expected(model, wkey, dtype, family, variant)
    if is_random(model) and family != "cpu" and dtype != "fp32":  # not reproducible across processes
        notes.append(reported_hash(our_hash, expected, dtype))
        return notes
    if expected is None:
        raise CorrectnessFailure(f"no recorded hash for {label} in {book.path.name} (ours: {our_hash}); "
                                 + update_hint(case.id))
    if our_hash != expected:
        raise CorrectnessFailure(
            f"OUR OUTPUT CHANGED for {label}: seeded sampled hash {our_hash} != recorded {expected} (every token "
            f"still lies in transformers' nucleus: a changed draw, not necessarily wrong logits)")
    notes.append(f"hash {our_hash} as recorded")
    return notes
