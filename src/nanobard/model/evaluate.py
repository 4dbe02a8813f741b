"""Scoring both tracks the same way on the shared validation text.

Method (identical for the character GPT and a BPE model):
1. Tokenize the validation text with the model's own tokenizer: ids[0..n-1].
2. Slide a window of W tokens with stride S = W // 2 over the ids. Each window scores only the
   tokens not scored by an earlier window, so every token is scored exactly once and, after the
   first window, always with at least W - S tokens of context. W is the model's context length
   (capped by ``max_window``).
3. The first token has no left context and is not scored in either track; its characters are
   left out of the character count.

Results: nats per token of the model's own tokenizer (comparable only within a track), and
**bits per character** = total NLL (nats) / characters scored / ln 2, comparable across tracks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from nanobard.config import ConfigError
from nanobard.records import Record

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nanobard.data.tokenizer import CharTokenizer
    from nanobard.model.gpt import GPT

logger = logging.getLogger(__name__)

# (B, T) ids, start -> (B, T - start, V): the logits of positions start..T-1 only (a scoring
# window needs those of the tokens it scores; the LM head of a BPE model is a fifth of its work)
LogitsFn = Callable[[torch.Tensor, int], torch.Tensor]

# Causal LMs whose head is exactly ``lm_head(decoder(ids).last_hidden_state)`` (no logit scaling or
# soft-capping in between): their logits can be computed for some positions only, with the same
# result as the model's own forward (scoring here, the training loss in hf/trainer.py).
HEAD_ON_HIDDEN_MODELS = frozenset({"llama", "gpt2", "mistral", "qwen2"})


@dataclass(frozen=True)
class Score(Record):
    """A model's score on a text: total NLL and what it was divided by."""

    model: str
    chars: int  # characters scored
    tokens: int  # tokens scored
    nll_nats: float  # total negative log-likelihood
    window: int
    stride: int
    seconds: float
    precision: str = "float32"  # what the matmuls ran in (bfloat16 autocast where native)

    @property
    def nats_per_token(self) -> float:
        return self.nll_nats / self.tokens

    @property
    def bits_per_char(self) -> float:
        return bits_per_char(self.nll_nats, self.chars)

    def to_dict(self) -> dict[str, Any]:  # the derived figures too, for a reader of the JSON
        return {
            **super().to_dict(),
            "nats_per_token": self.nats_per_token,
            "bits_per_char": self.bits_per_char,
        }


def bits_per_char(nll_nats: float, n_chars: int) -> float:
    """Total NLL in nats over a text of ``n_chars`` characters -> bits per character."""
    if n_chars <= 0:
        raise ValueError("cannot compute bits per character of an empty text")
    return nll_nats / n_chars / math.log(2)


def window_plan(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (begin, end, first_scored) over n tokens; targets first_scored..end-1 are scored,
    each exactly once, target t predicted from ids[begin:t]."""
    if window < 2 or not 1 <= stride <= window - 1:
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got {window}, {stride}")
    plan, prev_end, begin = [], 1, 0
    while prev_end < n:
        end = min(begin + window, n)
        plan.append((begin, end, prev_end))
        prev_end = end
        begin += stride
    return plan


@torch.no_grad()
def sliding_nll(
    logits_fn: LogitsFn,
    ids: list[int],
    window: int,
    stride: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "score",
) -> tuple[float, int]:
    """Total NLL (nats) and number of tokens scored, by the sliding-window plan above."""
    if len(ids) < 2:  # the first token has nothing before it to be predicted from
        raise ConfigError(
            f"the text to score is {len(ids)} token{'s' * (len(ids) != 1)} long; bits per "
            "character need at least two (score more characters)"
        )
    data = torch.tensor(ids, dtype=torch.long)
    plan = window_plan(len(ids), window, stride)
    total, count = 0.0, 0
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for b, e, f in plan:  # windows of the same length are batched together
        groups.setdefault(e - b, []).append((b, e, f))
    bar = tqdm(total=len(plan), disable=not progress, desc=desc, unit="window", leave=False)
    for wins in groups.values():
        for i in range(0, len(wins), batch_size):
            chunk = wins[i : i + batch_size]
            x = torch.stack([data[b:e] for b, e, _ in chunk]).to(device)  # (B, L)
            start = min(f - b - 1 for b, _, f in chunk)  # the first position any row scores
            # (B, L-1-start, V): position start + j predicts x[:, start + j + 1]
            logits = logits_fn(x[:, :-1], start).float()
            nll = F.cross_entropy(
                logits.flatten(0, 1), x[:, start + 1 :].flatten(), reduction="none"
            ).view(x.size(0), -1)
            for row, (b, _, f) in enumerate(chunk):
                scored = nll[row, f - b - 1 - start :]  # targets f..e-1
                total += scored.sum().item()
                count += scored.numel()
            bar.update(len(chunk))
    bar.close()
    assert count == len(ids) - 1, f"scored {count} of {len(ids) - 1} tokens"
    return total, count


def score_scratch(
    model: GPT, tokenizer: CharTokenizer, text: str, name: str = "scratch", progress: bool = False
) -> Score:
    """Bits per character of a from-scratch GPT on ``text``."""
    if not model.config.causal:
        logger.warning("%s attends to the characters it predicts (--no-causal): its bits per "
                       "character are no measure of prediction", name)  # fmt: skip
    t0 = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(text)
    window = model.config.block_size + 1  # block_size inputs predict block_size targets
    stride = max(1, window // 2)
    nll, n = sliding_nll(
        lambda x, start: model(x).logits[:, start:],
        ids,
        window,
        stride,
        32,
        device,
        progress,
        f"score {name}",
    )
    return Score(
        name,
        len(text) - len(tokenizer.decode(ids[:1])),
        n,
        nll,
        window,
        stride,
        time.perf_counter() - t0,
    )


def score_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    name: str = "pretrained",
    max_window: int = 256,
    batch_size: int = 4,
    progress: bool = False,
    precision: torch.dtype = torch.float32,
) -> Score:
    """Bits per character of a Hugging Face causal LM on ``text`` (its own tokenizer, no special
    tokens). ``precision`` bfloat16 runs the matmuls under autocast (hardware.scoring_dtype picks
    it where it is native: ~2.4x faster for SmolLM2 on an AMX CPU, 0.0002 bits/char apart); the
    LM head runs only on the positions a window scores."""
    t0 = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # the context length, by its Llama-style name or GPT-2's (absent or None: the next one)
    ctx: int = getattr(model.config, "max_position_embeddings", 0) or getattr(
        model.config, "n_positions", 1024
    )
    window = min(max_window, ctx) + 1
    stride = max(1, window // 2)
    first_chars = len(tokenizer.decode(ids[:1]))
    with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
        nll, n = sliding_nll(
            _logits_from(model),
            ids,
            window,
            stride,
            batch_size,
            device,
            progress,
            f"score {name}",
        )
    return Score(
        name,
        len(text) - first_chars,
        n,
        nll,
        window,
        stride,
        time.perf_counter() - t0,
        # autocast's, or the weights' own when they are not float32 (a bfloat16 folder)
        str(
            precision if precision != torch.float32 else next(model.parameters()).dtype
        ).removeprefix("torch."),
    )


def _logits_from(model: PreTrainedModel) -> LogitsFn:
    """The logits of positions ``start`` onwards: the head on those hidden states only where
    that is exactly the model's own output (HEAD_ON_HIDDEN_MODELS), else sliced from its full
    forward."""
    if getattr(model.config, "model_type", None) not in HEAD_ON_HIDDEN_MODELS:
        return lambda x, start: model(input_ids=x).logits[:, start:]
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    assert head is not None, "a causal LM has an output embedding"
    return lambda x, start: head(decoder(input_ids=x).last_hidden_state[:, start:])
