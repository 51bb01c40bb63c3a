"""The sampled pick's Triton kernels (llama_fast/kernels/sampling.py) against the torch path of
llama_fast.sampling.sample, in Triton's interpreter on the CPU: the noise bit for bit, and for many seeds,
positions and settings the same keep mask (kept_tokens) and the same token, over fp32 / fp16 / bf16 logits (fp16
and bf16 logits tie often: the top-k and top-p boundaries fall inside runs of equal logits); the decode step's
fused pick (pick_next: position offset, EOS suppression, pad and done flags) against generate's torch path; and
the number of launches each filter combination takes (every launch goes through the module's _launch).

Each check runs in a subprocess: TRITON_INTERPRET must be set before Triton is imported."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PRELUDE = r"""
import sys
import torch
from llama_fast import sampling as S
from llama_fast.kernels import sampling as K

CPU = torch.device("cpu")
SETTINGS = [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.9), dict(temperature=1.3, top_k=50),
            dict(temperature=0.8, top_k=20, top_p=0.8), dict(top_k=1, temperature=5.0)]
failures = []
# launches per (top-k, top-p): 4 radix rounds (8 bits each) per filter, then the draw (temperature only: the
# draw alone, after a memset)
LAUNCHES = {(False, False): 1, (True, False): 5, (False, True): 5, (True, True): 9}
launched = []
_real_launch = K._launch


def _counting_launch(kernel, grid, *args, **meta):
    launched.append(kernel)
    _real_launch(kernel, grid, *args, **meta)


K._launch = _counting_launch


def check_launches(st, what):
    want = LAUNCHES[(st.use_top_k, st.use_top_p)]
    if len(launched) != want:
        failures.append(f"{what}: {len(launched)} launches, expected {want}")
    launched.clear()


def check(x, setting, seed, position, chunk, what):
    # x: logits (B, V) in any float dtype; the torch path gets them in fp32, as generate gives them
    B, V = x.shape
    st = S.Sampling(seed=seed, **setting).state(CPU, V)
    pos = torch.tensor([position])
    keep = torch.zeros(B, V, dtype=torch.int8)
    launched.clear()
    tok = K.pick(x, st.floats, st.ints, pos, st.use_top_k, st.use_top_p, chunk=chunk, keep_out=keep)
    check_launches(st, f"{what} {setting}")
    ref = S.sample(x.float(), st, pos)
    ref_keep = S.kept_tokens(x.float(), st) if (st.use_top_k or st.use_top_p) else torch.ones(B, V, dtype=torch.bool)
    if not torch.equal(keep.bool(), ref_keep):
        failures.append(f"{what} {setting} seed {seed}: keep masks differ in {int((keep.bool() != ref_keep).sum())}")
    if not torch.equal(tok, ref):
        failures.append(f"{what} {setting} seed {seed}: tokens {tok.tolist()} != {ref.tolist()}")
    if setting.get("top_k") == 1 and not torch.equal(tok, x.float().argmax(-1)):
        failures.append(f"{what} top_k=1 is not the argmax")
    return tok


def finish():
    print("\n".join(failures) if failures else "ok")
"""

NOISE = PRELUDE + r"""
for seed in (0, 3, 2 ** 31 - 1):
    for position in (0, 17, 1000, 2 ** 31 + 5):
        for rows, vocab in ((1, 100), (3, 1000), (2, 32000)):
            ints = torch.tensor([1, seed], dtype=torch.long)
            pos = torch.tensor([position])
            if not torch.equal(K.uniform_noise(ints, pos, rows, vocab), S.uniform_noise(ints[1], pos, rows, vocab)):
                failures.append(f"noise differs: seed {seed} position {position} {rows}x{vocab}")
finish()
"""

PICKS = PRELUDE + r"""
dtype = getattr(torch, sys.argv[1])
g = torch.Generator().manual_seed(0)
for setting in SETTINGS:
    for seed, position in ((1, 5), (29, 1000)):
        # 4 blocks of 256 per row, and one partial block
        check((3 * torch.randn(3, 1000, generator=g)).to(dtype), setting, seed, position, 256, f"{dtype} 3x1000")
        check((3 * torch.randn(1, 100, generator=g)).to(dtype), setting, seed, position, 256, f"{dtype} 1x100")
# a larger vocabulary at the default chunk (the 32k case of Llama-2)
for setting in (dict(top_p=0.9), dict(temperature=1.3, top_k=50)):
    check((3 * torch.randn(1, 32000, generator=g)).to(dtype), setting, 7, 123, K.CHUNK, f"{dtype} 1x32000")
finish()
"""

TIES = PRELUDE + r"""
g = torch.Generator().manual_seed(1)
for trial in range(2):
    # integer logits in [-3, 3]: every boundary falls inside a run of ties; some tokens suppressed to -inf,
    # as generate does with EOS before min_new_tokens
    x = torch.randint(-3, 4, (3, 700), generator=g).float()
    x[:, 5 * trial] = float("-inf")
    x[1, :50] = -0.0  # -0.0 and +0.0 are one value
    for setting in (dict(top_k=1, temperature=0.3), dict(top_k=1, temperature=7.0), dict(top_k=7), dict(top_k=300),
                    dict(top_p=0.5), dict(top_p=0.97), dict(top_k=40, top_p=0.3), dict(top_k=699, top_p=0.99),
                    dict(temperature=2.0)):
        check(x, setting, trial, 40 + trial, 128, f"ties trial {trial}")
    # many draws over a tied top-k set: the tokens spread over exactly the kept ones
    st = S.Sampling(top_k=10, seed=trial).state(CPU, 700)
    toks = torch.cat([K.pick(x, st.floats, st.ints, torch.tensor([p]), True, False, chunk=128) for p in range(8)])
    kept = S.kept_tokens(x, st).repeat(8, 1)
    if not bool(kept.gather(1, toks[:, None]).all()):
        failures.append("a token outside the top-k set was drawn")
# sample() takes the kernel path where the model's kernels run (here: forced on CPU tensors)
S._use_kernels = lambda t: True
x = 3 * torch.randn(2, 500, generator=g)
st = S.Sampling(temperature=0.9, top_p=0.95, seed=4).state(CPU, 500)
S._use_kernels = lambda t: False
ref = S.sample(x, st, torch.tensor([9]))
S._use_kernels = lambda t: True
if not torch.equal(S.sample(x, st, torch.tensor([9])), ref):
    failures.append("sample() on the kernel path differs from its torch path")
finish()
"""

NEXT = PRELUDE + r"""
from llama_fast import generate as G

g = torch.Generator().manual_seed(2)
pad = torch.tensor(3)
done = torch.tensor([False, True, False, False])
for dtype in (torch.float16, torch.bfloat16):
    for setting in (dict(temperature=0.8, top_p=0.95), dict(top_k=5), dict(temperature=1.3), dict(top_k=1),
                    dict(temperature=0.9, top_k=20, top_p=0.8)):
        for suppress in (False, True):
            # logits (B, 1, V) in the model dtype, as the decode step has them; row 0's EOS id is its argmax, so
            # top_k=1 draws EOS there unless it is suppressed
            logits = (3 * torch.randn(4, 1, 900, generator=g)).to(dtype)
            eos = torch.tensor([int(logits[0, 0].float().argmax()), 7])
            st = S.Sampling(seed=5, **setting).state(CPU, 900)
            pos = torch.tensor([40])
            what = f"{dtype} {setting} suppress {suppress}"
            ref = G.last_token_pick(logits, done, eos, pad, suppress, st, pos + 1)  # the torch path
            launched.clear()
            got = K.pick_next(logits[:, -1], done, eos, pad, st.floats, st.ints, pos, st.use_top_k, st.use_top_p,
                              suppress, chunk=256)
            check_launches(st, what)
            S._use_kernels = lambda t: True  # generate's sampled branch takes the kernel op (one block a row)
            fused = G.sampled_pick(logits, done, eos, pad, suppress, st, pos)
            S._use_kernels = lambda t: False
            check_launches(st, what + " (sampled_pick)")
            for name, out in (("pick_next", got), ("sampled_pick", fused)):
                if not (torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])):
                    failures.append(f"{what} {name}: {out} != {ref}")
            if setting == dict(top_k=1) and bool(ref[1][0]) == suppress:
                failures.append(f"{what}: row 0's EOS draw is not what the check expects")
finish()
"""

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (the CPU torch build has none); the kernels run in "
                                         "Triton's interpreter wherever triton is installed, and for real on a GPU")


def _run(script: str, *args: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


@needs_triton
def test_noise_is_the_torch_noise_bit_for_bit():
    _run(NOISE)


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_pick_keeps_and_draws_what_the_torch_path_does(dtype):
    _run(PICKS, dtype)


@needs_triton
def test_ties_suppressed_tokens_and_the_dispatch():
    _run(TIES)


@needs_triton
def test_decode_pick_with_eos_and_pad_matches_the_torch_step():
    _run(NEXT)


@needs_triton
def test_chunk_for_spreads_a_row_over_more_programs_at_small_batches():
    """The measured points (pick_bench.py --kernel-sweep on an H200) get their fastest chunks: about 128 programs
    per row at batch 1, about 256 programs in all at batch 8, within 256..CHUNK tokens each."""
    from llama_fast.kernels import sampling as K

    assert [K.chunk_for(1, 32000), K.chunk_for(1, 128256), K.chunk_for(8, 32000), K.chunk_for(8, 128256)] == \
        [256, 1024, 1024, 2048]
    assert K.chunk_for(64, 32000) == K.CHUNK and K.chunk_for(1, 49152) == 512 and K.chunk_for(3, 100) == 256
