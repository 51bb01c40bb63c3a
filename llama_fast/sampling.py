"""Sampling on the device: temperature, top-k and top-p with transformers' meanings and order, seeded.

The pick runs inside the decode step's CUDA graph with no host sync and no generator state. On CUDA it is
llama_fast.kernels.sampling (no sort: thresholds by radix select, 8 bits a launch, then a Gumbel-max over the
kept tokens; in a decode step the same launches also apply the EOS / pad bookkeeping, see
generate.sampled_pick); elsewhere it is the torch ops of sample() (a stable sort, softmax and cumsum). The
random numbers are a counter-based hash of (seed, cache position, row, token id) in integer ops, so:
  - a graph replay needs no RNG offset bookkeeping: the position tensor the step already carries is the counter;
  - the noise is bit-identical on every device and in every compile mode (integer ops only), so the same seed,
    inputs and dtype give the same tokens run after run. Across compile modes the logits themselves may differ in
    the last bit (a compiled block sums in another order), so a token can differ only where two candidates tie to
    within that rounding; tests check that eager and compiled steps agree on a tiny fp32 model.
The token is argmax(logits / T + Gumbel noise) over the tokens the filters keep (the Gumbel-max trick: a sample of
softmax(logits / T) restricted to those tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

_M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2**27: a 32-bit value times it stays below 2**59, so int64 never overflows on any backend


class SamplingError(ValueError):
    """Sampling parameters out of range."""


@dataclass(frozen=True)
class Sampling:
    """What generate(do_sample=True, ...) draws from. top_k / top_p None = that filter off."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == float("inf"):
            raise SamplingError(f"temperature must be a finite number > 0 when sampling, got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise SamplingError(f"top_k must be an integer >= 1 (or None), got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise SamplingError(f"top_p must lie in (0, 1] (or None), got {p!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise SamplingError(f"seed must be an integer >= 0 (or None), got {s!r}")

    def state(self, device: torch.device, vocab_size: int) -> "SamplerState":
        """The device tensors a step reads. seed None draws one from torch's global generator (so
        torch.manual_seed makes an unseeded call repeatable too)."""
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2 ** 31 - 1, (1,)))
        top_k = min(self.top_k, vocab_size) if self.top_k is not None else vocab_size
        floats = torch.tensor([self.temperature, self.top_p if self.top_p is not None else 1.0],
                              dtype=torch.float32, device=device)
        ints = torch.tensor([top_k, seed & _M32], dtype=torch.long, device=device)
        return SamplerState(floats, ints, self.top_k is not None, self.top_p is not None and self.top_p < 1)


class SamplerState(NamedTuple):
    """floats (2,) = [temperature, top_p]; ints (2,) = [top_k, seed]; the two flags select static code paths
    (a graph per combination), so temperature-only sampling never sorts the vocabulary."""
    floats: torch.Tensor
    ints: torch.Tensor
    use_top_k: bool
    use_top_p: bool


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 holding values < 2**32): good avalanche, no overflow (see _MIX)."""
    x = ((x >> 16) ^ x) * _MIX & _M32
    x = ((x >> 16) ^ x) * _MIX & _M32
    return (x >> 16) ^ x


def uniform_noise(seed: torch.Tensor, position: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """(rows, vocab) fp32 in (0, 1), a pure function of (seed, position, row, token id). seed, position: (1,)."""
    dev = position.device
    key = _mix((_mix(seed & _M32) + position) & _M32)  # (1,): one stream per (seed, step)
    ids = (torch.arange(rows, device=dev)[:, None] * vocab + torch.arange(vocab, device=dev)[None, :]) & _M32
    h = _mix(_mix(ids ^ key) + key & _M32)  # (rows, vocab)
    # 23 bits + 0.5 fit fp32's 24-bit significand exactly: never 0, never 1
    return ((h >> 9).float() + 0.5) * (1.0 / (1 << 23))


def _sorted_keep(logits: torch.Tensor, state: SamplerState):
    """The torch filters over a stable descending sort: (order, scaled, keep), each (B, V) in sorted order."""
    V = logits.shape[-1]
    temperature, top_p, top_k = state.floats[0], state.floats[1], state.ints[0]
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V)
    scaled = sorted_logits / temperature
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if state.use_top_k:
        keep = torch.arange(V, device=logits.device)[None, :] < top_k
        scaled = scaled.masked_fill(~keep, float("-inf"))
    if state.use_top_p:
        # transformers keeps the smallest top set whose probability reaches p: a token stays while the
        # probability of the tokens ranked above it is still below p (the first always stays)
        probs = scaled.softmax(-1)
        before = probs.cumsum(-1) - probs
        keep = keep & (before < top_p)
        keep[:, 0] = True
    return order, scaled, keep.expand_as(scaled)


def kept_tokens(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """(B, V) bool in token order: the tokens the top-k / top-p filters keep (the torch path's)."""
    order, _, keep = _sorted_keep(logits, state)
    return torch.zeros_like(keep).scatter(-1, order, keep)


def sample(logits: torch.Tensor, state: SamplerState, position: torch.Tensor) -> torch.Tensor:
    """One token per row from logits (B, V) fp32 -> (B,) int64: temperature, then top-k, then top-p, then a draw.

    Ties: top-k keeps the k first of a stable descending sort of the raw logits (temperature keeps the order), so
    top_k=1 is exactly the greedy argmax (its first maximum) at any temperature.

    Where llama_fast.kernels run (CUDA), the pick is llama_fast.kernels.sampling's: the same noise and filters
    without a sort, in a fixed number of launches (its docstring says where the two can differ: a top-p mass
    within fp32 rounding of p, or two exactly equal scores). Elsewhere it runs as the torch ops below."""
    if _use_kernels(logits):
        from .kernels.sampling import sample_pick

        return sample_pick(logits, state.floats, state.ints, position, state.use_top_k, state.use_top_p)
    B, V = logits.shape
    temperature, seed = state.floats[0], state.ints[1]
    gumbel = -torch.log(-torch.log(uniform_noise(seed, position, B, V)))  # (B, V)
    if not (state.use_top_k or state.use_top_p):
        return (logits / temperature + gumbel).argmax(-1)
    order, scaled, keep = _sorted_keep(logits, state)
    scores = torch.where(keep, scaled + gumbel.gather(-1, order), float("-inf"))
    return order.gather(-1, scores.argmax(-1, keepdim=True))[:, 0]


def kernels_apply(logits: torch.Tensor) -> bool:
    """Whether sampling from logits runs as llama_fast.kernels.sampling (see _use_kernels)."""
    return _use_kernels(logits)


def _use_kernels(logits: torch.Tensor) -> bool:
    """Whether the pick runs as llama_fast.kernels.sampling (where the model's Triton kernels run)."""
    from .model import triton_kernels_apply

    return triton_kernels_apply(logits)
