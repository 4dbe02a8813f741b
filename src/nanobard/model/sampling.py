"""Decoding for both tracks: greedy, temperature, top-k and top-p (nucleus) sampling, seeded and
streamed token by token.

A model is wrapped in a *decoder* that turns "here is the prompt / here is one more token" into
next-token logits, reusing its key/value cache. The sampling code below knows nothing else about
the model, so the from-scratch GPT and a Hugging Face model decode with the same code.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch.nn import functional as F

from nanobard.config import ConfigError
from nanobard.hardware import decode_attention
from nanobard.model.gpt import GPT, DecodeLayer, KVCache

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Encode = Callable[[str], list[int]]  # text -> token ids
Decode = Callable[[list[int]], str]  # token ids -> text


MIN_TEMPERATURE = 0.01  # the lowest above 0 (greedy) that leaves a distribution to sample


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 disable those filters."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / 1e-39 overflow float32 to inf
            raise ConfigError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, "
                f"got {self.temperature:g}"
            )
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


# The decoding settings every comparison in nanobard uses (the seed's three, plus nucleus).
STRATEGIES: dict[str, SamplingConfig] = {
    "greedy": SamplingConfig(temperature=0.0),
    "top_k": SamplingConfig(temperature=1.0, top_k=40),
    "temperature": SamplingConfig(temperature=0.8),
    "top_p": SamplingConfig(temperature=1.0, top_p=0.9),
}


class Decoder(Protocol):
    def start(self, prompt_ids: list[int]) -> torch.Tensor:
        """Feed the prompt; return logits (V,) for the next token."""

    def advance(self, token: int) -> torch.Tensor:
        """Feed one sampled token; return logits (V,) for the next."""


class BatchDecoder(Protocol):
    """Several continuations in one batch: each pass reads the weights once for all of them
    (decoding on a CPU is bound by reading the weights)."""

    def start_batch(self, prompts: list[list[int]]) -> torch.Tensor:
        """Feed each row its prompt (rows of any lengths); return logits (n, V) for each row's
        next token."""

    def advance_batch(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its sampled token; return logits (n, V) for the next."""


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability
    mass reaches top_p (the most likely token is always kept). logits: (V,)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[-1]
        # one masked op (boolean-index assignment costs a nonzero and a scatter per token)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    else:
        logits = logits.clone()
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        # the mass before this token is already enough
        drop = cum - F.softmax(sorted_logits, dim=-1) >= top_p
        logits[order[drop]] = float("-inf")
    return logits


def sampling_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution ``pick_token`` draws from, (V,) float32: softmax of logits / temperature
    inside the top-k and top-p sets, 0 outside them; greedy (temperature 0) puts all the mass on
    the most likely token."""
    logits = logits.float()
    if cfg.temperature == 0:
        return F.one_hot(torch.argmax(logits), logits.size(-1)).float()
    scaled = logits if cfg.temperature == 1.0 else logits / cfg.temperature  # x / 1 is x
    return F.softmax(filter_logits(scaled, cfg.top_k, cfg.top_p), dim=-1)


def pick_token(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> int:
    """One next token from logits (V,)."""
    logits = logits.float().cpu()
    if cfg.temperature == 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(sampling_probs(logits, cfg), 1, generator=generator))


def generate_ids(
    decoder: Decoder,
    prompt_ids: list[int],
    max_new_tokens: int,
    cfg: SamplingConfig,
    stop_ids: set[int] | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, one at a time (stops early on a stop id)."""
    return TokenStream(decoder, prompt_ids, max_new_tokens, cfg, stop_ids)


class TokenStream:
    """The iterator ``generate_ids`` returns. Each ``next()`` is one complete step (a forward
    pass under ``torch.inference_mode`` and a pick), holding no torch state between steps, so a
    server may run successive steps on whichever thread is free. The last token needs no pass of
    its own: ``max_new_tokens`` tokens cost ``max_new_tokens`` passes."""

    def __init__(
        self,
        decoder: Decoder,
        prompt_ids: list[int],
        max_new_tokens: int,
        cfg: SamplingConfig,
        stop_ids: set[int] | None = None,
    ):
        self.decoder, self.prompt_ids, self.cfg = decoder, prompt_ids, cfg
        self.left, self.stop_ids = max_new_tokens, stop_ids or set()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.last: int | None = None

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self.left <= 0 or self.last in self.stop_ids:
            raise StopIteration
        with torch.inference_mode():
            if self.last is None:
                logits = self.decoder.start(self.prompt_ids)
            else:
                logits = self.decoder.advance(self.last)
            self.last = pick_token(logits, self.cfg, self.generator)
        self.left -= 1
        return self.last


def stream_text(decode: Decode, ids: Iterator[int]) -> Iterator[str]:
    """Turn a token stream into text pieces; decodes the whole tail so multi-byte BPE pieces
    appear only once complete."""
    out: list[int] = []
    shown = ""
    for i in ids:
        out.append(i)
        text = decode(out)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            continue
        yield text[len(shown) :]
        shown = text


class ScratchDecoder:
    """KV-cached decoding for the from-scratch GPT.

    Identical to re-running the full context while it fits in ``block_size``; once the context is
    full, the cache restarts from the most recent ``block_size // 2`` tokens (a sliding window
    with absolute positions cannot slide a cache), so later tokens see between half and a full
    window of context. ``use_cache=False`` re-runs the last ``block_size`` tokens every step.

    ``dtype`` runs a copy of the model in that precision (e.g. ``torch.bfloat16``, half the memory
    traffic per token: single-token decoding on a CPU is bound by reading the weights); on a CPU
    the cache and attention stay float32. Samples then differ slightly from a float32 run.
    """

    def __init__(self, model: GPT, use_cache: bool = True, dtype: torch.dtype | None = None):
        p = next(model.parameters())
        if dtype == torch.int8:  # weight-only int8 (quantize.py), CPU only
            from nanobard.model.quantize import quantize_int8

            model = quantize_int8(model)
        elif dtype is not None and dtype != p.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model, self.use_cache = model, use_cache
        self.device = p.device
        self.cache_dtype = torch.float32 if p.device.type == "cpu" else None
        self.block = model.config.block_size
        self.ids: list[int] = []
        self.cache: list[KVCache] | None = None
        self.plan: list[DecodeLayer] | None = None

    def _run(self, ids: list[int], cache: list[KVCache] | None) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with decode_attention(self.device):
            return self.model(x, kv_cache=cache).logits[0, -1]

    def start(self, prompt_ids: list[int]) -> torch.Tensor:
        if not prompt_ids:
            raise ConfigError("the prompt is empty; give at least one character")
        self.model.eval()
        self.ids = list(prompt_ids)
        return self._refill() if self.use_cache else self._run(self.ids[-self.block :], None)

    def _refill(self) -> torch.Tensor:
        self.cache = self.model.new_cache(1, dtype=self.cache_dtype)
        self.plan = self.model.decode_plan()  # the weights as they are for this generation
        window = (
            self.ids[-self.block :]
            if len(self.ids) <= self.block
            else self.ids[-(self.block // 2) :]
        )
        return self._run(window, self.cache)

    def advance(self, token: int) -> torch.Tensor:
        self.ids.append(token)
        if not self.use_cache:
            return self._run(self.ids[-self.block :], None)
        assert self.cache is not None, "start() fills the cache before the first advance()"
        if self.cache[0].pos >= self.block:
            return self._refill()
        with decode_attention(self.device):
            return self.model.decode_step(token, self.cache, self.plan)


class HFDecoder:
    """KV-cached decoding for a Hugging Face causal LM (``past_key_values``)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.device = next(model.parameters()).device
        # the context length, by its Llama-style name or GPT-2's (absent or None: the next one)
        self.max_len: int = getattr(model.config, "max_position_embeddings", 0) or getattr(
            model.config, "n_positions", 1024
        )
        self.past = None
        self.length = 0
        self.pad_mask: torch.Tensor | None = None  # (n, past + L) for a batch of padded rows
        # transformers >= 5.2x names the KV cache `cache`; earlier versions `past_key_values`
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def _run(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        with decode_attention(self.device):
            out = self.model(input_ids=x, use_cache=True, **{self.cache_kw: self.past})
        self.past = getattr(out, self.cache_kw)
        self.length += len(ids)
        return out.logits[0, -1]

    def start(self, prompt_ids: list[int]) -> torch.Tensor:
        if not prompt_ids:
            raise ConfigError("the prompt is empty; give at least one character")
        self.model.eval()
        self.past, self.length = None, 0
        self.ids = list(prompt_ids)[-self.max_len :]
        return self._run(self.ids)

    def advance(self, token: int) -> torch.Tensor:
        self.ids.append(token)
        if self.length >= self.max_len:  # context full: restart from the last half
            self.past, self.length = None, 0
            return self._run(self.ids[-(self.max_len // 2) :])
        return self._run([token])

    # BatchDecoder: prompts of unequal length are left-padded, the padding masked out and each
    # row's positions counted from its own first token

    def _run_rows(self, rows: list[list[int]]) -> torch.Tensor:
        x = torch.tensor(rows, dtype=torch.long, device=self.device)  # (n, L)
        kw: dict[str, torch.Tensor] = {}
        if self.pad_mask is not None:  # (n, past + L): 0 over each row's left padding
            if self.past is not None:
                self.pad_mask = torch.cat([self.pad_mask, torch.ones_like(x)], 1)
            positions = self.pad_mask.cumsum(1)[:, -x.size(1) :] - 1  # (n, L)
            kw = {"attention_mask": self.pad_mask, "position_ids": positions.clamp(min=0)}
        with decode_attention(self.device):
            out = self.model(input_ids=x, use_cache=True, **{self.cache_kw: self.past}, **kw)
        self.past = getattr(out, self.cache_kw)
        self.length += x.size(1)
        return out.logits[:, -1]  # (n, V)

    def _prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        self.past, self.length = None, 0
        width = max(len(p) for p in prompts)
        self.pad_mask = None  # rows of one length need none (one prompt, several strategies)
        if any(len(p) < width for p in prompts):
            self.pad_mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
            )
        return self._run_rows([[0] * (width - len(p)) + p for p in prompts])

    def start_batch(self, prompts: list[list[int]]) -> torch.Tensor:
        if not prompts or not all(prompts):
            raise ConfigError("the prompt is empty; give at least one character")
        self.model.eval()
        self.rows = [list(p)[-self.max_len :] for p in prompts]
        return self._prefill(self.rows)

    def advance_batch(self, tokens: list[int]) -> torch.Tensor:
        for row, token in zip(self.rows, tokens, strict=True):
            row.append(token)
        if self.length >= self.max_len:  # context full: every row restarts from its last half
            return self._prefill([row[-(self.max_len // 2) :] for row in self.rows])
        return self._run_rows([[t] for t in tokens])


def generate_text(
    decoder: Decoder,
    encode: Encode,
    decode: Decode,
    prompt: str,
    max_new_tokens: int,
    cfg: SamplingConfig,
    stop_ids: set[int] | None = None,
) -> Iterator[str]:
    """Encode ``prompt``, decode ``max_new_tokens`` tokens and yield the new text as it comes."""
    ids = generate_ids(decoder, encode(prompt), max_new_tokens, cfg, stop_ids)
    return stream_text(decode, ids)


@dataclass
class TextGenerator:
    """A model with its tokenizer, ready to stream text with any SamplingConfig."""

    name: str
    encode: Encode
    decode: Decode
    make_decoder: Callable[[], Decoder]
    stop_ids: set[int] | None = None
    make_batch_decoder: Callable[[], BatchDecoder] | None = None  # for ``complete_many``

    def stream(self, prompt: str, max_new_tokens: int, cfg: SamplingConfig) -> Iterator[str]:
        return generate_text(
            self.make_decoder(),
            self.encode,
            self.decode,
            prompt,
            max_new_tokens,
            cfg,
            self.stop_ids,
        )

    def complete(self, prompt: str, max_new_tokens: int, cfg: SamplingConfig) -> str:
        return "".join(self.stream(prompt, max_new_tokens, cfg))


def complete_many(
    gen: TextGenerator, rows: Sequence[tuple[str, SamplingConfig]], max_new_tokens: int
) -> list[str]:
    """One continuation per (prompt, config) row, each what ``gen.complete(prompt, n, cfg)``
    gives (its own seeded generator, the same picks; in bfloat16 a batch's round-off differs from
    one row's, which can flip a near tie; past the context every row restarts at once, where
    rows of one prompt restart as one by one), decoded together in one batch where the model has
    a ``BatchDecoder``. SmolLM2-135M in bfloat16 on a 2-core AMX CPU: a decoding pass takes
    ~71 ms for 3 rows and ~76 ms for 9, so the study's 3 prompts x 3 strategies decode in one
    batch, not one per prompt."""
    if gen.make_batch_decoder is None or len(rows) < 2 or max_new_tokens < 1:
        return [gen.complete(prompt, max_new_tokens, c) for prompt, c in rows]
    prompts, stop = [gen.encode(prompt) for prompt, _ in rows], gen.stop_ids or set()
    dec = gen.make_batch_decoder()
    cfgs = [c for _, c in rows]
    generators = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    out: list[list[int]] = [[] for _ in cfgs]
    with torch.inference_mode():
        logits = dec.start_batch(prompts)
        for step in range(max_new_tokens):
            for row, (cfg, g) in enumerate(zip(cfgs, generators, strict=True)):
                if not out[row] or out[row][-1] not in stop:  # a stopped row picks no more
                    out[row].append(pick_token(logits[row], cfg, g))
            if step == max_new_tokens - 1 or all(o[-1] in stop for o in out):
                break
            logits = dec.advance_batch([o[-1] for o in out])
    return ["".join(stream_text(gen.decode, iter(o))) for o in out]
