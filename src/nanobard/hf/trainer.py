"""The pieces nanobard adds to the Hugging Face ``Trainer`` for fine-tuning:

- ``chunked_lm_loss``: the LM loss without materialising (B*T, V) float32 logits;
- a wall-time budget: the first steps are timed and the step count that fits the budget fixes the
  cosine schedule's length (``TimeBudget``), so fine-tuning ends on time with its learning rate
  decayed, whatever the machine;
- ``metrics_hf.jsonl``: one row per evaluation, the same schema as the from-scratch track.

``transformers`` is imported inside the functions: importing nanobard stays cheap.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from nanobard.records import EvalRow
from nanobard.rundir import RunDir

logger = logging.getLogger(__name__)

# Causal LMs whose head is exactly ``lm_head(decoder(ids).last_hidden_state)`` (no logit scaling or
# soft-capping in between), so ``chunked_lm_loss`` computes the same loss as the model itself.
CHUNKED_LOSS_MODELS = frozenset({"llama", "gpt2", "mistral", "qwen2"})


def chunked_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
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
    hidden = model.get_decoder()(
        input_ids=input_ids
    ).last_hidden_state  # (B, T, C), final norm applied
    head = model.get_output_embeddings()
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))  # (N, C): positions that predict a next token
    y = labels[:, 1:].reshape(-1).to(h.device)  # (N,)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.size(0), chunk):
        logits = head(h[i : i + chunk]).float()  # (chunk, V)
        total = total + F.cross_entropy(
            logits, y[i : i + chunk], ignore_index=-100, reduction="sum"
        )
    count = num_items if num_items is not None else (y != -100).sum().clamp(min=1)
    return total / count


@dataclass
class TimeBudget:
    """A fine-tuning budget in seconds. After ``CALIBRATE`` timed steps, ``steps`` becomes the step
    count that fits what is left (minus ``margin`` for evaluations and checkpoints); the cosine
    schedule runs over it. ``steps`` starts as an upper bound so nothing ends before that."""

    seconds: float
    steps: int = 1_000_000
    sized: bool = False
    margin: float = 0.1
    stamps: list[float] = field(default_factory=list)
    MIN_STEPS = 2  # timed steps after the first (which includes warm-up costs)...
    MIN_FRACTION = (
        0.05  # ...covering at least this fraction of the budget, so tiny steps are timed well
    )

    def observe(self, step: int, elapsed: float) -> None:
        """Called at the end of every step with the seconds since fine-tuning started."""
        self.stamps.append(time.perf_counter())
        timed = len(self.stamps) - 1
        if (
            self.sized
            or timed < self.MIN_STEPS
            or self.stamps[-1] - self.stamps[0] < self.MIN_FRACTION * self.seconds
        ):
            return
        per_step = (self.stamps[-1] - self.stamps[0]) / timed
        left = max(0.0, self.seconds * (1 - self.margin) - elapsed)
        self.steps = max(step + 1, step + int(left / per_step))
        self.sized = True
        logger.info(
            "fine-tuning: %.2f s/step measured; %d steps fit the %.0f s budget",
            per_step,
            self.steps,
            self.seconds,
        )

    def lr_factor(self, step: int, warmup: int) -> float:
        """Linear warmup then cosine to zero over ``steps`` (the Trainer's "cosine" schedule)."""
        if step < warmup:
            return step / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, self.steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def trainer_class(budget: TimeBudget | None = None) -> type:
    """The Trainer with nanobard's loss and, given a ``budget``, its time-sized schedule."""
    from transformers import Trainer

    class NanobardTrainer(Trainer):
        """Training losses from ``chunked_lm_loss`` where it is exact (a single process, a model
        type in CHUNKED_LOSS_MODELS); anything else takes the Trainer's own path."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = self.accelerator.unwrap_model(model)
            if (
                return_outputs
                or base is not model
                or base.config.model_type not in CHUNKED_LOSS_MODELS
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            n = num_items_in_batch if self.model_accepts_loss_kwargs else None
            with (
                self.accelerator.autocast()
            ):  # what accelerate wraps model.forward in; we bypass forward
                return chunked_lm_loss(model, inputs["input_ids"], inputs["labels"], n)

        def create_scheduler(
            self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
        ):
            if budget is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                warmup = self.args.get_warmup_steps(num_training_steps)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda step: budget.lr_factor(step, warmup)
                )
            return self.lr_scheduler

    return NanobardTrainer


def metrics_callback(
    path: Path,
    tokens_per_step: int,
    t0: float,
    max_time: float | None,
    budget: TimeBudget | None = None,
) -> Any:
    """Appends each evaluation to ``path`` and ends training on the time budget: at the step count
    ``budget`` sized, or when ``max_time`` seconds have passed, whichever comes first."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last: dict[str, float] = {}
            self.rows: list[EvalRow] = []

        def on_log(self, args, state, control, logs=None, **kw):
            for k in ("loss", "learning_rate"):
                if logs and k in logs:
                    self.last[k] = logs[k]

        def on_evaluate(self, args, state, control, metrics=None, lr_scheduler=None, **kw):
            lr = (
                lr_scheduler.get_last_lr()[0]
                if lr_scheduler is not None
                else self.last.get("learning_rate")
            )
            row = EvalRow(
                step=state.global_step,
                tokens=state.global_step * tokens_per_step,
                val_loss=round(metrics["eval_loss"], 5),
                train_loss=self.last.get("loss"),
                lr=lr,
                elapsed_s=round(time.perf_counter() - t0, 3),
            )
            self.rows.append(row)
            if state.is_world_process_zero:  # under torchrun only rank 0 writes
                RunDir(path.parent).append_metrics(row, path.name)

        def on_step_end(self, args, state, control, **kw):
            elapsed = time.perf_counter() - t0
            if budget is not None:
                budget.observe(state.global_step, elapsed)
            out_of_time = max_time is not None and elapsed > max_time
            if out_of_time or (
                budget is not None and budget.sized and state.global_step >= budget.steps
            ):
                logger.info(
                    "fine-tuning time budget reached at step %d (%.0f s)",
                    state.global_step,
                    elapsed,
                )
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True

    return MetricsCallback()
