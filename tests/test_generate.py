"""llama_fast.generate: greedy tokens identical to transformers' generate (tiny random models on every code
path; the embedded SmolLM2 for 100+ tokens, batched with left padding, stopping at EOS), min_new_tokens,
streamer / callback / step_hook, chunked prefill, and the request checks (GenerationError)."""
from __future__ import annotations

import pytest
import torch

from core_helpers import TINY_CONFIGS, fast_from_hf, make_hf
from llama_fast import GenerationError
from llama_fast.compile import COMPILE_MODES, make_steps
from llama_fast.generate import decode_step, prefill_step
from llama_fast.config import NAMED_SHAPES
from llama_fast.harness import VARIANTS
from llama_fast.loading import RandomSource, build_model

OPTION_VARIANTS = {k: v.options for k, v in VARIANTS.items() if v.options is not None and v.quantize is None}
PAD = 0


def _ids(cfg, B, T, seed=0, low=3):
    return torch.randint(low, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_generate(hf, ids, attention_mask=None, **kw):
    kw.setdefault("pad_token_id", PAD)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, do_sample=False, **kw)


def left_pad(rows: list[torch.Tensor], pad: int):
    T = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((T - len(r),), pad), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(T - len(r)), torch.ones(len(r))]) for r in rows]).long()
    return ids, mask


@pytest.fixture
def gqa(gqa_pair):
    """The shared tiny GQA model, with its settings restored after the test."""
    cfg, hf, fast = gqa_pair
    saved = (fast.options, fast.compile, fast.prefill_chunk, fast.cache_length, fast.check_every, fast.step_hook)
    yield cfg, hf, fast
    fast.configure(options=saved[0], compile=saved[1], prefill_chunk=saved[2])
    fast.cache_length, fast.check_every, fast.step_hook = saved[3:]


# ------------------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("chunk", [None, 4, 64])
@pytest.mark.parametrize("variant", sorted(OPTION_VARIANTS))
def test_tokens_match_transformers_on_every_code_path(gqa, variant, chunk):
    """Every ablation row, with whole, chunked (4 < prompt) and right-padded (64 > prompt) prefill."""
    cfg, hf, fast = gqa
    fast.configure(options=OPTION_VARIANTS[variant], prefill_chunk=chunk)
    ids = _ids(cfg, 2, 11, seed=1)
    ours = fast.generate(ids, max_new_tokens=24, min_new_tokens=24)
    ref = hf_generate(hf, ids, max_new_tokens=24, min_new_tokens=24)
    assert ours.shape == (2, 11 + 24)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", ["mqa", "llama3-rope", "head-dim-32", "tied", "mlp-bias"])
def test_tokens_match_transformers_across_architectures(name):
    cfg = TINY_CONFIGS[name]
    hf = make_hf(cfg, seed=8)
    fast = fast_from_hf(hf, cfg)
    ids = _ids(cfg, 1, 9, seed=8)
    assert torch.equal(fast.generate(ids, max_new_tokens=40, min_new_tokens=40),
                       hf_generate(hf, ids, max_new_tokens=40, min_new_tokens=40))


@pytest.mark.parametrize("variant", ["kv", "graphs"])
def test_left_padded_batch_matches_transformers(gqa, variant):
    cfg, hf, fast = gqa
    fast.configure(options=OPTION_VARIANTS[variant])
    rows = [_ids(cfg, 1, n, seed=n)[0] for n in (12, 5, 8)]
    ids, mask = left_pad(rows, PAD)
    ours = fast.generate(ids, mask, max_new_tokens=20, min_new_tokens=20, pad_token_id=PAD)
    ref = hf_generate(hf, ids, mask, max_new_tokens=20, min_new_tokens=20)
    assert torch.equal(ours, ref)
    for b, r in enumerate(rows):  # and each row as if it ran alone
        alone = fast.generate(r[None], max_new_tokens=20, min_new_tokens=20)
        assert torch.equal(ours[b, 12:], alone[0, len(r):])


def test_cache_longer_than_needed(gqa):
    cfg, hf, fast = gqa
    ids = _ids(cfg, 1, 7, seed=2)
    ref = fast.generate(ids, max_new_tokens=15, min_new_tokens=15)
    fast.cache_length = 100
    assert torch.equal(fast.generate(ids, max_new_tokens=15, min_new_tokens=15), ref)
    assert fast.model.max_seq_len == 100


def _eos_candidate(fast, ids, step):
    """The token our greedy run emits at `step` (with EOS disabled): used as the EOS id."""
    out = fast.generate(ids, max_new_tokens=step + 1, min_new_tokens=step + 1, eos_token_id=[])
    tok = int(out[0, ids.shape[1] + step])
    earlier = out[0, ids.shape[1]:ids.shape[1] + step].tolist()
    return tok, earlier


def test_eos_stops_early_like_transformers(gqa):
    cfg, hf, fast = gqa
    ids = _ids(cfg, 1, 6, seed=11)
    for step in range(3, 12):  # a step whose token did not appear before, so it is the first EOS
        eos, earlier = _eos_candidate(fast, ids, step)
        if eos not in earlier:
            break
    else:
        pytest.fail("no usable EOS candidate in the first steps")
    fast.check_every = 8  # the loop really breaks early (it polls the device every 8 steps)
    steps = []
    ours = fast.generate(ids, max_new_tokens=60, eos_token_id=eos, callback=lambda i, t: steps.append(i))
    ref = hf_generate(hf, ids, max_new_tokens=60, eos_token_id=eos)
    assert torch.equal(ours, ref)
    assert ours.shape[1] == ids.shape[1] + step + 1 and int(ours[0, -1]) == eos
    assert len(steps) < 60  # stopped before max_new_tokens


def test_batch_rows_finish_at_different_steps(gqa):
    """One row hits EOS early and is padded afterwards; generation runs until the last row finishes."""
    cfg, hf, fast = gqa
    ids = _ids(cfg, 3, 6, seed=12)
    eos, _ = _eos_candidate(fast, ids[:1], 2)
    kw = dict(max_new_tokens=30, eos_token_id=eos, pad_token_id=PAD)
    ours = fast.generate(ids, **kw)
    assert torch.equal(ours, hf_generate(hf, ids, **kw))
    row0 = ours[0, 6:].tolist()
    k = row0.index(eos)
    assert all(t == PAD for t in row0[k + 1:])


def test_min_new_tokens_suppresses_eos_like_transformers(gqa):
    cfg, hf, fast = gqa
    ids = _ids(cfg, 1, 6, seed=13)
    eos, _ = _eos_candidate(fast, ids, 0)  # the very first greedy token
    stopped = fast.generate(ids, max_new_tokens=20, eos_token_id=eos)
    assert stopped.shape[1] == 7 and int(stopped[0, -1]) == eos
    assert torch.equal(stopped, hf_generate(hf, ids, max_new_tokens=20, eos_token_id=eos))
    ours = fast.generate(ids, max_new_tokens=20, min_new_tokens=5, eos_token_id=eos)
    ref = hf_generate(hf, ids, max_new_tokens=20, min_new_tokens=5, eos_token_id=eos)
    assert torch.equal(ours, ref)
    assert eos not in ours[0, 6:11].tolist()
    assert ours.shape[1] > 11 or int(ours[0, -1]) == eos


def test_streamer_and_callback_get_every_token(gqa):
    cfg, hf, fast = gqa

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], 0

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended += 1

    streamer, seen, hooks = Recorder(), [], []
    fast.step_hook = lambda: hooks.append(1)
    ids = _ids(cfg, 2, 5, seed=14)
    out = fast.generate(ids, max_new_tokens=17, min_new_tokens=17, streamer=streamer,
                        callback=lambda step, tok: seen.append((step, tok.clone())))
    new = out[:, 5:]
    assert torch.equal(streamer.puts[0], ids) and streamer.ended == 1
    assert torch.equal(torch.stack(streamer.puts[1:], dim=1), new)
    assert [s for s, _ in seen] == list(range(17))
    assert torch.equal(torch.stack([t for _, t in seen], dim=1), new)
    assert len(hooks) == 16  # one per decode step (the first token comes from prefill)


def test_streamer_after_eos_only_adds_padding(gqa):
    """Early stop is checked every check_every steps, so a streamer may see pad tokens after EOS; the
    tokens it saw up to the end of the output are exactly the output's."""
    cfg, hf, fast = gqa
    ids = _ids(cfg, 1, 6, seed=15)
    eos, _ = _eos_candidate(fast, ids, 1)
    seen = []
    out = fast.generate(ids, max_new_tokens=40, eos_token_id=eos, pad_token_id=PAD,
                        callback=lambda i, t: seen.append(int(t[0])))
    n = out.shape[1] - 6
    assert seen[:n] == out[0, 6:].tolist()
    assert all(t == PAD for t in seen[n:])


def test_generate_returns_cpu_prompt_unchanged(gqa):
    cfg, _, fast = gqa
    ids = _ids(cfg, 2, 4, seed=16).to(torch.int32)
    out = fast.generate(ids, max_new_tokens=3)
    assert out.dtype == torch.long and torch.equal(out[:, :4], ids.long())


# ------------------------------------------------------------------------------------------- compile
def test_make_steps_modes():
    cfg = NAMED_SHAPES["tiny"]
    model = build_model(cfg, RandomSource(cfg, 0, "cpu", torch.float32), "cpu", torch.float32)
    assert make_steps("no", prefill_step, decode_step, model) == (prefill_step, decode_step)
    assert model.compiled_block is None
    make_steps("fullgraph", prefill_step, decode_step, model)  # regional: the block is compiled
    assert model.compiled_block is not None
    make_steps("static", prefill_step, decode_step, model)  # whole step compiled, blocks plain again
    assert model.compiled_block is None
    assert COMPILE_MODES == ("no", "static", "dynamic", "fullgraph")
    with pytest.raises(ValueError, match="unknown compile mode 'max'"):
        make_steps("max", prefill_step, decode_step, model)


def test_llama_fast_objects_sharing_a_model_each_run_their_own_path():
    """Two LlamaFast over one model (a compiled one and an eager reference, as tests and users do): each
    call runs the caller's options and compiled blocks, not whichever object was configured last."""
    from llama_fast.generate import LlamaFast
    from llama_fast.loading import IdTokenizer
    from llama_fast.model import ForwardOptions

    cfg = NAMED_SHAPES["tiny"]
    model = build_model(cfg, RandomSource(cfg, 0, "cpu", torch.float32), "cpu", torch.float32)
    tok = IdTokenizer(cfg.vocab_size, None, 0)
    opts = ForwardOptions(fused_qkv=False, compiled_glue=True)
    fast = LlamaFast(model, tok, options=opts, compile="fullgraph", prefill_chunk=16, cache_length=64)
    eager = LlamaFast(model, tok, cache_length=64)  # configured last: its options are on the model now
    ids = _ids(cfg, 1, 7)
    out = fast.generate(ids, max_new_tokens=4)
    assert model.options is opts
    compiled = (model.compiled_block, model.compiled_prepare)
    assert all(c is not None for c in compiled)
    assert torch.equal(eager.generate(ids, max_new_tokens=4), out)
    assert model.options is eager.options and model.compiled_block is None and model.compiled_prepare is None
    fast.generate(ids, max_new_tokens=4)
    assert model.options is opts and (model.compiled_block, model.compiled_prepare) == compiled
    eager.logits(ids)
    assert model.options is eager.options and model.compiled_block is None


def test_compiled_glue_serves_batch_one_only():
    """compiled_glue's compiled input preparation and greedy pick run at batch 1 only (where they were measured
    to win); a batch of 2 takes the eager ones. Recorders stand in for the compiled functions."""
    from llama_fast.generate import last_token_pick
    from llama_fast.model import ForwardOptions, prepare_inputs

    cfg = NAMED_SHAPES["tiny"]
    model = build_model(cfg, RandomSource(cfg, 0, "cpu", torch.float32), "cpu", torch.float32)
    model.options = ForwardOptions(compiled_glue=True)
    calls = []

    def recording(fn, name):
        def run(*a, **kw):
            calls.append(name)
            return fn(*a, **kw)
        return run

    model.compiled_prepare = recording(prepare_inputs, "prepare")
    model.compiled_pick = recording(last_token_pick, "pick")
    flags = (torch.tensor([2]), torch.tensor(0))  # eos ids, pad id
    with torch.no_grad():
        for B in (2, 1):
            model.setup_caches(B, 32)
            model.set_padding(torch.zeros(B, dtype=torch.long))
            calls.clear()
            tok = torch.full((B,), 5)
            decode_step(model, tok, torch.tensor([3]), torch.zeros(B, dtype=torch.bool), *flags, 0, False)
            assert calls == ([] if B > 1 else ["prepare", "pick"]), B


# ------------------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("make_ids, kw, message", [
    (lambda: torch.empty(1, 0, dtype=torch.long), {}, "empty prompt: input_ids has no tokens"),
    (lambda: torch.empty(0, 4, dtype=torch.long), {}, "empty prompt"),
    (lambda: torch.tensor([5, 6, 7]), {}, "must be a 2-D tensor"),
    (lambda: torch.tensor([[5.0, 6.0]]), {}, "integer token ids, not torch.float32"),
    (lambda: torch.tensor([[5, 97]]), {}, r"token ids must lie in \[0, 97\), got \[5, 97\]"),
    (lambda: torch.tensor([[-1, 5]]), {}, r"got \[-1, 5\]"),
    (lambda: torch.tensor([[5, 6]]), {"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    (lambda: torch.tensor([[5, 6]]), {"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens must lie in"),
    (lambda: torch.ones(1, 10, dtype=torch.long), {"max_new_tokens": 247},
     r"prompt \(10\) \+ max_new_tokens \(247\) = 257 exceeds the model's 256 positions"),
])
def test_bad_requests(gqa, make_ids, kw, message):
    _, _, fast = gqa
    with pytest.raises(GenerationError, match=message):
        fast.generate(make_ids(), **kw)


def test_request_beyond_cache_length(gqa):
    _, _, fast = gqa
    fast.cache_length = 16
    with pytest.raises(GenerationError, match=r"prompt \(10\) \+ max_new_tokens \(7\) = 17 exceeds the cache "
                                              r"length 16"):
        fast.generate(torch.ones(1, 10, dtype=torch.long), max_new_tokens=7)
    assert fast.generate(torch.ones(1, 10, dtype=torch.long), max_new_tokens=6).shape[1] <= 16


def test_exactly_at_the_position_limit_is_accepted(gqa):
    _, _, fast = gqa
    out = fast.generate(torch.ones(1, 250, dtype=torch.long), max_new_tokens=6, min_new_tokens=6)
    assert out.shape == (1, 256)


def test_right_padded_mask_is_refused(gqa):
    _, _, fast = gqa
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(GenerationError, match="must be left-padded.*padding_side = 'left'"):
        fast.generate(ids, mask)
    with pytest.raises(GenerationError, match="must be left-padded"):  # a hole in the middle
        fast.generate(ids, torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1]]))


def test_mask_with_an_empty_row_or_wrong_shape(gqa):
    _, _, fast = gqa
    ids = torch.tensor([[5, 6, 7], [5, 6, 7]])
    with pytest.raises(GenerationError, match="a row of attention_mask has no tokens"):
        fast.generate(ids, torch.tensor([[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(GenerationError, match=r"attention_mask shape \(1, 3\) != input_ids shape \(2, 3\)"):
        fast.generate(ids, torch.ones(1, 3, dtype=torch.long))


# ------------------------------------------------------------------------------------------- SmolLM2
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived",
]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS, ids=["capital", "code", "story"])
def test_smollm2_greedy_matches_transformers(smollm, smollm_hf, prompt):
    tok = smollm.tokenizer
    ids = tok(prompt, return_tensors="pt").input_ids
    kw = dict(max_new_tokens=100, min_new_tokens=100)
    ours = smollm.generate(ids, **kw)
    ref = hf_generate(smollm_hf, ids, pad_token_id=tok.pad_token_id, **kw)
    assert ours.shape == (1, ids.shape[1] + 100)
    assert torch.equal(ours, ref), tok.decode(ours[0]) + "\n---\n" + tok.decode(ref[0])


@pytest.mark.slow
def test_smollm2_left_padded_batch_matches_transformers(smollm, smollm_hf):
    tok = smollm.tokenizer
    assert tok.padding_side == "left"
    prompts = ["Hello", "The three primary colors are", "In computer science, a linked list is a"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    lengths = enc.attention_mask.sum(1).tolist()
    assert len(set(lengths)) == 3 and enc.attention_mask[0, 0] == 0  # really padded, three lengths
    kw = dict(max_new_tokens=100, min_new_tokens=100)
    ours = smollm.generate(enc.input_ids, enc.attention_mask, **kw)
    ref = hf_generate(smollm_hf, enc.input_ids, enc.attention_mask, pad_token_id=tok.pad_token_id, **kw)
    assert ours.shape == (3, enc.input_ids.shape[1] + 100)
    assert torch.equal(ours, ref)


@pytest.mark.slow
def test_smollm2_stops_at_eos_like_transformers(smollm, smollm_hf):
    tok = smollm.tokenizer
    messages = [{"role": "user", "content": "What is 2+2? Answer in one short sentence."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    ours = smollm.generate(ids, max_new_tokens=120)
    ref = hf_generate(smollm_hf, ids, max_new_tokens=120, pad_token_id=tok.pad_token_id)
    assert torch.equal(ours, ref)
    assert ours.shape[1] < ids.shape[1] + 120  # stopped early
    assert int(ours[0, -1]) in smollm.config.eos_token_id


def test_score_is_the_teacher_forced_log_softmax_of_transformers(gqa_pair):
    """score(ids)[b, t] = log p(ids[b, t+1] | ids[b, :t+1]), against transformers' logits on the same weights;
    a left-padded row scores its real tokens as the unpadded row does, and its padding as 0."""
    cfg, hf, fast = gqa_pair
    ids = _ids(cfg, 2, 12)
    with torch.no_grad():
        ref = hf(ids).logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(fast.score(ids), ref, atol=1e-4, rtol=1e-4)
    padded, mask = left_pad([ids[0], ids[1, 4:]], pad=0)
    got = fast.score(padded, mask)
    torch.testing.assert_close(got[1, 4:], fast.score(ids[1:, 4:])[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1, :4], torch.zeros(4))


@pytest.mark.parametrize("make_ids, message", [(lambda: torch.tensor([[3]]), "length >= 2"),
                                               (lambda: torch.tensor([[3, 10 ** 6]]), "token ids must lie")])
def test_score_refuses_bad_input(gqa, make_ids, message):
    with pytest.raises(GenerationError, match=message):
        gqa[2].score(make_ids())
