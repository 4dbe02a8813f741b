"""Fine-tune a pretrained causal LM on the corpus with the Hugging Face ``Trainer``, and measure it
before and after on the same validation text as the from-scratch track.

The model's tokenizer cuts the (character-level) training split into non-overlapping blocks of
``block_size`` tokens. The Trainer provides AdamW, warmup + cosine decay, gradient accumulation
and clipping, periodic evaluation, early stopping, keeping the best model and resuming from its
last checkpoint. With ``lora_r > 0`` only LoRA adapters train (peft); they are merged into the
weights before saving, so ``model_hf_finetuned/`` loads with plain ``transformers``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanobard.config import ConfigError
from nanobard.data import CorpusSplit
from nanobard.evaluate import Score, score_hf
from nanobard.hardware import pick_device, resolve_precision
from nanobard.hf_trainer import TimeBudget, metrics_callback, trainer_class
from nanobard.pretrained import Pretrained, hf_generator, load_pretrained
from nanobard.sampling import STRATEGIES
from nanobard.tokens import TokenCorpus

logger = logging.getLogger(__name__)

FINETUNED_NAME = "model_hf_finetuned"
BEFORE_NAME = "finetune_before.json"
METRICS_HF_NAME = "metrics_hf.jsonl"
PROMPTS = ("ROMEO:\n", "To be, or not to be", "KING HENRY:\nNow, my lords,")


@dataclass(frozen=True)
class FinetuneConfig:
    pretrained: str = "auto"
    block_size: int = 128  # tokens per training example
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int | None = 60  # optimizer steps; the CPU default finishes in well under 10 minutes
    epochs: float | None = None  # passes over the tokenized training text (the seed uses 3)
    max_time: float | None = None  # seconds; alone: the step count is sized to fit it; with steps: a cap
    lr: float = 1e-4
    warmup_steps: int = 6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 20
    eval_blocks: int = 16  # validation blocks averaged for the periodic val loss
    patience: int | None = 3
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    precision: str = "auto"  # float32, bfloat16 (autocast), or auto: bfloat16 where it is native (hardware.py)
    seed: int = 1337
    train_chars: int | None = None  # use only the first N characters of the training split
    score_chars: int | None = 20_000  # bits/char on the first N validation characters (None = all)
    sample_tokens: int = 80
    device: str = "auto"
    prompts: tuple[str, ...] = PROMPTS  # before/after samples

    def __post_init__(self) -> None:
        for name in ("block_size", "batch_size", "grad_accum", "eval_interval", "eval_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.max_steps is None and self.epochs is None and self.max_time is None:
            raise ConfigError("give a fine-tuning budget: --max-steps, --epochs or --max-time")
        if self.max_time is not None and not self.max_time > 0:
            raise ConfigError(f"max_time must be positive, got {self.max_time}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if self.lora_r < 0:
            raise ConfigError(f"lora_r must be >= 0, got {self.lora_r}")


@dataclass
class FinetuneResult:
    out_dir: Path
    model_name: str
    reason: str
    num_params: int
    trainable_params: int
    steps: int
    tokens: int
    train_seconds: float
    tokens_per_s: float
    before: Score
    after: Score
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)


class BlockDataset(torch.utils.data.Dataset):
    """Non-overlapping blocks of a token list; labels = inputs (the model shifts them)."""

    def __init__(self, ids: list[int] | np.ndarray, block_size: int):
        n = len(ids) // block_size
        self.data = torch.as_tensor(np.asarray(ids[: n * block_size], dtype=np.int64)).view(n, block_size)

    def __len__(self) -> int:
        return self.data.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


def make_samples(pre: Pretrained, when: str, n_tokens: int, prompts: tuple[str, ...] = PROMPTS) -> list[dict[str, str]]:
    """Same prompts, same decoding settings and seeds, for before/after comparison."""
    gen = hf_generator(pre.name, loaded=pre)
    rows = []
    for prompt in prompts:
        for strategy in ("greedy", "top_k", "temperature"):
            text = gen.complete(prompt, n_tokens, STRATEGIES[strategy])
            rows.append({"model": when, "strategy": strategy, "prompt": prompt, "text": text})
    return rows


def is_main_process() -> bool:
    """Rank 0 under torchrun (the Trainer's multi-process mode), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _score_before(pre: Pretrained, text: str, cfg: FinetuneConfig, out: Path, resume: bool,
                  progress: bool) -> tuple[Score, list[dict[str, str]]]:
    """The pretrained model's score and samples before fine-tuning (kept in finetune_before.json)."""
    path = out / BEFORE_NAME
    if resume and path.exists():
        saved = json.loads(path.read_text())
        return Score(**{k: saved["score"][k] for k in Score.__dataclass_fields__}), saved["samples"]
    logger.info("scoring %s before fine-tuning on %d validation characters", pre.name, len(text))
    before = score_hf(pre.model, pre.tokenizer, text, f"{pre.name} (before)", progress=progress)
    samples = make_samples(pre, "before", cfg.sample_tokens, cfg.prompts)
    if is_main_process():
        path.write_text(json.dumps({"score": before.as_dict(), "samples": samples}, indent=2))
    return before, samples


def tokenize_blocks(tok: Any, chunks: Iterator[str], block_size: int, max_tokens: int | None = None) -> BlockDataset:
    """Blocks of ``block_size`` tokens from text chunks, tokenized one chunk at a time (never the
    whole text as one list of ids), stopping once ``max_tokens`` are in hand."""
    parts: list[np.ndarray] = []
    n = 0
    for chunk in chunks:
        ids = np.asarray(tok(chunk, add_special_tokens=False)["input_ids"], dtype=np.int64)
        parts.append(ids)
        n += len(ids)
        if max_tokens is not None and n >= max_tokens:
            break
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return BlockDataset(ids[:max_tokens] if max_tokens else ids, block_size)


def _text_chunks(data: CorpusSplit | TokenCorpus, part: str, limit: int | None, size: int = 1 << 18,
                 spread: int | None = None) -> Iterator[str]:
    """The first ``limit`` characters of ``data.<part>`` (all when None), ``size`` at a time; with
    ``spread``, only about that many characters, in pieces spaced evenly over the whole text (a
    short fine-tuning run then still sees every part of the corpus, not only its opening)."""
    seq = getattr(data, part)
    end = len(seq) if limit is None else min(limit, len(seq))
    starts = range(0, end, size)
    if spread is not None and spread < end:
        size = min(size, 8192)
        starts = np.linspace(0, end - size, max(1, math.ceil(spread / size))).astype(int).tolist()
    for i in starts:
        piece = seq[i : min(i + size, end)]
        yield piece if isinstance(piece, str) else data.tokenizer.decode(piece.tolist())


CHARS_PER_TOKEN_SPREAD = 6  # characters tokenized per training token needed: ~1.5x the data a BPE needs


def _datasets(tok: Any, data: CorpusSplit | TokenCorpus, cfg: FinetuneConfig, tokens_needed: int | None,
              ) -> tuple[BlockDataset, BlockDataset]:
    """Training blocks (all of the text for an epoch budget, else about 1.5x the tokens the steps
    use, from across the text) and the first ``eval_blocks`` validation blocks."""
    spread = None if tokens_needed is None else tokens_needed * CHARS_PER_TOKEN_SPREAD
    train_ds = tokenize_blocks(tok, _text_chunks(data, "train", cfg.train_chars, spread=spread), cfg.block_size)
    # the periodic val loss uses the first eval_blocks blocks
    val_ds = tokenize_blocks(tok, _text_chunks(data, "val", cfg.eval_blocks * cfg.block_size * 16), cfg.block_size,
                             cfg.eval_blocks * cfg.block_size)
    if len(train_ds) < 1 or len(val_ds) < 1:
        raise ConfigError(f"the text is too short for one block of {cfg.block_size} tokens; use --block-size smaller")
    return train_ds, val_ds


def _with_lora(model: Any, cfg: FinetuneConfig) -> tuple[Any, int]:
    """The model to train and its trainable parameter count (LoRA adapters when lora_r > 0)."""
    if cfg.lora_r == 0:
        return model, sum(p.numel() for p in model.parameters())
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    return model, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _step_plan(cfg: FinetuneConfig, tokens_per_step: int, device: torch.device) -> tuple[int | None, TimeBudget | None]:
    """(optimizer steps, time budget): the steps the config asks for, or, with only a time budget,
    an upper bound that the TimeBudget replaces once it has timed a few steps."""
    if cfg.max_steps is None and cfg.epochs is None:
        fastest = 0.02 if device.type == "cuda" else 0.2  # seconds per step no machine beats here
        return int(cfg.max_time / fastest) + 1, TimeBudget(cfg.max_time)
    return cfg.max_steps, None


def _training_args(cfg: FinetuneConfig, device: torch.device, ckpt_dir: Path, max_steps: int, resume: bool,
                   progress: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=max_steps, learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, eval_strategy="steps",
        eval_steps=cfg.eval_interval, save_strategy="steps", save_steps=cfg.eval_interval, save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=max(1, min(10, cfg.eval_interval)), report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        bf16=resolve_precision(cfg.precision, device, "fine-tuning") == torch.bfloat16,
        use_cpu=device.type == "cpu", dataloader_num_workers=0, disable_tqdm=not progress,
        eval_on_start=not resume, save_only_model=False,
    )


def _save(model: Any, pre: Pretrained, cfg: FinetuneConfig, out: Path, steps: int) -> tuple[Any, Path]:
    """Merge LoRA adapters if any and write ``model_hf_finetuned/`` (plain transformers can load it)."""
    if cfg.lora_r > 0:
        model = model.merge_and_unload()
    final_dir = out / FINETUNED_NAME
    if is_main_process():
        model.save_pretrained(final_dir)
        pre.tokenizer.save_pretrained(final_dir)
        (final_dir / "nanobard.json").write_text(json.dumps(
            {"base_model": pre.name, "config": asdict(cfg), "steps": steps}, indent=2))
    return model, final_dir


def _last_checkpoint_step(ckpt_dir: Path, resume: bool) -> int | None:
    found = list(ckpt_dir.glob("checkpoint-*")) if resume and ckpt_dir.exists() else []
    return max(int(p.name.split("-")[1]) for p in found) if found else None


def finetune(
    cfg: FinetuneConfig, data: CorpusSplit | TokenCorpus, out_dir: str | os.PathLike, *, resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Score before, fine-tune, save ``model_hf_finetuned/``, score after. See module docstring."""
    from transformers import EarlyStoppingCallback

    from nanobard.train import read_metrics

    out = Path(out_dir)
    device = pick_device(cfg.device)
    pre = load_pretrained(cfg.pretrained, device)  # fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    score_text = _val_text(data, cfg.score_chars)
    before, samples_before = _score_before(pre, score_text, cfg, out, resume, progress)

    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun each process takes batch_size blocks
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size * world
    max_steps, budget = _step_plan(cfg, tokens_per_step, device)
    train_ds, val_ds = _datasets(pre.tokenizer, data, cfg, None if cfg.epochs else max_steps * tokens_per_step)
    if cfg.epochs is not None:
        by_epochs = math.ceil(cfg.epochs * len(train_ds) / (cfg.batch_size * cfg.grad_accum))
        max_steps = min(max_steps or by_epochs, by_epochs)
    model, trainable = _with_lora(pre.model, cfg)

    ckpt_dir, metrics_path = out / "hf_checkpoints", out / METRICS_HF_NAME
    if not resume and metrics_path.exists() and is_main_process():
        metrics_path.unlink()
    t0 = time.perf_counter()
    cb = metrics_callback(metrics_path, tokens_per_step, t0, cfg.max_time, budget)
    callbacks = [cb] + ([EarlyStoppingCallback(cfg.patience)] if cfg.patience else [])
    trainer = trainer_class(budget)(model=model, args=_training_args(cfg, device, ckpt_dir, max_steps, resume, progress),
                                    train_dataset=train_ds, eval_dataset=val_ds, callbacks=callbacks)
    steps_before = _last_checkpoint_step(ckpt_dir, resume)
    trainer.train(resume_from_checkpoint=steps_before is not None or None)
    train_seconds = time.perf_counter() - t0
    steps = trainer.state.global_step
    model, final_dir = _save(trainer.model, pre, cfg, out, steps)

    logger.info("scoring the fine-tuned model")
    after = score_hf(model, pre.tokenizer, score_text, f"{pre.name} (after)", progress=progress)
    after_pre = Pretrained(model=model, tokenizer=pre.tokenizer, name=str(final_dir), reason="fine-tuned")
    samples = samples_before + make_samples(after_pre, "after", cfg.sample_tokens, cfg.prompts)
    session_tokens = (steps - (steps_before or 0)) * tokens_per_step
    return FinetuneResult(
        out_dir=out, model_name=pre.name, reason=pre.reason, num_params=pre.num_params, trainable_params=trainable,
        steps=steps, tokens=steps * tokens_per_step, train_seconds=train_seconds,
        tokens_per_s=session_tokens / train_seconds if train_seconds > 0 else 0.0,
        before=before, after=after, history=read_metrics(metrics_path) if metrics_path.exists() else cb.rows,
        samples=samples,
    )


def _val_text(data: CorpusSplit | TokenCorpus, n: int | None) -> str:
    return "".join(_text_chunks(data, "val", n or None))
