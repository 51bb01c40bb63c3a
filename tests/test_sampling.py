"""Sampling (llama_fast/sampling.py): parameter checks, greedy equivalences, seeding, and the distribution of the
drawn tokens against transformers' own logits warpers (chi-square at a fixed significance)."""
from __future__ import annotations

import pytest
import torch
from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import llama_fast
from llama_fast.harness import FASTEST, VARIANTS
from llama_fast.sampling import Sampling, SamplingError, sample, uniform_noise

ALPHA = 1e-4  # fixed significance of the chi-square tests (a false alarm 1 run in 10,000 per setting)
ROWS = 20000  # identical prompts drawn once each: the first sampled token of every row


@pytest.fixture(scope="module")
def peaked():
    """random:tiny in fp32 with its output head scaled up: logits spread over a few units, so temperature,
    top-k and top-p each change the distribution a lot (the random head alone is nearly uniform)."""
    m = llama_fast.load_model("random:tiny", "cpu", "float32")
    with torch.no_grad():
        m.model.output.weight.mul_(15)
    return m


PROMPT = torch.tensor([[5, 17, 301, 42]])


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                    dict(top_k=0), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(seed=-3), dict(temperature=True)])
def test_bad_parameters_are_refused_before_anything_runs(peaked, kwargs):
    with pytest.raises(SamplingError):
        peaked.generate(PROMPT, max_new_tokens=2, do_sample=True, **kwargs)


def test_parameters_without_do_sample_are_ignored_with_a_warning(peaked):
    greedy = peaked.generate(PROMPT, max_new_tokens=6)
    with pytest.warns(UserWarning, match="ignored without do_sample"):
        out = peaked.generate(PROMPT, max_new_tokens=6, temperature=0.5, top_k=3)
    assert torch.equal(out, greedy)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 7.0])
def test_top_k_1_is_greedy_at_any_temperature(peaked, temperature):
    ids = PROMPT.expand(3, -1)
    greedy = peaked.generate(ids, max_new_tokens=12)
    out = peaked.generate(ids, max_new_tokens=12, do_sample=True, top_k=1, temperature=temperature, seed=11)
    assert torch.equal(out, greedy)


def test_same_seed_same_tokens_other_seed_other_tokens(peaked):
    ids = PROMPT.expand(2, -1)
    a = peaked.generate(ids, max_new_tokens=24, do_sample=True, temperature=1.5, seed=123)
    b = peaked.generate(ids, max_new_tokens=24, do_sample=True, temperature=1.5, seed=123)
    c = peaked.generate(ids, max_new_tokens=24, do_sample=True, temperature=1.5, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # rows draw independently


def test_unseeded_draws_follow_torch_manual_seed(peaked):
    torch.manual_seed(5)
    a = peaked.generate(PROMPT, max_new_tokens=16, do_sample=True, temperature=2.0)
    torch.manual_seed(5)
    b = peaked.generate(PROMPT, max_new_tokens=16, do_sample=True, temperature=2.0)
    assert torch.equal(a, b)


def test_noise_is_uniform_and_a_pure_function_of_its_counters():
    seed, pos = torch.tensor([9]), torch.tensor([1000])
    u = uniform_noise(seed, pos, 8, 4096)
    assert torch.equal(u, uniform_noise(seed, pos, 8, 4096))
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.std()) - 12 ** -0.5) < 0.003
    other = uniform_noise(seed, pos + 1, 8, 4096)
    assert abs(float(torch.corrcoef(torch.stack([u.flatten(), other.flatten()]))[0, 1])) < 0.02
    # a uniform histogram over 64 bins
    counts = torch.bincount((u.flatten() * 64).long(), minlength=64).double()
    assert _p_value(counts, torch.full((64,), 1 / 64, dtype=torch.float64)) > ALPHA


def _p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit; bins expecting fewer than 5 draws are pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    if exp[-1] == 0:
        assert obs[-1] == 0, "a token the filters remove was drawn"
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(float(len(obs) - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def _reference_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """transformers' warpers, in transformers' order (temperature, top-k, top-p), then softmax: (V,) float64."""
    scores = logits[None].double()
    for warper in ([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else [])
                   + ([TopPLogitsWarper(top_p)] if top_p else [])):
        scores = warper(None, scores)
    return scores.softmax(-1)[0]


SETTINGS = [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.9), dict(temperature=1.3, top_k=50),
            dict(temperature=0.8, top_p=0.95)]


@pytest.mark.slow
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_first_token_follows_the_filtered_softmax(peaked, setting):
    """Many identical prompts, one draw each: the first sampled token's histogram must fit the softmax of the
    model's own logits at that position after transformers' warpers; the same counts must not fit the
    unfiltered softmax at temperature 1 (the test can tell the settings apart)."""
    logits = peaked.logits(PROMPT)[0, -1].float()  # (V,)
    full = dict(temperature=1.0, top_k=None, top_p=None) | setting
    out = peaked.generate(PROMPT.expand(ROWS, -1), max_new_tokens=1, do_sample=True, seed=2024, **setting)
    counts = torch.bincount(out[:, -1], minlength=logits.numel()).double()
    assert _p_value(counts, _reference_probs(logits, **full)) > ALPHA
    assert _p_value(counts, _reference_probs(logits, 1.0, None, None)) < ALPHA


def test_sample_on_hand_made_logits_keeps_only_the_filtered_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).expand(4000, -1).contiguous()
    state = Sampling(top_k=3, seed=1).state(torch.device("cpu"), 6)
    tok = sample(logits, state, torch.tensor([7]))
    assert set(tok.tolist()) == {0, 1, 2}
    probs = torch.tensor([4.0, 3.0, 2.0]).softmax(-1).double()
    assert _p_value(torch.bincount(tok, minlength=3).double(), probs) > ALPHA
    # top_p: p(0) = 0.64 < 0.7, so tokens 0 and 1 stay (0.64 + 0.24 reaches 0.7), nothing else
    state = Sampling(top_p=0.7, seed=1).state(torch.device("cpu"), 6)
    assert set(sample(logits, state, torch.tensor([7])).tolist()) == {0, 1}


@pytest.mark.slow
def test_compiled_fullgraph_step_draws_the_eager_tokens():
    """The step compiled (regional compile; the sampled pick itself runs eagerly) draws the same tokens as eager
    code for the same seed: the noise is integer-exact and the float work agrees here."""
    fastest = VARIANTS[FASTEST]
    eager = llama_fast.load_model("random:tiny", "cpu", "float32")
    compiled = llama_fast.load_model("random:tiny", "cpu", "float32", compile="fullgraph",
                                     options=fastest.options, prefill_chunk=fastest.prefill_chunk)
    for kw in (dict(temperature=0.9, top_p=0.95), dict(temperature=1.2)):
        kw.update(max_new_tokens=12, do_sample=True, seed=77)
        for ids in (PROMPT, PROMPT.expand(2, -1)):
            assert torch.equal(eager.generate(ids, **kw), compiled.generate(ids, **kw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the fused path and its CUDA graph")
def test_cuda_graphed_fastest_path_samples_repeatably_and_top_k_1_is_greedy():
    """On the GPU the sampled pick runs inside the captured decode graph of the fastest path: the same seed gives
    the same tokens, and top_k=1 gives the greedy tokens of the same graph path."""
    fastest = VARIANTS[FASTEST]
    m = llama_fast.load_model("random:tiny", "cuda", "float16", compile="fullgraph", options=fastest.options,
                              prefill_chunk=fastest.prefill_chunk)
    ids = PROMPT.expand(1, -1)
    kw = dict(max_new_tokens=24, do_sample=True, temperature=0.8, top_p=0.95, seed=5)
    a, b = m.generate(ids, **kw), m.generate(ids, **kw)
    assert torch.equal(a, b)
    greedy = m.generate(ids, max_new_tokens=24)
    assert torch.equal(m.generate(ids, max_new_tokens=24, do_sample=True, top_k=1, temperature=0.5, seed=1), greedy)
