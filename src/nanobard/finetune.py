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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from nanobard.config import ConfigError
from nanobard.data import CorpusSplit
from nanobard.evaluate import Score, score_hf
from nanobard.pretrained import Pretrained, hf_generator, load_pretrained
from nanobard.sampling import STRATEGIES

logger = logging.getLogger(__name__)

FINETUNED_NAME = "model_hf_finetuned"
PROMPTS = ("ROMEO:\n", "To be, or not to be", "KING HENRY:\nNow, my lords,")


@dataclass(frozen=True)
class FinetuneConfig:
    pretrained: str = "auto"
    block_size: int = 128  # tokens per training example
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int | None = 60  # optimizer steps; the CPU default finishes in well under 10 minutes
    epochs: float | None = None  # passes over the tokenized training text (the seed uses 3)
    max_time: float | None = None  # seconds; stops training early (the schedule follows the steps)
    lr: float = 1e-4
    warmup_steps: int = 6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 20
    eval_blocks: int = 16  # validation blocks averaged for the periodic val loss
    patience: int | None = 3
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 32
    precision: str = "auto"  # float32, bfloat16 (autocast), or auto: bfloat16 where the hardware has it
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
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("give a fine-tuning budget: --max-steps or --epochs (--max-time caps either)")
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

    def __init__(self, ids: list[int], block_size: int):
        n = len(ids) // block_size
        self.data = torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)

    def __len__(self) -> int:
        return self.data.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


# Causal LMs whose head is exactly ``lm_head(decoder(ids).last_hidden_state)`` (no logit scaling or
# soft-capping in between), so ``chunked_lm_loss`` computes the same loss as the model itself.
CHUNKED_LOSS_MODELS = frozenset({"llama", "gpt2", "mistral", "qwen2"})


def chunked_lm_loss(
    model: Any, input_ids: torch.Tensor, labels: torch.Tensor, num_items: torch.Tensor | int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM, equal to ``model(input_ids, labels=labels).loss``
    but computed ``chunk`` positions at a time through the LM head.

    The model's own loss materialises (B*T, V) logits, casts them to float32 and runs log-softmax
    over them: with SmolLM2's 49,152-token vocabulary that is several passes over 200 MB tensors,
    which on a CPU cost ~1.3 s of a 5 s step, bound by memory bandwidth. In chunks of 256 positions
    those passes stay in cache. ``num_items`` (the Trainer's token count over an accumulated batch)
    replaces the per-batch count, as it does in the model's loss.
    """
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state  # (B, T, C), final norm applied
    head = model.get_output_embeddings()
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))  # (N, C): positions that predict a next token
    y = labels[:, 1:].reshape(-1).to(h.device)  # (N,)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.size(0), chunk):
        logits = head(h[i : i + chunk]).float()  # (chunk, V)
        total = total + F.cross_entropy(logits, y[i : i + chunk], ignore_index=-100, reduction="sum")
    count = num_items if num_items is not None else (y != -100).sum().clamp(min=1)
    return total / count


def _chunked_loss_trainer():
    from transformers import Trainer

    class ChunkedLossTrainer(Trainer):
        """The Trainer, with training losses from ``chunked_lm_loss`` where it is exact (a single
        process, a model type in CHUNKED_LOSS_MODELS); anything else takes the Trainer's own path."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = self.accelerator.unwrap_model(model)
            if return_outputs or base is not model or base.config.model_type not in CHUNKED_LOSS_MODELS:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            n = num_items_in_batch if self.model_accepts_loss_kwargs else None
            with self.accelerator.autocast():  # what accelerate wraps model.forward in; we bypass forward
                return chunked_lm_loss(model, inputs["input_ids"], inputs["labels"], n)

    return ChunkedLossTrainer


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


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX on this CPU (Linux), where bfloat16 matmuls run about twice as fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def _metrics_callback(path: Path, tokens_per_step: int, t0: float, max_time: float | None):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Appends each evaluation to metrics.jsonl (same schema as the from-scratch track) and
        enforces the wall-time budget."""

        def __init__(self) -> None:
            self.last: dict[str, float] = {}
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):
            for k in ("loss", "learning_rate"):
                if logs and k in logs:
                    self.last[k] = logs[k]

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            row = {
                "step": state.global_step, "tokens": state.global_step * tokens_per_step,
                "train_loss": self.last.get("loss"), "val_loss": round(metrics["eval_loss"], 5),
                "lr": self.last.get("learning_rate"), "elapsed_s": round(time.perf_counter() - t0, 3),
            }
            self.rows.append(row)
            if state.is_world_process_zero:  # under torchrun only rank 0 writes
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\n")

        def on_step_end(self, args, state, control, **kw):
            if max_time is not None and time.perf_counter() - t0 > max_time:
                logger.info("time budget of %.0f s reached at step %d", max_time, state.global_step)
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True

    return MetricsCallback()


def finetune(
    cfg: FinetuneConfig, split: CorpusSplit, out_dir: str | os.PathLike, *, resume: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Score before, fine-tune, save ``model_hf_finetuned/``, score after. See module docstring."""
    from transformers import EarlyStoppingCallback, TrainingArguments

    from nanobard.train import pick_device, read_metrics

    out = Path(out_dir)
    device = pick_device(cfg.device)
    pre = load_pretrained(cfg.pretrained, device)  # fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    tok = pre.tokenizer
    score_text = split.val[: cfg.score_chars] if cfg.score_chars else split.val

    before_path = out / "finetune_before.json"
    if resume and before_path.exists():
        saved = json.loads(before_path.read_text())
        before = Score(**{k: saved["score"][k] for k in Score.__dataclass_fields__})
        samples_before = saved["samples"]
    else:
        logger.info("scoring %s before fine-tuning on %d validation characters", pre.name, len(score_text))
        before = score_hf(pre.model, tok, score_text, f"{pre.name} (before)", progress=progress)
        samples_before = make_samples(pre, "before", cfg.sample_tokens, cfg.prompts)
        if is_main_process():
            before_path.write_text(json.dumps({"score": before.as_dict(), "samples": samples_before}, indent=2))

    train_text = split.train[: cfg.train_chars] if cfg.train_chars else split.train
    train_ds = BlockDataset(tok(train_text, add_special_tokens=False)["input_ids"], cfg.block_size)
    # the periodic val loss uses the first eval_blocks blocks: tokenize a generous prefix, not all of it
    val_prefix = split.val[: cfg.eval_blocks * cfg.block_size * 16]
    val_ds = BlockDataset(tok(val_prefix, add_special_tokens=False)["input_ids"], cfg.block_size)
    if len(train_ds) < 1 or len(val_ds) < 1:
        raise ConfigError(f"the text is too short for one block of {cfg.block_size} tokens; use --block-size smaller")
    val_ds.data = val_ds.data[: cfg.eval_blocks]

    model = pre.model
    trainable = sum(p.numel() for p in model.parameters())
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun each process takes batch_size blocks
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size * world
    max_steps = cfg.max_steps
    if cfg.epochs is not None:
        by_epochs = math.ceil(cfg.epochs * len(train_ds) / (cfg.batch_size * cfg.grad_accum))
        max_steps = min(max_steps or by_epochs, by_epochs)
    ckpt_dir = out / "hf_checkpoints"
    metrics_path = out / "metrics_hf.jsonl"
    if not resume and metrics_path.exists() and is_main_process():
        metrics_path.unlink()
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        max_steps=max_steps, learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, eval_strategy="steps",
        eval_steps=cfg.eval_interval, save_strategy="steps", save_steps=cfg.eval_interval, save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=max(1, min(10, cfg.eval_interval)), report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        bf16=use_bf16(cfg.precision, device), use_cpu=device.type == "cpu", dataloader_num_workers=0, disable_tqdm=not progress,
        eval_on_start=not resume, save_only_model=False,
    )
    t0 = time.perf_counter()
    cb = _metrics_callback(metrics_path, tokens_per_step, t0, cfg.max_time)
    callbacks = [cb] + ([EarlyStoppingCallback(cfg.patience)] if cfg.patience else [])
    trainer = _chunked_loss_trainer()(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                      callbacks=callbacks)
    has_ckpt = resume and ckpt_dir.exists() and any(ckpt_dir.glob("checkpoint-*"))
    steps_before = 0
    if has_ckpt:
        last = max(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        steps_before = int(last.name.split("-")[1])
    trainer.train(resume_from_checkpoint=True if has_ckpt else None)
    train_seconds = time.perf_counter() - t0
    steps = trainer.state.global_step

    model = trainer.model
    if cfg.lora_r > 0:
        model = model.merge_and_unload()
    final_dir = out / FINETUNED_NAME
    if is_main_process():
        model.save_pretrained(final_dir)
        tok.save_pretrained(final_dir)
        (final_dir / "nanobard.json").write_text(json.dumps(
            {"base_model": pre.name, "config": asdict(cfg), "steps": steps}, indent=2))

    after_pre = Pretrained(model=model, tokenizer=tok, name=str(final_dir), reason="fine-tuned")
    logger.info("scoring the fine-tuned model")
    after = score_hf(model, tok, score_text, f"{pre.name} (after)", progress=progress)
    samples = samples_before + make_samples(after_pre, "after", cfg.sample_tokens, cfg.prompts)
    session_tokens = (steps - steps_before) * tokens_per_step
    history = read_metrics(metrics_path) if metrics_path.exists() else cb.rows
    return FinetuneResult(
        out_dir=out, model_name=pre.name, reason=pre.reason, num_params=pre.num_params, trainable_params=trainable,
        steps=steps, tokens=steps * tokens_per_step, train_seconds=train_seconds,
        tokens_per_s=session_tokens / train_seconds if train_seconds > 0 else 0.0,
        before=before, after=after, history=history, samples=samples,
    )
