"""Training loop for the from-scratch GPT.

AdamW or Muon (optim.py), warmup + cosine decay, gradient clipping and accumulation, periodic
evaluation on fixed batches, early stopping, the best checkpoint by validation loss
(``model_scratch_best.pt``) and a latest one (``ckpt_last.pt``) from which ``resume=True``
continues exactly (same batches, masks, weights).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from nanobard.config import ConfigError, ModelConfig, TrainConfig, with_overrides
from nanobard.data.corpus import (
    CorpusChanged,
    CorpusSplit,
    check_fits,
    check_same_corpus,
    get_batch,
)
from nanobard.data.tokenizer import CharTokenizer
from nanobard.data.tokens import TokenCorpus, tokens_from_split
from nanobard.errors import NanobardError
from nanobard.files import WriteFailed
from nanobard.hardware import out_of_memory, pick_device, resolve_precision
from nanobard.model.checkpoint import (
    CheckpointError,
    checkpoint_corpus,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from nanobard.model.gpt import GPT
from nanobard.records import EvalRow, Record
from nanobard.rundir import RunDir, command_line
from nanobard.train import distributed
from nanobard.train.optim import Optimizer, make_optimizer
from nanobard.train.schedule import STOP_REASONS, TimeBudget, lr_at, step_budget
from nanobard.train.step import EVAL_SEED_OFFSET, estimate_loss, train_step

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


OnEval = Callable[[GPT, EvalRow], EvalRow]
"""A callback of ``train``: called at each evaluation with the model (in training mode, on its
device) and the evaluation's row; returns the row to record, e.g. with ``heads`` filled in.
Training knows nothing of analysis: the study passes ``interp.circuits.record_head_scores``,
plain ``nanobard train`` passes nothing and pays nothing."""


class TrainingInterrupted(NanobardError):
    """Ctrl-C or SIGTERM stopped training after a resumable checkpoint was written."""

    exit_code = 130
    RESUME = "continue with the same command plus --resume"

    def __init__(self, stopped: str, how: str = RESUME) -> None:
        self.stopped = stopped  # what happened and where the checkpoint is
        super().__init__(f"{stopped}; {how}")

    def resumed_by(self, how: str) -> TrainingInterrupted:
        """The same stop, with a caller's own way to continue (a study re-runs itself)."""
        return TrainingInterrupted(self.stopped, how)


class NonFiniteLossError(NanobardError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = 3


@dataclass
class TrainResult(Record):
    """What a from-scratch training run did (also written to ``train_result.json``). Losses in
    nats per character."""

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
    history: list[EvalRow] = field(default_factory=list)
    time_budget_s: float | None = None  # the wall-time budget, when there was one


@dataclass
class RunState(Record):
    """The loop's counters, saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # wall time of all sessions of this run
    best_val: float = math.inf
    bad_evals: int = 0  # evaluations since the best one
    first_val: float | None = None
    horizon: int | None = None  # steps a time-only budget was sized to (see TimeBudget)
    horizon_refined: bool = False  # re-sized at an evaluation after sizing (TimeBudget.refine)


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


def read_metrics(path: str | os.PathLike) -> list[EvalRow]:
    """The rows of a metrics file (``metrics.jsonl``); empty when there is none."""
    p = Path(path)
    return RunDir(p.parent).read_metrics(p.name)


# --------------------------------------------------------------------------------------------
# setup, in named steps


@dataclass
class Setup:
    """Everything the loop needs, built once by ``_setup``."""

    run: RunDir
    model: GPT
    fwd: torch.nn.Module  # the model as the forward pass sees it (DDP, torch.compile)
    optimizer: Optimizer
    batch_gen: torch.Generator  # draws training batches; its state is checkpointed
    tokenizer: CharTokenizer
    corpus: TokenCorpus
    device: torch.device
    dd: distributed.Dist

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.model if self.dd.enabled else self.fwd  # every rank evaluates the same batches


def _setup(
    model_cfg: ModelConfig, cfg: TrainConfig, data: CorpusSplit | TokenCorpus, out: Path
) -> Setup:
    corpus = data if isinstance(data, TokenCorpus) else tokens_from_split(data)
    check_fits(corpus, model_cfg.block_size)
    device = pick_device(cfg.device)
    dd = distributed.setup(device.type)
    if dd.enabled and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    if cfg.batch_size % dd.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} must be divisible by the {dd.world} processes"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_cfg = with_overrides(model_cfg, {"vocab_size": corpus.tokenizer.vocab_size})
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    if dd.enabled:
        torch.manual_seed(cfg.seed + dd.rank)  # dropout masks differ per rank
    fwd: torch.nn.Module = model
    if dd.enabled:
        fwd = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.local_rank] if device.type == "cuda" else None
        )
    if cfg.compile:
        # compiling a Module gives a Module (an OptimizedModule); torch types it as a callable
        fwd = cast(torch.nn.Module, torch.compile(fwd))
    return Setup(
        RunDir(out).ensure(),
        model,
        fwd,
        optimizer,
        torch.Generator().manual_seed(cfg.seed),
        corpus.tokenizer,
        corpus,
        device,
        dd,
    )


def _restore(
    s: Setup, cfg: TrainConfig, resume: bool, allow_new_corpus: bool = False
) -> tuple[RunState, list[EvalRow]]:
    """The state to start from: the last checkpoint's when resuming, else a fresh one (and a
    fresh run never appends to an old run's files). A checkpoint of another text than the one
    given now is refused unless ``allow_new_corpus``."""
    last = s.run / RunDir.LAST
    if resume and last.exists():
        ckpt = read_checkpoint(last)
        _check_corpus(s, last, ckpt, allow_new_corpus)  # before the model: a vocabulary differs
        loaded, _, _ = load_model(last, s.device, expect=s.model.config, obj=ckpt)
        s.model.load_state_dict(loaded.state_dict())
        ts = ckpt["train_state"]
        try:
            s.optimizer.load_state_dict(ts["optimizer"])
        except (KeyError, ValueError) as e:
            raise ConfigError(
                f"{last} was written with another --optimizer than {cfg.optimizer!r}; resume "
                f"with the optimizer it was trained with, or start afresh without --resume"
            ) from e
        s.batch_gen.set_state(ts["batch_rng"])
        rng, dd = ts["torch_rng"], s.dd
        torch.set_rng_state(
            rng[dd.rank]
            if isinstance(rng, list) and len(rng) == dd.world
            else rng[0]
            if isinstance(rng, list)
            else rng
        )
        state = RunState.from_dict(json.loads(ts["counters"]))
        if s.dd.is_main:  # only rank 0 writes
            s.run.trim_metrics(state.step)
        s.dd.barrier()
        logger.info("resuming from %s at step %d", last, state.step)
        return state, s.run.read_metrics()
    if resume:
        logger.info("no %s in %s; starting from scratch", RunDir.LAST, s.run.path)
    if s.dd.is_main:  # a fresh run leaves nothing of an older one to be taken for its own
        for p in (last, s.run / RunDir.METRICS, s.run / RunDir.BEST, s.run / RunDir.TRAIN_RESULT):
            p.unlink(missing_ok=True)
    s.dd.barrier()
    return RunState(), []


def _check_corpus(s: Setup, last: Path, ckpt: dict[str, Any], allow_new_corpus: bool) -> None:
    """Resume on the checkpoint's own text; on another one only when asked, and only if its
    characters are the checkpoint's (the ids would mean other characters otherwise)."""
    go_on = (
        "start afresh with another --out, or pass --allow-new-corpus with --resume to continue "
        "training this model on the new text"
    )
    try:
        check_same_corpus(checkpoint_corpus(ckpt), s.corpus.identity, last, go_on)
    except CorpusChanged as e:
        if not allow_new_corpus:
            raise
        logger.warning("%s; continuing on the new text (--allow-new-corpus)", str(e).split(";")[0])
    try:
        tok = CharTokenizer.from_json(ckpt["vocab"])
    except (KeyError, TypeError, ValueError):
        return  # load_model says what is wrong with it
    if tok.chars != s.tokenizer.chars:
        raise CorpusChanged(
            f"{last} was trained on other characters than the text given now has "
            f"({len(tok.chars)} vs {len(s.tokenizer.chars)} distinct); its ids would read as other "
            "characters: start afresh with another --out"
        )


@dataclass
class TrainRunConfig(Record):
    """The full configuration of a from-scratch run (config.json; config_scratch.json in a
    study)."""

    model: ModelConfig
    train: TrainConfig
    corpus: str
    n_train_chars: int
    n_val_chars: int
    precision: str  # what ``dtype`` resolved to on this device
    num_params: int
    device: str
    torch: str
    step_budget: int | None  # None: sized from the measured speed (a time-only budget)
    budget: str  # what ends the run: steps, epochs or time
    processes: int
    command: str | None = None  # the nanobard command that ran it (None: from Python)


def _say_what_changed(path: Path, cfg: TrainConfig) -> None:
    """A resumed session takes its settings from the command line: warn, in one line, of each
    one that differs from what the run's config.json says it ran with before (a schedule or
    learning rate changed by leaving out a flag would otherwise go unnoticed)."""
    try:
        before = TrainRunConfig.load(path).train
    except (OSError, NanobardError, KeyError, TypeError, ValueError):
        return  # no readable config of the session before: nothing to compare with
    changed = [
        f"--{f.name.replace('_', '-')} {getattr(before, f.name)} -> {getattr(cfg, f.name)}"
        for f in dataclasses.fields(TrainConfig)
        if getattr(before, f.name) != getattr(cfg, f.name)
    ]
    if changed:
        logger.warning("resuming with other settings than the run had before: %s (pass the "
                       "flags it ran with to go on unchanged)", ", ".join(changed))  # fmt: skip


def _write_config(
    s: Setup,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    config_name: str,
    budget: tuple[int | None, str],
) -> None:
    if not s.dd.is_main:
        return
    precision = str(resolve_precision(cfg.dtype, s.device)).removeprefix("torch.")
    record = TrainRunConfig(s.model.config, cfg, s.corpus.name, len(s.corpus.train),
                            len(s.corpus.val), precision, s.model.num_params(), str(s.device),
                            torch.__version__, budget[0], budget[1], s.dd.world,
                            command_line())  # fmt: skip
    s.run.write_config(record, config_name)
    logger.info(
        "model: %s parameters on %s; %s training tokens",
        f"{s.model.num_params():,}",
        s.device,
        f"{len(s.corpus.train):,}",
    )


# --------------------------------------------------------------------------------------------
# evaluation and checkpoints


def _evaluate(
    s: Setup,
    cfg: TrainConfig,
    state: RunState,
    lr: float,
    last_loss: float | None,
    session: Sequence[float],
) -> EvalRow:
    """Loss on fixed train and validation batches; raises NonFiniteLossError on NaN/inf.
    ``session``: (its start time, tokens trained in it)."""
    ev = functools.partial(
        estimate_loss,
        block_size=s.model.config.block_size,
        batch_size=cfg.batch_size,
        iters=cfg.eval_iters,
        seed=cfg.seed + EVAL_SEED_OFFSET,
        device=s.device,
        dtype=cfg.dtype,
    )
    val_loss = ev(s.eval_model, s.corpus.val)
    train_loss = ev(s.eval_model, s.corpus.train)
    if not (math.isfinite(val_loss) and math.isfinite(train_loss)):
        raise NonFiniteLossError(
            f"loss became {val_loss} at step {state.step}; training stopped, the last good "
            "checkpoint is kept. Lower --lr or raise --warmup-steps"
        )
    session_s, session_tokens = time.perf_counter() - session[0], session[1]
    return EvalRow(
        step=state.step,
        tokens=state.tokens,
        val_loss=round(val_loss, 5),
        train_loss=round(train_loss, 5),
        lr=lr,
        elapsed_s=round(state.elapsed_s, 3),
        tokens_per_s=round(session_tokens / session_s, 1) if session_tokens else None,
        last_batch_loss=None if last_loss is None else round(last_loss, 5),
    )


def _record(s: Setup, state: RunState, row: EvalRow) -> None:
    """Update the best/patience counters with an evaluation, append it to metrics.jsonl and write
    the checkpoints: the best when it improved, the last (with optimizer and RNG state) always."""
    improved = row.val_loss < state.best_val
    state.first_val = row.val_loss if state.first_val is None else state.first_val
    state.best_val, state.bad_evals = (
        (row.val_loss, 0) if improved else (state.best_val, state.bad_evals + 1)
    )
    rng_states = s.dd.gather_rng_states()
    if s.dd.is_main:  # only rank 0 writes; every rank holds the same weights
        try:
            s.run.append_metrics(row)
            if improved:
                save_checkpoint(
                    s.run / RunDir.BEST,
                    s.model,
                    s.tokenizer,
                    metrics={"step": row.step, "val_loss": row.val_loss},
                    corpus=s.corpus.identity,
                )
            save_checkpoint(
                s.run / RunDir.LAST,
                s.model,
                s.tokenizer,
                train_state={
                    "optimizer": s.optimizer.state_dict(),
                    "batch_rng": s.batch_gen.get_state(),
                    "torch_rng": rng_states if s.dd.enabled else rng_states[0],
                    "counters": json.dumps(state.to_dict()),
                },
                corpus=s.corpus.identity,
            )
        except WriteFailed as e:
            kept = _kept(s.run)
            then = "run the same command with --resume" if RunDir.LAST in kept else "run it again"
            raise e.with_hint(f"free some space, then {then}", kept) from None
    s.dd.barrier()


def _kept(run: RunDir) -> str:
    """The checkpoints a run whose save failed can go on from, with their steps."""
    kept = {}
    for name in (RunDir.LAST, RunDir.BEST):
        try:
            ckpt = read_checkpoint(run / name)
        except CheckpointError:
            continue
        if "train_state" in ckpt:
            kept[name] = f"step {json.loads(ckpt['train_state']['counters'])['step']}"
        else:
            kept[name] = f"step {json.loads(ckpt['metrics']).get('step', '?')}"
    return ", ".join(f"{k} ({v})" for k, v in kept.items()) or "no checkpoint yet"


def _stop_reason(cfg: TrainConfig, state: RunState, horizon: int | None, budget_kind: str,
                 stop: _StopFlag) -> str | None:  # fmt: skip
    """Why the run stops at the top of this step, if it does: a step horizon reached, the time
    spent, or a signal (see STOP_REASONS)."""
    if horizon is not None and state.step >= horizon:
        return budget_kind
    if cfg.max_time is not None and state.elapsed_s >= cfg.max_time:
        return "time"
    if stop.signum is not None:
        return "interrupted"
    return None


def _batches(s: Setup, cfg: TrainConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's rows of the next ``grad_accum`` global batches."""
    block = s.model.config.block_size
    draws = [
        get_batch(s.corpus.train, block, cfg.batch_size, s.batch_gen) for _ in range(cfg.grad_accum)
    ]
    return [(s.dd.shard(x), s.dd.shard(y)) for x, y in draws]


def _stop_after_eval(cfg: TrainConfig, state: RunState, row: EvalRow) -> str | None:
    if cfg.target_loss is not None and row.val_loss <= cfg.target_loss:
        return "target_loss"
    if cfg.patience is not None and state.bad_evals >= cfg.patience:
        return "early_stopping"
    return None


# what eval_line writes, as the time-to-loss benchmark reads it: (step, val loss)
EVAL_LINE = re.compile(r"^step (\d+)(?:/\d+)?: val loss ([\d.]+)")


def eval_line(row: EvalRow, horizon: int | None) -> str:
    """An evaluation as one log line, e.g. ``step 120/240: val loss 2.0512, train loss 2.0011,
    lr 1.40e-02, 7.1 s`` (losses in nats per token), logged before the checkpoints are written."""
    of = f"/{horizon}" if horizon else ""
    train = "" if row.train_loss is None else f", train loss {row.train_loss:.4f}"
    lr = "" if row.lr is None else f", lr {row.lr:.2e}"
    return f"step {row.step}{of}: val loss {row.val_loss:.4f}{train}{lr}, {row.elapsed_s:.1f} s"


# --------------------------------------------------------------------------------------------
# the loop


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data: CorpusSplit | TokenCorpus,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    config_name: str = RunDir.CONFIG,
    on_eval: Sequence[OnEval] = (),
    allow_new_corpus: bool = False,
) -> TrainResult:
    """Train a GPT on ``data.train``, evaluating on ``data.val``; write checkpoints, metrics and
    ``train_result.json`` into ``out_dir``. ``data`` is text (a CorpusSplit, encoded here) or token
    ids (a TokenCorpus, e.g. memory-mapped from the token cache). ``on_eval`` callbacks run at each
    evaluation, in order, before it is recorded (see ``OnEval``). Raises TrainingInterrupted after
    writing a resumable checkpoint on Ctrl-C/SIGTERM; ``CorpusChanged`` when resuming on another
    text than the checkpoint's, unless ``allow_new_corpus``; ``WriteFailed`` when the disk refuses
    a checkpoint (the previous one kept); ``OutOfMemory`` when the device refuses an
    allocation."""
    try:
        s = _setup(model_cfg, cfg, data, Path(out_dir))
        # one writer per run folder (under torchrun, rank 0 holds it for every rank)
        with s.run.writer_lock("nanobard train") if s.dd.is_main else nullcontext():
            return _train(s, model_cfg, cfg, resume, progress, config_name, on_eval,
                          allow_new_corpus)  # fmt: skip
    except (RuntimeError, MemoryError) as e:
        oom = out_of_memory(e, pick_device(cfg.device), _lower_memory(model_cfg, cfg))
        if oom is None:
            raise
        raise oom from None


def _lower_memory(model_cfg: ModelConfig, cfg: TrainConfig) -> str:
    """The flags that lower a from-scratch run's memory, with their values now."""
    return (
        f"lower --batch-size (now {cfg.batch_size}; raise --grad-accum, now {cfg.grad_accum}, to "
        f"keep the tokens per step), --block-size (now {model_cfg.block_size}), --n-embd (now "
        f"{model_cfg.n_embd}) or --n-layer (now {model_cfg.n_layer})"
    )


def _train(
    s: Setup,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    resume: bool,
    progress: bool,
    config_name: str,
    on_eval: Sequence[OnEval],
    allow_new_corpus: bool,
) -> TrainResult:
    """train() with the folder's lock held: the loop, top to bottom."""
    state, history = _restore(s, cfg, resume, allow_new_corpus)
    if state.step and s.dd.is_main:
        _say_what_changed(s.run / config_name, cfg)
    horizon, budget_kind = step_budget(cfg, len(s.corpus.train), s.model.config.block_size)
    if horizon is None:
        horizon = state.horizon  # a time budget sized before a resume (None on a fresh run)
    _write_config(s, model_cfg, cfg, config_name, (horizon, budget_kind))
    budget = None
    if budget_kind == "time":
        assert cfg.max_time is not None
        budget = TimeBudget(
            cfg.max_time, cfg.eval_interval, before_s=state.elapsed_s, start_step=state.step
        )
    clock_start = time.perf_counter() - state.elapsed_s  # wall time counts across sessions
    session = [time.perf_counter(), 0]
    tokens_per_step = cfg.batch_size * cfg.grad_accum * s.model.config.block_size
    evaluated = state.step if history else None  # a resumed run was evaluated at its checkpoint
    lr, loss, stopped = lr_at(state.step, cfg, cfg.lr_decay_steps or horizon, 0.0), None, None
    bar = tqdm(total=horizon, initial=state.step, disable=not progress or not s.dd.is_main,
               unit="step", dynamic_ncols=True, desc="train scratch")  # fmt: skip
    s.model.train()
    with _StopFlag() as stop:
        while True:
            state.elapsed_s = time.perf_counter() - clock_start
            # last_step: a budget is spent or a signal came; the final evaluation and save happen
            # here, once. Clocks and signals differ a little between ranks under torchrun: rank 0
            # decides.
            stopped = s.dd.choice_from_main(
                _stop_reason(cfg, state, horizon, budget_kind, stop), STOP_REASONS
            )
            if (stopped or state.step % cfg.eval_interval == 0) and evaluated != state.step:
                t_eval = time.perf_counter()
                row = _evaluate(s, cfg, state, lr, loss, tuple(session))
                # analyses the caller asked for (e.g. the study's head scores)
                for callback in on_eval:
                    row = callback(s.model, row)
                history.append(row)
                evaluated, eval_s = state.step, time.perf_counter() - t_eval
                if budget is not None:
                    budget.eval_s = eval_s  # sizing counts the evaluations' cost
                if budget is not None and budget.sized and not stopped:
                    horizon = state.horizon = bar.total = s.dd.from_main(
                        budget.refine(state.step, eval_s)
                    )
                    state.horizon_refined = True
                    if state.step >= horizon:  # no time left: this evaluation is the last
                        stopped = budget_kind
                if not progress and s.dd.is_main:  # without a bar, one line per evaluation
                    logger.info("%s", eval_line(row, horizon))
                _record(s, state, row)  # the checkpoint carries the re-fitted horizon
                stopped = stopped or _stop_after_eval(cfg, state, row)
                bar.set_postfix(
                    loss=f"{row.train_loss:.3f}", val=f"{row.val_loss:.3f}", refresh=False
                )
            if stopped:
                break
            time_fraction = (
                (time.perf_counter() - clock_start) / cfg.max_time if cfg.max_time else 0.0
            )
            lr = lr_at(state.step, cfg, cfg.lr_decay_steps or horizon, time_fraction)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(s.model, s.optimizer, _batches(s, cfg), cfg, s.device, s.fwd)
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss became {loss} at step {state.step + 1}; training stopped, the last good "
                    f"checkpoint ({s.run / RunDir.LAST}) is kept. Lower --lr or raise "
                    "--warmup-steps"
                )
            state.step += 1
            state.tokens += tokens_per_step
            session[1] += tokens_per_step
            bar.update(1)
            if budget is not None and not budget.sized:
                # rank 0's clock sizes the horizon for every rank (theirs differ a little), so all
                # ranks leave calibration at the same step; this session's speed (resumed too)
                sized = s.dd.from_main(budget.observe(state.step))
                budget.horizon = sized
                if sized is not None:
                    horizon = state.horizon = bar.total = sized
            if state.step % 10 == 0:
                tok_s = session[1] / max(1e-9, time.perf_counter() - session[0])
                bar.set_postfix(
                    loss=f"{loss:.3f}", val=f"{state.best_val:.3f}", tok_s=f"{tok_s:,.0f}"
                )
    bar.close()
    distributed.teardown(s.dd)
    if stopped == "interrupted":
        signame = signal.Signals(stop.signum or signal.SIGTERM).name
        raise TrainingInterrupted(
            f"stopped by signal {signame} at step {state.step}; checkpoint written to "
            f"{s.run / RunDir.LAST}"
        )
    return _result(s, cfg, state, history, stopped, session)


def _result(
    s: Setup,
    cfg: TrainConfig,
    state: RunState,
    history: list[EvalRow],
    stopped: str,
    session: list[float],
) -> TrainResult:
    last = history[-1]
    # the loop evaluates before it stops, with both losses
    assert state.first_val is not None and last.train_loss is not None, "no evaluation recorded"
    session_s = time.perf_counter() - session[0]
    res = TrainResult(
        out_dir=s.run.path,
        num_params=s.model.num_params(),
        steps=state.step,
        tokens=state.tokens,
        elapsed_s=state.elapsed_s,
        tokens_per_s=session[1] / session_s if session_s > 0 else 0.0,
        first_val_loss=state.first_val,
        best_val_loss=state.best_val,
        final_val_loss=last.val_loss,
        final_train_loss=last.train_loss,
        stopped=stopped,
        history=history,
        time_budget_s=cfg.max_time,
    )
    if s.dd.is_main:
        res.save(s.run / RunDir.TRAIN_RESULT)
    return res


__all__ = [
    "train",
    "TrainResult",
    "RunState",
    "TrainRunConfig",
    "OnEval",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "read_metrics",
]
