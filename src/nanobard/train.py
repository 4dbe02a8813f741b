"""Training loop for the from-scratch GPT.

AdamW (weight decay on matrices only), linear warmup + cosine decay, gradient clipping and
accumulation, periodic evaluation on fixed batches, early stopping, the best checkpoint by
validation loss (``model_scratch_best.pt``) and a latest checkpoint (``ckpt_last.pt``) from which
``resume=True`` continues exactly (same batches, same dropout masks, same weights).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nanobard import distributed
from nanobard.checkpoint import BEST_NAME, CheckpointError, load_model, save_checkpoint
from nanobard.config import ConfigError, ModelConfig, TrainConfig, with_overrides
from nanobard.data import CorpusSplit, check_fits, get_batch
from nanobard.hardware import autocast_context, pick_device, resolve_precision
from nanobard.model import GPT
from nanobard.optim import make_optimizer
from nanobard.tokens import TokenCorpus, tokens_from_split

logger = logging.getLogger(__name__)

LAST_NAME = "ckpt_last.pt"
METRICS_NAME = "metrics.jsonl"
EVAL_SEED_OFFSET = 1_000_003  # evaluation batches come from their own, fixed stream


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped training after a resumable checkpoint was written."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    out_dir: Path
    num_params: int
    steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float
    first_val_loss: float
    best_val_loss: float
    final_val_loss: float
    final_train_loss: float
    stopped: str  # "steps", "epochs", "time", "early_stopping", "target_loss"
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig, horizon: int | None, time_fraction: float) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr`` over ``horizon`` steps.

    With only a time budget (no step horizon), the cosine follows the fraction of time used.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if horizon is not None:
        span = max(1, horizon - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
    else:
        progress = min(1.0, time_fraction)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def step_budget(cfg: TrainConfig, n_train_tokens: int, block_size: int) -> tuple[int | None, str]:
    """The step count the budget allows (None when only time limits it) and what sets it."""
    options = []
    if cfg.max_steps is not None:
        options.append((cfg.max_steps, "steps"))
    if cfg.epochs is not None:
        per_step = cfg.batch_size * cfg.grad_accum * block_size
        options.append((max(1, math.ceil(cfg.epochs * n_train_tokens / per_step)), "epochs"))
    if not options:
        return None, "time"
    return min(options)


def train_step(model: GPT, optimizer: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig,
               device: torch.device, fwd: torch.nn.Module | None = None) -> float:
    """One optimizer step: forward and backward over each (x, y) micro-batch (B, T), gradient
    clipping, the update. ``fwd`` is the model as wrapped for the forward pass (DDP, compiled);
    under DDP gradients are all-reduced once, on the last micro-batch. Returns the last
    micro-batch's loss in nats per token (what the progress bar shows)."""
    fwd = fwd or model
    for i, (x, y) in enumerate(batches):
        sync = i == len(batches) - 1 or not isinstance(fwd, torch.nn.parallel.DistributedDataParallel)
        with autocast_context(device, cfg.dtype), (contextlib.nullcontext() if sync else fwd.no_sync()):
            loss = fwd(x.to(device), y.to(device)).loss / len(batches)
            loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item() * len(batches)


CALIBRATION_STEPS = (3, 13)  # time steps 3..13 of a run (the first ones are slower)


def _size_steps(calibration: list[float], step: int, cfg: TrainConfig, elapsed: float,
                eval_s: float) -> int | None:
    """With only a time budget: after timing a few steps, the step count that fills the budget,
    evaluations included (None until then). Fixing it once keeps the LR schedule a function of
    the step, so a resumed run follows the same schedule."""
    calibration.append(time.perf_counter())
    first, last = CALIBRATION_STEPS
    if len(calibration) <= last:
        return None
    per_step = (calibration[last] - calibration[first]) / (last - first)
    calibration.append(per_step)
    left = max(0.0, cfg.max_time - elapsed)
    return step + int(left / (per_step + eval_s / cfg.eval_interval))


@torch.no_grad()
def estimate_loss(
    model: GPT, data: torch.Tensor, block_size: int, batch_size: int, iters: int, seed: int,
    device: torch.device, dtype: str,
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


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._old.clear()
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (empty when there is none)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


def _trim_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [row for row in read_metrics(path) if row["step"] <= last_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in keep))


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: CorpusSplit | TokenCorpus,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    config_name: str = "config.json",
) -> TrainResult:
    """Train a GPT on ``data.train``, evaluating on ``data.val``; write checkpoints and metrics
    into ``out_dir``. ``data`` is text (a CorpusSplit, encoded here) or token ids (a TokenCorpus,
    e.g. memory-mapped from the token cache). Returns a summary; raises TrainingInterrupted on Ctrl-C/SIGTERM."""
    t_start = time.perf_counter()
    out = Path(out_dir)
    corpus = data if isinstance(data, TokenCorpus) else tokens_from_split(data)
    check_fits(corpus, model_cfg.block_size)
    device = pick_device(cfg.device)
    dd = distributed.setup(device.type)
    if dd.enabled and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    if cfg.batch_size % dd.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {dd.world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = corpus.tokenizer
    model_cfg = with_overrides(model_cfg, {"vocab_size": tok.vocab_size})
    out.mkdir(parents=True, exist_ok=True)
    best_path, last_path, metrics_path = out / BEST_NAME, out / LAST_NAME, out / METRICS_NAME

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "best_val": math.inf, "bad_evals": 0, "first_val": None,
             "horizon": None}
    if dd.enabled:
        torch.manual_seed(cfg.seed + dd.rank)  # dropout masks differ per rank

    if resume and last_path.exists():
        loaded, _, ckpt = load_model(last_path, device, expect=model_cfg)
        model.load_state_dict(loaded.state_dict())
        ts = ckpt["train_state"]
        try:
            optimizer.load_state_dict(ts["optimizer"])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{last_path} was written with another --optimizer than {cfg.optimizer!r}; resume "
                              f"with the optimizer it was trained with, or start afresh without --resume") from e
        batch_gen.set_state(ts["batch_rng"])
        rng = ts["torch_rng"]
        torch.set_rng_state(rng[dd.rank] if isinstance(rng, list) and len(rng) == dd.world else
                            rng[0] if isinstance(rng, list) else rng)
        state = json.loads(ts["counters"])
        _trim_metrics(metrics_path, state["step"])
        logger.info("resuming from %s at step %d", last_path, state["step"])
    elif resume:
        logger.info("no %s in %s; starting from scratch", LAST_NAME, out)
    elif dd.is_main:
        for p in (last_path, metrics_path):  # a fresh run never appends to an old one's files
            if p.exists():
                p.unlink()
    dd.barrier()

    train_ids, val_ids = corpus.train, corpus.val
    horizon_steps, budget_kind = step_budget(cfg, len(train_ids), model_cfg.block_size)
    if horizon_steps is None and state.get("horizon") is not None:  # sized from the throughput before a resume
        horizon_steps = state["horizon"]
    decay_horizon = cfg.lr_decay_steps or horizon_steps
    tokens_per_step = cfg.batch_size * cfg.grad_accum * model_cfg.block_size
    if dd.is_main:
        (out / config_name).write_text(json.dumps({
        "model": asdict(model_cfg), "train": asdict(cfg), "corpus": corpus.name,
        "n_train_chars": len(train_ids), "n_val_chars": len(val_ids),
        "precision": str(resolve_precision(cfg.dtype, device)).removeprefix("torch."),
        "num_params": model.num_params(), "device": str(device), "torch": torch.__version__,
        "step_budget": horizon_steps, "budget": budget_kind, "processes": dd.world,
    }, indent=2))
    logger.info("model: %s parameters on %s; %s training tokens", f"{model.num_params():,}", device, f"{len(train_ids):,}")

    fwd = model
    if dd.enabled:
        fwd = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.local_rank] if device.type == "cuda" else None)
    if cfg.compile:
        fwd = torch.compile(fwd)
    eval_model = model if dd.enabled else fwd  # every rank evaluates the same fixed batches
    history = read_metrics(metrics_path) if resume else []
    session_t0, session_tokens = time.perf_counter(), 0
    elapsed_before = state["elapsed_s"]
    stopped = budget_kind

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    eval_seconds = [0.0]

    def evaluate_and_save(step: int, last_loss: float | None, lr: float) -> str | None:
        """Evaluate, log, checkpoint. Returns why to stop (early stopping, target reached) or None."""
        t_eval = time.perf_counter()
        ev = dict(block_size=model_cfg.block_size, batch_size=cfg.batch_size, iters=cfg.eval_iters,
                  seed=cfg.seed + EVAL_SEED_OFFSET, device=device, dtype=cfg.dtype)
        val_loss = estimate_loss(eval_model, val_ids, **ev)
        train_loss = estimate_loss(eval_model, train_ids, **ev)
        if not math.isfinite(val_loss) or not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"loss became {val_loss} at step {step}; training stopped, the last good checkpoint is kept. "
                "Lower --lr or raise --warmup-steps"
            )
        if state["first_val"] is None:
            state["first_val"] = val_loss
        session_s = time.perf_counter() - session_t0
        row = {
            "step": step, "tokens": state["tokens"], "train_loss": round(train_loss, 5),
            "val_loss": round(val_loss, 5), "lr": lr, "elapsed_s": round(elapsed(), 3),
            "tokens_per_s": round(session_tokens / session_s, 1) if session_s > 0 and session_tokens else None,
            "last_batch_loss": None if last_loss is None else round(last_loss, 5),
        }
        history.append(row)
        improved = val_loss < state["best_val"]
        if improved:
            state["best_val"], state["bad_evals"] = val_loss, 0
        else:
            state["bad_evals"] += 1
        state["elapsed_s"] = elapsed()
        rng_states = dd.gather_rng_states()
        if dd.is_main:  # only rank 0 writes; every rank holds the same weights
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if improved:
                save_checkpoint(best_path, model, tok, metrics={"step": step, "val_loss": val_loss})
            save_checkpoint(last_path, model, tok, train_state={
                "optimizer": optimizer.state_dict(), "batch_rng": batch_gen.get_state(),
                "torch_rng": rng_states if dd.enabled else rng_states[0], "counters": json.dumps(state),
            })
        dd.barrier()
        eval_seconds[0] = time.perf_counter() - t_eval
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}", refresh=False)
        if cfg.target_loss is not None and val_loss <= cfg.target_loss:
            return "target_loss"
        if cfg.patience is not None and state["bad_evals"] >= cfg.patience:
            return "early_stopping"
        return None

    step = state["step"]
    bar = tqdm(total=horizon_steps, initial=step, disable=not progress or not dd.is_main, unit="step", dynamic_ncols=True,
               desc="train scratch")
    lr = lr_at(step, cfg, decay_horizon, 0.0)
    loss_val: float | None = None
    calibration: list[float] = []  # time-only budget: step timings that size the step horizon
    model.train()
    with _StopFlag() as stop:
        if step == 0 and not history:
            evaluate_and_save(0, None, lr)
        while True:
            if horizon_steps is not None and step >= horizon_steps:
                stopped = budget_kind
                break
            if cfg.max_time is not None and elapsed() >= cfg.max_time:
                stopped = "time"
                break
            lr = lr_at(step, cfg, decay_horizon, elapsed() / cfg.max_time if cfg.max_time else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [(dd.shard(x), dd.shard(y)) for x, y in  # this rank's rows of each global batch
                       (get_batch(train_ids, model_cfg.block_size, cfg.batch_size, batch_gen)
                        for _ in range(cfg.grad_accum))]
            loss_val = train_step(model, optimizer, batches, cfg, device, fwd)
            if not math.isfinite(loss_val):
                raise NonFiniteLossError(
                    f"loss became {loss_val} at step {step + 1}; training stopped, the last good checkpoint "
                    f"({last_path}) is kept. Lower --lr or raise --warmup-steps"
                )
            step += 1
            state["step"] = step
            state["tokens"] += tokens_per_step
            session_tokens += tokens_per_step
            bar.update(1)
            if horizon_steps is None and cfg.max_time is not None:
                horizon_steps = _size_steps(calibration, step, cfg, elapsed(), eval_seconds[0])
                if horizon_steps is not None:
                    state["horizon"], decay_horizon, bar.total = horizon_steps, cfg.lr_decay_steps or horizon_steps, horizon_steps
                    logger.info("measured %.1f ms/step: %d steps fit the %.0f s budget", calibration[-1] * 1e3,
                                horizon_steps, cfg.max_time)
            if step % 10 == 0:
                rate = session_tokens / max(1e-9, time.perf_counter() - session_t0)
                bar.set_postfix(loss=f"{loss_val:.3f}", val=f"{state['best_val']:.3f}", tok_s=f"{rate:,.0f}")
            if step % cfg.eval_interval == 0:
                why = evaluate_and_save(step, loss_val, lr)
                if why:
                    stopped = why
                    break
            if stop.signum is not None:
                if not history or history[-1]["step"] != step:
                    evaluate_and_save(step, loss_val, lr)
                bar.close()
                raise TrainingInterrupted(
                    f"stopped by signal {signal.Signals(stop.signum).name} at step {step}; "
                    f"checkpoint written to {last_path}; continue with the same command plus --resume"
                )
        if not history or history[-1]["step"] != step:
            evaluate_and_save(step, loss_val, lr)
    bar.close()
    distributed.teardown(dd)

    session_s = time.perf_counter() - session_t0
    return TrainResult(
        out_dir=out, num_params=model.num_params(), steps=step, tokens=state["tokens"],
        elapsed_s=elapsed(), tokens_per_s=session_tokens / session_s if session_s > 0 else 0.0,
        first_val_loss=state["first_val"], best_val_loss=state["best_val"],
        final_val_loss=history[-1]["val_loss"], final_train_loss=history[-1]["train_loss"],
        stopped=stopped, history=history,
    )


__all__ = ["train", "TrainResult", "lr_at", "CheckpointError", "TrainingInterrupted"]
