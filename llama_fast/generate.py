"""Greedy generation over the static cache: chunked prefill, then one decode step per token.

Nothing in the loop waits on the device: the next token, the finished flags and the cache position
stay on the device; the host looks at them every `check_every` steps (early stop) and once at the end.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from .compile import COMPILE_MODES, make_steps
from .config import LlamaConfig
from .model import ForwardOptions, Transformer
from .sampling import Sampling, SamplerState, kernels_apply, sample


class GenerationError(ValueError):
    """A generate() request the model cannot serve (empty prompt, too long, bad mask, ...)."""


def next_token(logits: torch.Tensor, done: torch.Tensor, eos_ids: torch.Tensor, pad_id: torch.Tensor,
               suppress_eos: bool, sampler: SamplerState | None = None, position: torch.Tensor | None = None):
    """The pick: greedy argmax, or a draw (sampler) seeded at cache slot position (1,) of the new token.
    logits (B, V) fp32; done (B,) bool. Finished rows emit pad, as transformers does."""
    if suppress_eos:  # min_new_tokens not reached yet
        logits = logits.index_fill(-1, eos_ids, float("-inf"))
    choice = logits.argmax(-1) if sampler is None else sample(logits, sampler, position)
    tok = torch.where(done, pad_id, choice)
    return tok, done | torch.isin(tok, eos_ids)


def prefill_step(model: Transformer, idx: torch.Tensor, input_pos: torch.Tensor, start: int,
                 logits_index: torch.Tensor) -> torch.Tensor:
    """idx (B, C) at slots input_pos (C,); fp32 logits (B, V) of chunk position logits_index (1,) only."""
    return model(idx, input_pos, start, logits_index)[:, -1].float()


def last_token_pick(logits: torch.Tensor, done: torch.Tensor, eos_ids: torch.Tensor, pad_id: torch.Tensor,
                    suppress_eos: bool, sampler: SamplerState | None = None, position: torch.Tensor | None = None):
    """next_token over the last position of logits (B, T, V) in the model dtype."""
    return next_token(logits[:, -1].float(), done, eos_ids, pad_id, suppress_eos, sampler, position)


def sampled_pick(logits: torch.Tensor, done: torch.Tensor, eos_ids: torch.Tensor, pad_id: torch.Tensor,
                 suppress_eos: bool, sampler: SamplerState, input_pos: torch.Tensor):
    """last_token_pick with sampler, seeded at the new token's slot input_pos + 1. Where the sampling kernels run
    it is one op (llama_fast.kernels.sampling.sample_next) reading the logits in the model dtype: the cast, the
    position add, the EOS suppression and next_token's where / isin / or would each be a launch of their own."""
    if kernels_apply(logits):
        from .kernels.sampling import sample_next

        return sample_next(logits[:, -1], done, eos_ids, pad_id, sampler.floats, sampler.ints, input_pos,
                           sampler.use_top_k, sampler.use_top_p, suppress_eos)
    return last_token_pick(logits, done, eos_ids, pad_id, suppress_eos, sampler, input_pos + 1)


def decode_step(model: Transformer, tok: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor,
                eos_ids: torch.Tensor, pad_id: torch.Tensor, start: int, suppress_eos: bool,
                sampler: SamplerState | None = None):
    """One token per row: tok (B,) at slot input_pos (1,) -> (next tok (B,), done (B,)). The pick is
    last_token_pick, or its compiled copy where Transformer.step_glue gives one; a sampled token is drawn by
    sampled_pick, seeded at its own slot, input_pos + 1."""
    logits = model(tok[:, None], input_pos, start)  # (B, 1, V)
    if sampler is not None:
        # not compiled (captured in the step's CUDA graph like the rest): Inductor fuses the torch path's top-p
        # cumsum and final argmax into one split scan kernel, which it cannot generate on CUDA
        return sampled_pick(logits, done, eos_ids, pad_id, suppress_eos, sampler, input_pos)
    _, pick = model.step_glue(tok.shape[0])
    return (pick or last_token_pick)(logits, done, eos_ids, pad_id, suppress_eos)


def _sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
              seed: int | None) -> Sampling | None:
    """The validated Sampling of a generate call (SamplingError before anything runs), or None for greedy."""
    if do_sample:
        return Sampling(temperature, top_k, top_p, seed)
    if (temperature, top_k, top_p, seed) != (1.0, None, None, None):
        warnings.warn("temperature / top_k / top_p / seed are ignored without do_sample=True (greedy)",
                      stacklevel=3)
    return None


# what make_steps / configure set on the (possibly shared) model for one LlamaFast
_MODEL_STATE = ("options", "compiled_block", "compiled_fused_block", "compiled_prepare", "compiled_pick")


class LlamaFast:
    """A loaded model, its tokenizer and how to run it. `generate` mirrors transformers' greedy generate."""

    def __init__(self, model: Transformer, tokenizer: Any, name: str = "", *,
                 options: ForwardOptions | None = None, compile: str = "no",
                 prefill_chunk: int | None = None, cache_length: int | None = None, check_every: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.config: LlamaConfig = model.config
        self.name = name
        # the embedding, never quantized: a quantized head's .weight would be dequantized just to be read
        self.device = model.tok_embeddings.weight.device
        self.dtype = model.tok_embeddings.weight.dtype
        self.quantize: str | None = None  # the weight scheme (llama_fast.quant), set by api.load_model
        self.load_peak_bytes: int | None = None  # peak memory of the load, set by api.load_model
        self.cache_length = cache_length
        self.check_every = check_every
        self.options = ForwardOptions()
        self.compile = "no"
        self.prefill_chunk = None
        self._steps = None
        self._model_state: dict = {}
        # Test-only: called after every decode step (the benchmark gate's injected slowdown). None in use.
        self.step_hook: Callable[[], None] | None = None
        self.configure(options=options or ForwardOptions(), compile=compile, prefill_chunk=prefill_chunk)

    def configure(self, *, options: ForwardOptions | None = None, compile: str | None = None,
                  prefill_chunk: int | None = None, keep_chunk: bool = False):
        """Select the code path (ablation row) and compile mode; compiled steps are rebuilt lazily."""
        if options is not None:
            self.options = options
            self.model.options = options
        if compile is not None:
            if compile not in COMPILE_MODES:
                raise ValueError(f"unknown compile mode {compile!r} (choose from {', '.join(COMPILE_MODES)})")
            self.compile = compile
        if not keep_chunk:
            self.prefill_chunk = prefill_chunk
        self._steps = None

    @property
    def steps(self):
        """(prefill, decode) of this object's compile mode, with the model set to this object's code path."""
        self._bind()
        if self._steps is None:
            self._steps = make_steps(self.compile, prefill_step, decode_step, self.model)
            self._model_state = {k: getattr(self.model, k) for k in _MODEL_STATE}
        return self._steps

    def graph_pool_bytes(self) -> int:
        """Device memory held by this object's captured CUDA graphs (their activations): part of its footprint
        that max_memory_allocated does not show. 0 where nothing is graphed."""
        return sum(getattr(step, "pool_bytes", 0) for step in self._steps or ())

    def _bind(self):
        """The model may be shared (e.g. a compiled and an eager LlamaFast over one set of weights): put this
        object's options and, once its steps exist, its compiled blocks back on the model before running."""
        self.model.options = self.options
        if self._steps is not None:
            for k, v in self._model_state.items():
                setattr(self.model, k, v)

    # ------------------------------------------------------------------------------------ checks
    def _check_request(self, input_ids, attention_mask, max_new_tokens, min_new_tokens):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise GenerationError("input_ids must be a 2-D tensor (batch, prompt_length)")
        B, T = input_ids.shape
        if B == 0 or T == 0:
            raise GenerationError("empty prompt: input_ids has no tokens")
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise GenerationError(f"input_ids must hold integer token ids, not {input_ids.dtype}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise GenerationError(f"token ids must lie in [0, {self.config.vocab_size}), got [{lo}, {hi}]")
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise GenerationError(f"min_new_tokens must lie in [0, max_new_tokens], got {min_new_tokens}")
        total = T + max_new_tokens
        if total > self.config.max_position_embeddings:
            raise GenerationError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
                                  f"{self.config.max_position_embeddings} positions")
        if self.cache_length is not None and total > self.cache_length:
            raise GenerationError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
                                  f"cache length {self.cache_length}")
        return self._pad_len(input_ids, attention_mask)

    @staticmethod
    def _pad_len(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Each row's left padding (B,) from a left-padded attention_mask (zeros when there is none)."""
        B, T = input_ids.shape
        if attention_mask is None:
            return torch.zeros(B, dtype=torch.long)
        if attention_mask.shape != input_ids.shape:
            raise GenerationError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                                  f"{tuple(input_ids.shape)}")
        m = attention_mask.to("cpu", torch.long)
        n_real = m.sum(1)
        if bool((n_real == 0).any()):
            raise GenerationError("empty prompt: a row of attention_mask has no tokens")
        pad_len = T - n_real
        expected = torch.arange(T)[None, :] >= pad_len[:, None]
        if not torch.equal(m.bool(), expected):
            raise GenerationError("attention_mask must be left-padded (zeros, then ones); "
                                  "set tokenizer.padding_side = 'left'")
        return pad_len

    def _eos_pad(self, eos_token_id, pad_token_id):
        if eos_token_id is None:
            eos = list(self.config.eos_token_id)
        elif isinstance(eos_token_id, int):
            eos = [eos_token_id]
        else:
            eos = list(eos_token_id)
        if pad_token_id is None:
            pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id if self.config.pad_token_id is not None else (eos or [0])[0]
        return eos, pad_token_id

    # ------------------------------------------------------------------------------------ generate
    def _prefill_chunks(self, T: int, S: int) -> tuple[int, list[int]]:
        """(chunk length C, chunk starts). Fixed C keeps prefill shapes static across prompt lengths:
        a prompt shorter than C is right-padded (the pad slots are overwritten later and never attended),
        a longer one ends with a chunk aligned to its end (overlapping slots are recomputed identically)."""
        C = self.prefill_chunk
        if C is None or (T < C and C > S):
            return T, [0]
        if T <= C:
            return C, [0]
        starts = list(range(0, T - C + 1, C))
        if starts[-1] + C < T:
            starts.append(T - C)
        return C, starts

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, min_new_tokens: int = 0, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, streamer: Any = None,
                 callback: Callable[[int, torch.Tensor], None] | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> torch.Tensor:
        """Greedy generation, or sampling with do_sample=True; returns (B, T + n) prompt + new tokens, like
        transformers' generate.

        Sampling takes transformers' names and meanings: temperature, then top_k (the k most likely), then top_p
        (the smallest set whose probability reaches p); seed fixes the draw (None: drawn from torch's global
        generator). Without do_sample they are ignored (with a warning where set), as transformers does.

        streamer: a transformers-style streamer (put/end). callback(step, tokens (B,)) gets device tensors,
        valid until the next step (a captured decode graph rewrites its output buffers on each replay; the
        loop copies them into `out` and into the graph's inputs before that happens)."""
        sampling = _sampling(do_sample, temperature, top_k, top_p, seed)
        pad_len = self._check_request(input_ids, attention_mask, max_new_tokens, min_new_tokens)
        B, T = input_ids.shape
        eos, pad = self._eos_pad(eos_token_id, pad_token_id)
        dev, model = self.device, self.model
        S = self.cache_length or T + max_new_tokens
        model.setup_caches(B, S)
        model.set_padding(pad_len.to(dev))
        prefill, decode = self.steps
        ids = input_ids.to(dev, torch.long)
        eos_ids = torch.tensor(eos, dtype=torch.long, device=dev)
        pad_id = torch.tensor(pad, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        sampler = sampling.state(dev, self.config.vocab_size) if sampling is not None else None
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)
        if streamer is not None:
            streamer.put(input_ids.cpu())

        # Python-int offsets only reach the seed's slicing path; elsewhere a constant keeps graphs static
        def start_of(s: int) -> int:
            return 0 if self.options.tensor_positions else s

        C, starts = self._prefill_chunks(T, S)
        for s in starts:
            # a copy with standard strides: the view's row stride is the prompt length, and compiled code taking
            # it would be specialized on that stride (a recompile per prompt length)
            chunk = ids[:, s:s + C].clone(memory_format=torch.contiguous_format)
            if chunk.shape[1] < C:  # short prompt: right-pad to the static chunk length
                chunk = torch.cat([chunk, chunk.new_full((B, C - chunk.shape[1]), pad)], dim=1)
            last = torch.tensor([min(T - 1 - s, C - 1)], device=dev)  # tensor: no recompile per length
            logits = prefill(model, chunk, torch.arange(s, s + C, device=dev), start_of(s), last)
        tok, done = next_token(logits, done, eos_ids, pad_id, min_new_tokens > 0, sampler,
                               torch.tensor([T], dtype=torch.long, device=dev))
        out[:, 0] = tok
        self._emit(streamer, callback, 0, tok)

        input_pos = torch.tensor([T], dtype=torch.long, device=dev)
        track_eos = len(eos) > 0 and min_new_tokens < max_new_tokens
        n = 1
        for i in range(1, max_new_tokens):
            if track_eos and i % self.check_every == 0 and bool(done.all()):
                break
            tok, done = decode(model, tok, input_pos, done, eos_ids, pad_id, start_of(T + i - 1),
                               i < min_new_tokens, sampler)
            out[:, i] = tok
            input_pos += 1
            n = i + 1
            if self.step_hook is not None:
                self.step_hook()
            self._emit(streamer, callback, i, tok)
        if streamer is not None:
            streamer.end()
        new = out[:, :n]
        if track_eos:  # transformers stops at the step where the last row finished
            is_eos = torch.isin(new, eos_ids)
            if bool(is_eos.any(1).all()):
                n = int(is_eos.int().argmax(1).max()) + 1
                new = new[:, :n]
        return torch.cat([ids, new], dim=1)

    @staticmethod
    def _emit(streamer, callback, step: int, tok: torch.Tensor):
        if callback is not None:
            callback(step, tok)
        if streamer is not None:
            streamer.put(tok.cpu())

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced log-probabilities (B, T-1) fp32 of each next token: [b, t] = log p(ids[b, t+1] |
        ids[b, :t+1]). With a left-padded attention_mask, entries whose context or target is padding are 0.

        One forward from an empty cache (how a user checks a quantization or a port on their own text)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise GenerationError("score needs input_ids of shape (batch, length >= 2)")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise GenerationError(f"token ids must lie in [0, {self.config.vocab_size}), got [{lo}, {hi}]")
        T = input_ids.shape[1]
        if T > min(self.config.max_position_embeddings, self.cache_length or T):
            raise GenerationError(f"{T} tokens exceed the model's positions or the cache length")
        pad_len = self._pad_len(input_ids, attention_mask)
        logits = self.logits(input_ids, pad_len)[:, :-1].float()  # (B, T-1, V)
        target = input_ids[:, 1:].to(self.device, torch.long)
        logp = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]  # (B, T-1)
        if attention_mask is not None:
            logp = logp.masked_fill(attention_mask[:, :-1].to(self.device) == 0, 0.0)
        return logp

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, pad_len: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence logits (B, T, V) in one forward from an empty cache (for parity checks); pad_len (B,):
        each row's left padding."""
        self._bind()
        B, T = input_ids.shape
        self.model.setup_caches(B, self.cache_length or T)
        self.model.set_padding(pad_len.to(self.device) if pad_len is not None
                               else torch.zeros(B, dtype=torch.long, device=self.device))
        return self.model(input_ids.to(self.device), torch.arange(T, device=self.device))
