"""One optimizer step and the loss on fixed batches: what the training loop repeats, and what the
lessons, the benchmarks and the profiler run on their own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from nanobard.config import TrainConfig
from nanobard.data.corpus import get_batch
from nanobard.hardware import autocast_context
from nanobard.model.gpt import GPT
from nanobard.train.optim import Optimizer

if TYPE_CHECKING:
    import numpy as np

EVAL_SEED_OFFSET = 1_000_003  # evaluation batches come from their own, fixed stream


def train_step(
    model: GPT,
    optimizer: Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    device: torch.device,
    fwd: torch.nn.Module | None = None,
    after_backward: Callable[[GPT], None] | None = None,
) -> float:
    """One optimizer step: forward and backward over each (x, y) micro-batch (B, T), gradient
    clipping, the update. ``fwd`` is the model as wrapped for the forward pass (DDP, compiled);
    under DDP gradients are all-reduced once, on the last micro-batch. ``after_backward(model)``
    sees the gradients before they are clipped (the lessons record their norms). Returns the last
    micro-batch's loss in nats per token (what the progress bar shows)."""
    fwd = model if fwd is None else fwd  # not `or`: a compiled module refuses len()
    for i, (x, y) in enumerate(batches):
        # under DDP, no all-reduce before the last micro-batch
        with (
            autocast_context(device, cfg.dtype),
            fwd.no_sync()
            if isinstance(fwd, torch.nn.parallel.DistributedDataParallel) and i < len(batches) - 1
            else contextlib.nullcontext(),
        ):
            loss = fwd(x.to(device), y.to(device)).loss / len(batches)
            loss.backward()
    if after_backward is not None:
        after_backward(model)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item() * len(batches)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    data: torch.Tensor | np.ndarray,
    block_size: int,
    batch_size: int,
    iters: int,
    seed: int,
    device: torch.device,
    dtype: str,
) -> float:
    """Mean loss (nats/token) over ``iters`` batches drawn from a fixed seed: the same batches
    at every evaluation, so successive values differ only because the model changed."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(iters):
        x, y = get_batch(data, block_size, batch_size, g)
        with autocast_context(device, dtype):
            total += model(x.to(device), y.to(device)).loss.item()
    model.train(was_training)
    return total / iters
