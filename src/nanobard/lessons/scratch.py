"""Measured lessons for the learner notebooks: each a function that runs a small experiment and
returns a Record (``to_dict``/``save``), with a figure for each in ``lessons/figures.py``.

(The transfer-learning lessons, ``crossover`` and ``forgetting``, are in transfer.py.)
- ``lr_sweep``: a handful of short runs at different learning rates.
- ``encoder_vs_decoder``: the same model with and without the causal mask, and a toy cloze.
- ``overfit_one_batch``: the first debugging check of any training loop.
- ``attention_on_characters``: where a BPE model and a character model look, on the same
  characters.

Losses are in nats per character (the from-scratch model's token); scores across models are in
bits per character on the same text (evaluate.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from nanobard.config import (
    ModelConfig,
    TrainConfig,
    with_overrides,
)
from nanobard.data.corpus import CorpusSplit, get_batch
from nanobard.data.tokens import TokenCorpus, tokens_from_split
from nanobard.hardware import pick_device
from nanobard.interp.attention import attention_maps
from nanobard.interp.lens import make_lens
from nanobard.model.gpt import GPT
from nanobard.model.sampling import STRATEGIES, ScratchDecoder, TextGenerator
from nanobard.records import Record
from nanobard.rundir import RunDir
from nanobard.train.loop import NonFiniteLossError, train
from nanobard.train.optim import make_optimizer
from nanobard.train.step import estimate_loss, train_step

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nanobard.data.tokenizer import CharTokenizer

logger = logging.getLogger(__name__)

Data = CorpusSplit | TokenCorpus

# --------------------------------------------------------------------------------------------
# 3. learning-rate sweep


@dataclass
class SweepRun(Record):
    lr: float
    best_val_loss: float | None  # nats/char; None when it diverged before its first evaluation
    diverged: bool  # the loss became NaN or infinite
    steps: list[int] = field(default_factory=list)  # the evaluation curve
    val_loss: list[float] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)  # as the metrics rows have it


@dataclass
class SweepResult(Record):
    steps: int
    runs: list[SweepRun] = field(default_factory=list)

    @property
    def best_lr(self) -> float | None:
        done = [
            (loss, r.lr)
            for r in self.runs
            if (loss := r.best_val_loss) is not None and not r.diverged
        ]
        return min(done, key=lambda d: d[0])[1] if done else None


def lr_sweep(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: Data,
    lrs: Sequence[float],
    *,
    steps: int,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> SweepResult:
    """Train the same model for ``steps`` steps at each learning rate (same seed, same batches) and
    keep each run's validation curve (10 evaluations) and best validation loss. ``min_lr`` keeps
    its ratio to ``lr``, warmup is capped at a tenth of the steps, early stopping is off. A run
    whose loss becomes NaN is kept as diverged. Run folders go to ``out_dir`` (default: a temporary
    folder)."""
    result = SweepResult(steps)
    with tempfile.TemporaryDirectory(prefix="nanobard-sweep-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        for lr in lrs:
            cfg = dataclasses.replace(
                train_cfg,
                lr=lr,
                min_lr=lr * train_cfg.min_lr / train_cfg.lr,
                max_steps=steps,
                epochs=None,
                max_time=None,
                warmup_steps=min(train_cfg.warmup_steps, steps // 10),
                eval_interval=max(1, steps // 10),
                patience=None,
                target_loss=None,
            )
            run_dir = root / f"lr_{lr:g}"
            try:
                rows, diverged = (
                    train(model_cfg, cfg, data, run_dir, progress=progress).history,
                    False,
                )
            except NonFiniteLossError:
                rows, diverged = RunDir(run_dir).read_metrics(), True
            vals = [r.val_loss for r in rows]
            result.runs.append(
                SweepRun(
                    lr,
                    min(vals) if vals else None,
                    diverged,
                    [r.step for r in rows],
                    vals,
                    [r.train_loss for r in rows],
                )
            )
            logger.info(
                "lr %g: best val %s%s",
                lr,
                vals and f"{min(vals):.4f}",
                " (diverged)" if diverged else "",
            )
    return result


# --------------------------------------------------------------------------------------------
# a minimal training loop (the lessons below need the per-step numbers, not checkpoints)

Batch = tuple[torch.Tensor, torch.Tensor]


def grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient (after ``backward``): where gradients vanish or
    explode."""
    return {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}


@dataclass
class Fit:
    losses: list[float]  # training loss per step, nats/char
    grad_norms: list[float]  # total gradient L2 norm per step, before clipping
    first_grad_norms: dict[str, float]  # per parameter, at the first step


def _fit(
    model: GPT, cfg: TrainConfig, steps: int, next_batch: Callable[[torch.Generator], Batch]
) -> Fit:
    """``steps`` optimizer steps (``train_step``, the training loop's own) on
    ``next_batch(generator)``: the configured optimizer, a constant ``cfg.lr`` after a linear
    warmup of at most a tenth of the steps, gradient clipping; the gradient norms are recorded
    before clipping."""
    device = next(model.parameters()).device
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    warmup = min(cfg.warmup_steps, steps // 10)
    fit = Fit([], [], {})

    def record_norms(m: GPT) -> None:
        fit.first_grad_norms = fit.first_grad_norms or grad_norms(m)
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        fit.grad_norms.append(torch.nn.utils.get_total_norm(grads).item())

    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / (warmup + 1))
        loss = train_step(model, opt, [next_batch(gen)], cfg, device, after_backward=record_norms)
        fit.losses.append(loss)
    model.eval()
    return fit


def _new_model(model_cfg: ModelConfig, cfg: TrainConfig, vocab_size: int) -> GPT:
    torch.manual_seed(cfg.seed)
    return GPT(with_overrides(model_cfg, {"vocab_size": vocab_size})).to(pick_device(cfg.device))


def _corpus(data: Data) -> TokenCorpus:
    return data if isinstance(data, TokenCorpus) else tokens_from_split(data)


# --------------------------------------------------------------------------------------------
# 4. decoder (causal mask) vs encoder (no mask)

TINY_MODEL = ModelConfig(block_size=64, n_layer=2, n_head=4, n_embd=128)
TINY_TRAIN = TrainConfig(
    batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=20, eval_iters=8, dtype="float32"
)


@dataclass
class MaskRun(Record):
    causal: bool
    train_loss: float  # nats/char on fixed training batches, computed the way training sees them
    # the same on validation batches (without the mask the model sees the answers here too)
    val_loss: float
    # validation, each character predicted from the characters before it only
    left_to_right_loss: float
    sample: str  # greedy continuation of the prompt, generated left to right
    losses: list[float] = field(default_factory=list)  # training loss per step


@dataclass
class Cloze(Record):
    """One hidden character of each of ``blanks`` validation windows, guessed three ways."""

    text: str  # the first window, the hidden character shown as [_]
    answer: str
    left_guess: str  # the causal model from the characters before the blank only
    # the causal model scoring every candidate with the characters after it too
    both_sides_guess: str
    no_mask_guess: str  # the no-mask model, with a wrong character written in the blank
    left_accuracy: float  # share of the blanks guessed right
    both_sides_accuracy: float
    no_mask_accuracy: float
    # share of the blanks where the no-mask model "guessed" the character written there
    no_mask_copy_rate: float
    blanks: int


@dataclass
class MaskLesson(Record):
    steps: int
    prompt: str
    causal: MaskRun
    no_mask: MaskRun
    cloze: Cloze


@torch.no_grad()
def left_to_right_loss(
    model: GPT, ids: torch.Tensor | np.ndarray, block_size: int, windows: int = 16, seed: int = 0
) -> float:
    """Mean loss (nats/char) when each character is predicted from the characters before it only,
    as when generating: position t is run on ``x[:, :t+1]``. Equals the ordinary loss of a causal
    model; for a model trained without the mask it shows what it learned without peeking."""
    x, y = get_batch(ids, block_size, windows, torch.Generator().manual_seed(seed))  # (W, T)
    x, y = x.to(next(model.parameters()).device), y.to(next(model.parameters()).device)
    nll = [
        F.cross_entropy(model(x[:, : t + 1]).logits[:, -1].float(), y[:, t])
        for t in range(x.size(1))
    ]
    return torch.stack(nll).mean().item()


def _mask_run(
    model: GPT, corpus: TokenCorpus, cfg: TrainConfig, fit: Fit, prompt: str, sample_chars: int
) -> MaskRun:
    block, device = model.config.block_size, next(model.parameters()).device
    ev = functools.partial(
        estimate_loss,
        block_size=block,
        batch_size=cfg.batch_size,
        iters=cfg.eval_iters,
        seed=cfg.seed + 1,
        device=device,
        dtype=cfg.dtype,
    )
    tok = corpus.tokenizer
    gen = TextGenerator("lesson", tok.encode, tok.decode, lambda: ScratchDecoder(model))
    return MaskRun(
        model.config.causal,
        ev(model, corpus.train),
        ev(model, corpus.val),
        left_to_right_loss(model, corpus.val, block, seed=cfg.seed),
        gen.complete(prompt, sample_chars, STRATEGIES["greedy"]),
        fit.losses,
    )


def encoder_vs_decoder(
    data: Data,
    *,
    steps: int = 300,
    model_cfg: ModelConfig = TINY_MODEL,
    train_cfg: TrainConfig = TINY_TRAIN,
    prompt: str | None = None,
    sample_chars: int = 80,
    blanks: int = 256,
) -> MaskLesson:
    """Train the same small model for ``steps`` steps with the causal mask (a decoder, GPT) and
    without it (``causal=False``: every position also sees the characters after it, the answers).

    Without the mask the training loss falls toward 0 once the model finds the shortcut: position
    t predicts character t+1 by copying it from position t+1. The validation loss, computed the
    same way, is as low: it peeks there too. Predicting from the past only
    (``left_to_right_loss``), as generation must, shows it learned no language: its greedy sample
    is garbage. (With the default model the shortcut appears after ~100-250 steps.)

    Encoders (no mask) are for filling in a blank from both sides. A real one (BERT) is trained
    with a mask token: some inputs are replaced by [MASK] and the model predicts what was there, so
    it can never copy the answer (such a model needs far more steps than fit here: only the hidden
    positions teach it, and it must first learn to attend to its neighbours). This toy shows the two
    halves of that on ``blanks`` hidden validation characters: the no-mask model trained without a
    mask token cannot fill a blank (it copies whatever is written there), and context from both
    sides predicts a blank better than the left side alone (the causal model scoring each
    candidate character with the text after the blank, vs its next-character guess)."""
    corpus = _corpus(data)
    prompt = prompt if prompt is not None else corpus.val_text(16)
    runs, models = {}, {}
    for causal in (True, False):
        model = _new_model(
            dataclasses.replace(model_cfg, causal=causal), train_cfg, corpus.tokenizer.vocab_size
        )
        fit = _fit(
            model,
            train_cfg,
            steps,
            lambda g: get_batch(corpus.train, model_cfg.block_size, train_cfg.batch_size, g),
        )
        runs[causal], models[causal] = (
            _mask_run(model, corpus, train_cfg, fit, prompt, sample_chars),
            model,
        )
        logger.info(
            "causal=%s: train loss %.3f, left-to-right %.3f",
            causal,
            runs[causal].train_loss,
            runs[causal].left_to_right_loss,
        )
    cloze = _cloze(models[True], models[False], corpus, blanks, train_cfg.seed)
    return MaskLesson(steps, prompt, runs[True], runs[False], cloze)


@torch.no_grad()
def _cloze(decoder: GPT, no_mask: GPT, corpus: TokenCorpus, blanks: int, seed: int) -> Cloze:
    """Hide one character (not the first or last) of each of ``blanks`` validation windows; guess
    it."""
    block, vocab = decoder.config.block_size, corpus.tokenizer.vocab_size
    device = next(decoder.parameters()).device
    g = torch.Generator().manual_seed(seed + 2)
    x, _ = get_batch(corpus.val, block, blanks, g)  # (N, T)
    x = x.to(device)
    j = torch.randint(1, block - 1, (blanks,), generator=g).to(device)  # the blank of each window
    rows = torch.arange(blanks, device=device)
    answer = x[rows, j]
    left = decoder(x).logits[rows, j - 1].argmax(-1)  # position j-1 predicts character j
    both = torch.empty_like(answer)
    cand = torch.arange(vocab, device=device)
    # score the window with each candidate in the blank: log P(c | left) + log P(right | left, c)
    for n in range(blanks):
        seqs = x[n].repeat(vocab, 1)  # (V, T)
        seqs[:, j[n]] = cand
        logp = F.log_softmax(decoder(seqs[:, :-1]).logits.float(), -1)  # (V, T-1, V)
        scored = logp[:, j[n] - 1 :].gather(-1, seqs[:, j[n] :, None]).sum((1, 2))  # (V,)
        both[n] = scored.argmax()
    # never the answer
    wrong = (answer + torch.randint(1, vocab, (blanks,), generator=g).to(device)) % vocab
    copied = no_mask(x.index_put((rows, j), wrong)).logits[rows, j - 1].argmax(-1)
    d, k = corpus.tokenizer.decode, int(j[0])
    acc = lambda guess: (guess == answer).float().mean().item()  # noqa: E731
    return Cloze(
        d(x[0, :k].tolist()) + "[_]" + d(x[0, k + 1 :].tolist()),
        d([int(answer[0])]),
        d([int(left[0])]),
        d([int(both[0])]),
        d([int(copied[0])]),
        acc(left),
        acc(both),
        acc(copied),
        (copied == wrong).float().mean().item(),
        blanks,
    )


# --------------------------------------------------------------------------------------------
# 5. debugging: overfit one batch


@dataclass
class OverfitResult(Record):
    """Training on one fixed batch: a correct model and loop drive its loss toward 0."""

    losses: list[float]  # nats/char per step, on the same batch
    grad_norms: list[float]  # total gradient L2 norm per step, before clipping
    first_grad_norms: dict[str, float]  # per parameter, at the first step

    @property
    def reduction(self) -> float:
        """First loss / last loss: how many times lower the loss got."""
        return self.losses[0] / max(self.losses[-1], 1e-12)


def overfit_one_batch(
    model_cfg: ModelConfig, train_cfg: TrainConfig, data: Data, steps: int = 200
) -> OverfitResult:
    """The first check of a new model or training loop: ``steps`` steps on one fixed training batch
    (dropout off). The loss should fall toward 0; if it does not, the bug is in the model, the loss
    or the loop, not in the data or the hyperparameters. The gradient norm per step and per
    parameter show where gradients vanish (a norm of 0: a detached or unused parameter) or
    explode."""
    corpus = _corpus(data)
    model = _new_model(
        dataclasses.replace(model_cfg, dropout=0.0, attn_dropout=0.0),
        train_cfg,
        corpus.tokenizer.vocab_size,
    )
    batch = get_batch(
        corpus.train,
        model_cfg.block_size,
        train_cfg.batch_size,
        torch.Generator().manual_seed(train_cfg.seed),
    )
    fit = _fit(model, train_cfg, steps, lambda g: batch)
    logger.info("one batch: loss %.3f -> %.3f in %d steps", fit.losses[0], fit.losses[-1], steps)
    return OverfitResult(fit.losses, fit.grad_norms, fit.first_grad_norms)


# --------------------------------------------------------------------------------------------
# 6. where each model looks, on the same characters


@dataclass
class CharAttention(Record):
    """Both models' attention, mean over layers and heads, as distributions over the same previous
    characters. Compared where both predict the same character from the same context: the first
    character of each BPE token (the BPE model predicts the token from the tokens before it, the
    character model the character from the characters before it). A token's weight is spread evenly
    over its characters. The first token's characters are left out of both (the pretrained model's
    "attention sink" holds most of its weight there), and each distribution renormalised."""

    text: str
    token_starts: list[int]  # the character where each BPE token starts
    targets: list[int]  # character index of each compared prediction
    context_start: int  # distributions cover characters context_start .. target-1
    scratch: list[list[float]]  # per target, the character model's distribution over the context
    pretrained: list[list[float]]  # the BPE model's, mapped to characters
    # per target, sum of min(scratch, pretrained): 1 = the same distribution, 0 = disjoint
    overlap: list[float]
    # per target, overlap of the character model with a uniform spread (a reference)
    uniform_overlap: list[float]

    @property
    def mean_overlap(self) -> float:
        return sum(self.overlap) / max(1, len(self.overlap))

    @property
    def mean_uniform_overlap(self) -> float:
        return sum(self.uniform_overlap) / max(1, len(self.uniform_overlap))


def attention_on_characters(
    scratch_model: GPT,
    scratch_tokenizer: CharTokenizer,
    hf_model: PreTrainedModel,
    hf_tokenizer: PreTrainedTokenizerBase,
    text: str,
) -> CharAttention:
    """Map the pretrained (BPE) model's attention onto characters with the fast tokenizer's offsets
    and compare it with the character model's attention (see CharAttention). ``text`` is cut to the
    character model's context; the HF model must be loaded with ``attn="eager"``. Needs 3+
    tokens."""
    text = text[: scratch_model.config.block_size]
    chars = attention_maps(make_lens(scratch_model, scratch_tokenizer), text)
    char_w = chars.weights.mean((0, 1))  # [char_q, char_k]
    offsets = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [a for a, _ in offsets["offset_mapping"]]
    bpe = attention_maps(make_lens(hf_model, hf_tokenizer), text, max_tokens=len(starts))
    tok_w = bpe.weights.mean((0, 1))  # [tok_q, tok_k]
    if len(starts) < 3:
        raise ValueError(f"the text is only {len(starts)} tokens; give a longer text")
    owner = torch.zeros(len(text), dtype=torch.long)  # the token each character belongs to
    for m, s in enumerate(starts):
        owner[s:] = m
    span = torch.bincount(owner, minlength=len(starts)).clamp_min(1).float()  # characters per token
    ctx0 = starts[1]
    res = CharAttention(text, starts, [], ctx0, [], [], [], [])
    for m in range(2, len(starts)):
        # the first character of token m: the character model predicts it at query c - 1
        c = starts[m]
        if c <= starts[m - 1]:
            continue  # a token inside one character (a split multi-byte character)
        p = char_w[c - 1, ctx0:c]
        q = tok_w[m - 1, owner[ctx0:c]] / span[owner[ctx0:c]]
        p, q = p / p.sum().clamp_min(1e-12), q / q.sum().clamp_min(1e-12)
        res.targets.append(c)
        res.scratch.append(p.tolist())
        res.pretrained.append(q.tolist())
        res.overlap.append(torch.minimum(p, q).sum().item())
        res.uniform_overlap.append(torch.minimum(p, torch.full_like(p, 1 / len(p))).sum().item())
    return res
