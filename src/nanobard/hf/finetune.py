"""Fine-tune a pretrained causal LM on the corpus with the Hugging Face ``Trainer``, and measure it
before and after on the same validation text as the from-scratch track.

The model's tokenizer cuts the (character-level) training split into non-overlapping blocks of
``block_size`` tokens. The Trainer provides AdamW, warmup + cosine decay, gradient accumulation
and clipping, periodic evaluation, early stopping, keeping the best model and resuming from its
last checkpoint. With ``lora_r > 0`` only LoRA adapters train (peft); they are merged into the
weights before saving, so ``model_hf_finetuned/`` loads with plain ``transformers``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch

from nanobard import files
from nanobard.config import SHAKESPEARE_PROMPTS as PROMPTS
from nanobard.config import ConfigError, FinetuneConfig
from nanobard.data.corpus import CorpusChanged, CorpusId, CorpusSplit, check_same_corpus
from nanobard.data.tokenizer import UnknownCharactersError
from nanobard.data.tokens import TokenCorpus
from nanobard.hardware import (
    generation_dtype,
    out_of_memory,
    pick_device,
    resolve_precision,
    scoring_dtype,
)
from nanobard.hf.pretrained import EMBEDDED, Pretrained, hf_generator, load_pretrained
from nanobard.hf.trainer import (
    checkpoint_corpus,
    complete_checkpoints,
    cpu_bfloat16_training,
    metrics_callback,
    quiet_progress,
    trainer_class,
)
from nanobard.model.evaluate import Score, score_hf
from nanobard.model.export import no_shard_bar
from nanobard.model.sampling import STRATEGIES, TextGenerator, complete_many
from nanobard.records import EvalRow, Record, TornRecord
from nanobard.rundir import RunDir, command_line
from nanobard.train.schedule import TimeBudget
from nanobard.train.tracking import Tracker

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample(Record):
    """One generated continuation: same prompts, settings and seeds for every model."""

    model: str  # "scratch", "before", "after"
    strategy: str  # a key of sampling.STRATEGIES
    prompt: str
    text: str  # the continuation, without the prompt


@dataclass
class FinetuneResult(Record):
    """What fine-tuning did (also written to ``finetune_result.json``); scores on the shared
    validation text before and after."""

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
    history: list[EvalRow] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    time_budget_s: float | None = None  # the whole command's (--max-time), load to save
    # wall seconds of each part, in order: load, score_before, samples_before, data, train,
    # save, score_after, samples_after (a part a resumed run reused is absent)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return sum(self.phases.values())


class BlockDataset(torch.utils.data.Dataset):
    """Non-overlapping blocks of a token list; labels = inputs (the model shifts them)."""

    def __init__(self, ids: list[int] | np.ndarray, block_size: int):
        n = len(ids) // block_size
        self.data = torch.as_tensor(np.asarray(ids[: n * block_size], dtype=np.int64)).view(
            n, block_size
        )

    def __len__(self) -> int:
        return self.data.size(0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[i], "labels": self.data[i]}


SAMPLE_STRATEGIES = ("greedy", "top_k", "temperature")  # the seed's three


def make_samples(
    gen: TextGenerator, when: str, n_tokens: int, prompts: tuple[str, ...] = PROMPTS
) -> list[Sample]:
    """Same prompts, same decoding settings and seeds, for comparing models. A prompt the model
    cannot encode (characters the from-scratch vocabulary lacks) gives a sample saying so."""
    texts: dict[tuple[str, str], str] = {}
    batch = []  # every prompt the model can encode, with each strategy: one batch where it can
    for prompt in prompts:
        try:
            gen.encode(prompt)
        except UnknownCharactersError as e:
            texts |= {(prompt, s): f"[cannot encode this prompt: {e}]" for s in SAMPLE_STRATEGIES}
        else:
            batch += [(prompt, s) for s in SAMPLE_STRATEGIES]
    done = complete_many(gen, [(p, STRATEGIES[s]) for p, s in batch], n_tokens)
    texts |= dict(zip(batch, done, strict=True))
    return [Sample(when, s, p, texts[p, s]) for p in prompts for s in SAMPLE_STRATEGIES]


def is_main_process() -> bool:
    """Rank 0 under torchrun (the Trainer's multi-process mode), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class BeforeFinetune(Record):
    """The pretrained model before fine-tuning (``finetune_before.json``): kept so that a resumed
    run does not score it again."""

    score: Score
    samples: list[Sample]
    corpus: CorpusId | None = None  # the text it was scored on
    samples_seconds: float = 0.0  # what making the samples took (the after ones take as long)


@dataclass
class FinetunedModelInfo(Record):
    """What made a fine-tuned model folder (``model_hf_finetuned/nanobard.json``)."""

    base_model: str
    config: FinetuneConfig
    steps: int
    corpus: CorpusId | None = None  # the text it was fine-tuned on
    command: str | None = None  # the nanobard command that fine-tuned it (None: from Python)


def _score_before(
    pre: Pretrained,
    text: str,
    cfg: FinetuneConfig,
    out: Path,
    resume: bool,
    progress: bool,
    corpus: CorpusId,
) -> tuple[BeforeFinetune, bool]:
    """The pretrained model's score and samples before fine-tuning (kept in
    finetune_before.json), and whether a resumed run's record was reused."""
    path = out / RunDir.BEFORE
    if resume and path.exists():
        try:
            kept = BeforeFinetune.load(path)
        except TornRecord as e:
            logger.warning("%s; scoring again", e)
        else:
            if kept.corpus is None or kept.corpus.same_text(corpus):
                return kept, True
    logger.info("scoring %s before fine-tuning on %d validation characters", pre.name, len(text))
    score = score_hf(pre.model, pre.tokenizer, text, f"{pre.name} (before)", progress=progress,
                     precision=_scoring(pre))  # fmt: skip
    t = time.perf_counter()
    samples = make_samples(_sampler(pre), "before", cfg.sample_tokens, cfg.prompts)
    before = BeforeFinetune(score, samples, corpus, round(time.perf_counter() - t, 2))
    if is_main_process():
        before.save(path)
    return before, False


def _scoring(pre: Pretrained) -> torch.dtype:
    """The before-score's precision (the after-score takes the before-score's): the fastest the
    device has natively (hardware.scoring_dtype) for a float32 model, else the model's own."""
    p = next(pre.model.parameters())
    return scoring_dtype(p.device) if p.dtype == torch.float32 else p.dtype


def _sampler(pre: Pretrained) -> TextGenerator:
    """Samples come from a bfloat16 copy on a CPU: decoding reads every weight once per token, and
    half the bytes is faster on both CPU kinds measured (hardware.generation_dtype;
    benchmarks/README.md)."""
    device = next(pre.model.parameters()).device
    return hf_generator(
        pre.name,
        loaded=pre,
        dtype=generation_dtype("auto", device) if device.type == "cpu" else None,
    )


def tokenize_blocks(
    tok: PreTrainedTokenizerBase,
    chunks: Iterator[str],
    block_size: int,
    max_tokens: int | None = None,
) -> BlockDataset:
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


def _text_chunks(
    data: CorpusSplit | TokenCorpus,
    part: str,
    limit: int | None,
    size: int = 1 << 18,
    spread: int | None = None,
) -> Iterator[str]:
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
        # a CorpusSplit holds text, a TokenCorpus token ids
        yield data.tokenizer.decode(piece.tolist()) if isinstance(data, TokenCorpus) else piece


# characters tokenized per training token needed: ~1.5x the data a BPE needs
CHARS_PER_TOKEN_SPREAD = 6


def _datasets(
    tok: PreTrainedTokenizerBase,
    data: CorpusSplit | TokenCorpus,
    cfg: FinetuneConfig,
    tokens_needed: int | None,
) -> tuple[BlockDataset, BlockDataset]:
    """Training blocks (all of the text for an epoch budget, else about 1.5x the tokens the steps
    use, from across the text) and the first ``eval_blocks`` validation blocks."""
    spread = None if tokens_needed is None else tokens_needed * CHARS_PER_TOKEN_SPREAD
    train_ds = tokenize_blocks(
        tok, _text_chunks(data, "train", cfg.train_chars, spread=spread), cfg.block_size
    )
    # the periodic val loss uses the first eval_blocks blocks
    val_ds = tokenize_blocks(
        tok,
        _text_chunks(data, "val", cfg.eval_blocks * cfg.block_size * 16),
        cfg.block_size,
        cfg.eval_blocks * cfg.block_size,
    )
    if len(train_ds) < 1 or len(val_ds) < 1:
        raise ConfigError(
            f"the text is too short for one block of {cfg.block_size} tokens; "
            "use --block-size smaller"
        )
    return train_ds, val_ds


def _with_lora(model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[torch.nn.Module, int]:
    """The model to train and its trainable parameter count (LoRA adapters when lora_r > 0)."""
    if cfg.lora_r == 0:
        return model, sum(p.numel() for p in model.parameters())
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear" if cfg.lora_layers is None else _top_linears(model, cfg),
            task_type="CAUSAL_LM",
        ),
    )
    return adapted, sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def _top_linears(model: PreTrainedModel, cfg: FinetuneConfig) -> list[str]:
    """The names of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) inside the top
    ``cfg.lora_layers`` transformer blocks: what ``target_modules="all-linear"`` takes there."""
    from transformers.pytorch_utils import Conv1D

    n = model.config.num_hidden_layers
    blocks = next(
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n
    )
    return [
        f"{blocks[0]}.{i}.{sub}"
        for i in range(max(0, n - (cfg.lora_layers or n)), n)
        for sub, m in blocks[1][i].named_modules()
        if isinstance(m, torch.nn.Linear | Conv1D)
    ]


def _step_plan(
    cfg: FinetuneConfig, tokens_per_step: int, device: torch.device
) -> tuple[int | None, int | None, TimeBudget | None]:
    """(optimizer steps, training tokens to tokenize, time budget). With only a time budget the
    steps are an upper bound that the TimeBudget replaces once it has timed a few steps, and the
    data is what a fast machine of this kind would use (fewer tokens repeat, more are not read).
    With epochs, all of the text is tokenized and the steps (None without ``max_steps``) are
    capped by the epochs' once the blocks are counted."""
    if cfg.max_steps is None and cfg.epochs is None:
        assert cfg.max_time is not None, "FinetuneConfig checks that some budget is given"
        # well above what a 135M model trains at
        tokens_per_s = 20_000 if device.type == "cuda" else 2_000
        return (
            1_000_000,
            int(cfg.max_time * tokens_per_s),
            TimeBudget(cfg.max_time, cfg.eval_interval),
        )
    if cfg.epochs or cfg.max_steps is None:
        return cfg.max_steps, None, None
    return cfg.max_steps, cfg.max_steps * tokens_per_step, None


def _training_args(
    cfg: FinetuneConfig,
    device: torch.device,
    ckpt_dir: Path,
    max_steps: int,
    resume: bool,
    progress: bool,
) -> TrainingArguments:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=max_steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip,
        eval_strategy="steps",
        eval_steps=cfg.eval_interval,
        save_strategy="steps",
        save_steps=cfg.eval_interval,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, cfg.eval_interval)),
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=resolve_precision(cfg.precision, device, "fine-tuning") == torch.bfloat16,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        eval_on_start=not resume,
        save_only_model=False,
    )


def _save(
    model: torch.nn.Module,
    pre: Pretrained,
    cfg: FinetuneConfig,
    out: Path,
    steps: int,
    corpus: CorpusId,
) -> tuple[PreTrainedModel, Path]:
    """Merge LoRA adapters if any and write ``model_hf_finetuned/`` (plain transformers can load
    it). ``model`` is what ``_with_lora`` gave the Trainer: a PeftModel with LoRA, else the
    pretrained model itself; either way a pretrained model is saved and returned."""
    if cfg.lora_r > 0:
        model = cast("PeftModel", model).merge_and_unload()
    merged = cast("PreTrainedModel", model)
    final_dir = out / RunDir.FINETUNED
    if is_main_process():  # whole or not at all: a full disk keeps the previous folder
        with files.atomic_folder(final_dir) as tmp, no_shard_bar():
            merged.save_pretrained(tmp)
            pre.tokenizer.save_pretrained(tmp)
            FinetunedModelInfo(pre.name, cfg, steps, corpus, command_line()).save(
                tmp / RunDir.FINETUNED_INFO
            )
    return merged, final_dir


def _last_checkpoint(ckpt_dir: Path, resume: bool) -> Path | None:
    """The newest checkpoint written to the end, when resuming."""
    found = complete_checkpoints(ckpt_dir) if resume and ckpt_dir.exists() else []
    return found[-1] if found else None


def _check_corpus(out: Path, last: Path | None, corpus: CorpusId, allow_new_corpus: bool) -> None:
    """A resumed fine-tuning run goes on with the text its checkpoint (or, before the first
    checkpoint, its before-score) was made on; another one only when asked."""
    before = out / RunDir.BEFORE
    recorded, where = (checkpoint_corpus(last), last) if last is not None else (None, before)
    if recorded is None and before.exists():
        with suppress(TornRecord):  # scored again then (_score_before)
            recorded, where = BeforeFinetune.load(before).corpus, before
    try:
        check_same_corpus(
            recorded,
            corpus,
            where,
            "start afresh with another --out, or pass --allow-new-corpus with --resume to "
            "continue fine-tuning on the new text",
        )
    except CorpusChanged as e:
        if not allow_new_corpus:
            raise
        logger.warning("%s; continuing on the new text (--allow-new-corpus)", str(e).split(";")[0])


def finetune(
    cfg: FinetuneConfig,
    data: CorpusSplit | TokenCorpus,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    keep_checkpoints: bool = True,
    before: Score | None = None,
    allow_new_corpus: bool = False,
    budget_covers: Literal["command", "training"] = "command",
    tracker: Tracker | None = None,
) -> FinetuneResult:
    """Score before, fine-tune, save ``model_hf_finetuned/``, score after. See module docstring.
    ``keep_checkpoints=False`` deletes the Trainer's resumable checkpoints (weights and optimizer
    state, ~1.6 GB for a 135M model) once the fine-tuned model is saved. ``before``: the pretrained
    model's score on the same validation text when the caller has it already (the crossover lesson
    scores it once for all its runs); then it is not scored again and no samples are made before.
    ``cfg.max_time`` bounds the whole command from loading the model to saving the result
    (``budget_covers="training"``: the training alone, as the from-scratch track's budget).
    ``tracker`` (see train/tracking.py) also receives each evaluation and the Trainer's logs.
    Resuming on another text than the run's raises ``CorpusChanged`` unless ``allow_new_corpus``;
    a full disk ``WriteFailed``, a refused allocation ``OutOfMemory``, each in one line."""
    out = Path(out_dir)
    device = pick_device(cfg.device)
    clock = Phases()
    try:
        pre = load_pretrained(cfg.pretrained, device)  # fails before anything is written
        clock.mark("load")
        # under torchrun rank 0 holds it for all ranks
        with RunDir(out).writer_lock("nanobard finetune") if is_main_process() else nullcontext():
            return _finetune(cfg, data, out, resume, progress, keep_checkpoints, before, pre,
                             device, allow_new_corpus, clock, budget_covers,
                             tracker or Tracker())  # fmt: skip
    except (RuntimeError, MemoryError) as e:
        oom = out_of_memory(e, device, _lower_memory(cfg))
        if oom is None:
            raise
        raise oom from None


SAVE_S_PER_MPARAM = 0.03  # merging LoRA and saving: ~2.6 s for SmolLM2-135M (AMX Xeon, tmpfs)
MIN_TRAIN_SHARE = 0.1  # of --max-time, trained even when scoring and samples take the rest


class Phases:
    """Wall seconds of a command's parts, in order: ``mark(name)`` closes the part that ran
    since the previous mark."""

    def __init__(self) -> None:
        self.start = self._t = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.last = 0.0

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.last = self.phases[name] = round(now - self._t, 2)
        self._t = now

    def split(self, first: str, first_s: float, rest: str) -> None:
        """Close the part since the last mark as two: ``first`` took ``first_s`` of it."""
        self.mark(rest)
        whole = self.phases.pop(rest)
        self.phases[first] = round(min(first_s, whole), 2)
        self.phases[rest] = round(whole - self.phases[first], 2)

    def spent(self) -> float:
        return time.perf_counter() - self.start


def _training_time(cfg: FinetuneConfig, clock: Phases, after_s: float) -> float | None:
    """The seconds training may take when ``--max-time`` bounds the whole command: the budget
    less what is spent and what scoring, sampling and saving after training will take (as long
    as before it), at least MIN_TRAIN_SHARE of the budget; None without a time budget."""
    if cfg.max_time is None:
        return None
    left = cfg.max_time - clock.spent() - after_s
    floor = MIN_TRAIN_SHARE * cfg.max_time
    if left < floor:
        logger.warning(
            "the %.0f s budget leaves %.0f s for training after loading, scoring and samples "
            "(%.0f s spent, ~%.0f s to come); training %.0f s, so the command takes longer: raise "
            "--max-time or lower --score-chars / --sample-tokens",
            cfg.max_time, max(0.0, left), clock.spent(), after_s, floor,
        )  # fmt: skip
    return max(floor, left)


def _log_split(cfg: FinetuneConfig, clock: Phases, train_time: float, after_s: float) -> None:
    """One line: what the time budget was split into."""
    done = ", ".join(f"{k} {v:.1f}" for k, v in clock.phases.items())
    logger.info(
        "time budget %.0f s: %.0f s spent (%s), %.0f s for training, ~%.0f s kept for the "
        "score, samples and saving after it",
        cfg.max_time, clock.spent(), done, train_time, after_s,
    )  # fmt: skip


def _lower_memory(cfg: FinetuneConfig) -> str:
    """The flags that lower fine-tuning's memory, with their values now."""
    lora = "" if cfg.lora_r else ", or train LoRA adapters only (--lora-r 8)"
    return (
        f"lower --batch-size (now {cfg.batch_size}; raise --grad-accum, now {cfg.grad_accum}, to "
        f"keep the tokens per step) or --block-size (now {cfg.block_size}){lora}"
    )


def _finetune(
    cfg: FinetuneConfig,
    data: CorpusSplit | TokenCorpus,
    out: Path,
    resume: bool,
    progress: bool,
    keep_checkpoints: bool,
    before: Score | None,
    pre: Pretrained,
    device: torch.device,
    allow_new_corpus: bool,
    clock: Phases,
    budget_covers: str,
    tracker: Tracker,
) -> FinetuneResult:
    """finetune() with the folder's lock held."""
    from transformers import EarlyStoppingCallback

    out.mkdir(parents=True, exist_ok=True)
    corpus = data.identity
    ckpt_dir = out / RunDir.HF_CHECKPOINTS
    last = _last_checkpoint(ckpt_dir, resume)
    if resume:
        _check_corpus(out, last, corpus, allow_new_corpus)
    score_text = data.val_text(cfg.score_chars or None)  # 0 or None: all of it
    samples_s = 0.0
    if before is None:
        scored, reused = _score_before(pre, score_text, cfg, out, resume, progress, corpus)
        before, samples_before, samples_s = scored.score, scored.samples, scored.samples_seconds
        if reused:
            clock.mark("before_reused")  # a resumed run's finetune_before.json
        else:
            clock.split("score_before", scored.score.seconds, "samples_before")
    else:
        samples_before = []
    precision = getattr(torch, before.precision, torch.float32)  # the after-score's: the same
    # under torchrun each process takes batch_size blocks
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.block_size * world
    # --max-time bounds the whole command: training gets what the parts around it leave
    after_s = before.seconds + samples_s + SAVE_S_PER_MPARAM * pre.num_params / 1e6
    train_time = _training_time(cfg, clock, after_s) if budget_covers == "command" else None
    plan_cfg = cfg if train_time is None else replace(cfg, max_time=train_time)
    max_steps, tokens_needed, budget = _step_plan(plan_cfg, tokens_per_step, device)
    train_time = train_time or cfg.max_time  # a training-only budget: the config's
    train_ds, val_ds = _datasets(pre.tokenizer, data, cfg, tokens_needed)
    clock.mark("data")
    if train_time is not None and budget_covers == "command":  # tokenizing came out of its share
        train_time = max(MIN_TRAIN_SHARE * (cfg.max_time or 0), train_time - clock.last)
        budget = None if budget is None else TimeBudget(train_time, cfg.eval_interval)
        _log_split(cfg, clock, train_time, after_s)
    if cfg.epochs is not None:
        by_epochs = math.ceil(cfg.epochs * len(train_ds) / (cfg.batch_size * cfg.grad_accum))
        max_steps = min(max_steps or by_epochs, by_epochs)
    assert max_steps is not None, "max_steps, the epochs or the time budget set the steps"
    model, trainable = _with_lora(pre.model, cfg)

    run = RunDir(out)
    metrics_path = run / RunDir.METRICS_HF
    steps_before = None if last is None else int(last.name.split("-")[-1])
    if is_main_process():  # rows past the checkpoint resumed from would be evaluated again
        if steps_before is None:
            metrics_path.unlink(missing_ok=True)
        else:
            run.trim_metrics(steps_before, RunDir.METRICS_HF)
    t0 = time.perf_counter()
    cb = metrics_callback(metrics_path, tokens_per_step, t0, train_time, budget, tracker)
    callbacks = [cb] + ([EarlyStoppingCallback(cfg.patience)] if cfg.patience else [])
    trainer = trainer_class(budget, corpus, cfg.lora_plus)(
        model=model,
        args=_training_args(cfg, device, ckpt_dir, max_steps, last is not None, progress),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        callbacks=callbacks,
    )
    quiet_progress(trainer, budget if progress else None, progress)
    bf16_cpu = device.type == "cpu" and trainer.args.bf16
    with cpu_bfloat16_training(model, enabled=bf16_cpu):
        trainer.train(resume_from_checkpoint=None if last is None else str(last))
    train_seconds = time.perf_counter() - t0
    clock.mark("train")
    steps = trainer.state.global_step
    assert trainer.model is not None, "the Trainer was given a model"
    finetuned, final_dir = _save(trainer.model, pre, cfg, out, steps, corpus)
    if not keep_checkpoints and is_main_process():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    clock.mark("save")

    logger.info("scoring the fine-tuned model")
    after = score_hf(finetuned, pre.tokenizer, score_text, f"{pre.name} (after)",
                     progress=progress, precision=precision)  # fmt: skip
    clock.mark("score_after")
    after_pre = Pretrained(
        model=finetuned, tokenizer=pre.tokenizer, name=str(final_dir), reason="fine-tuned"
    )
    samples = samples_before + make_samples(
        _sampler(after_pre), "after", cfg.sample_tokens, cfg.prompts
    )
    clock.mark("samples_after")
    session_tokens = (steps - (steps_before or 0)) * tokens_per_step
    res = FinetuneResult(
        out_dir=out,
        model_name=pre.name,
        reason=pre.reason,
        num_params=pre.num_params,
        trainable_params=trainable,
        steps=steps,
        tokens=steps * tokens_per_step,
        train_seconds=train_seconds,
        tokens_per_s=session_tokens / train_seconds if train_seconds > 0 else 0.0,
        before=before,
        after=after,
        history=run.read_metrics(RunDir.METRICS_HF) if metrics_path.exists() else cb.rows,
        samples=samples,
        time_budget_s=cfg.max_time,
        phases=dict(clock.phases),
    )
    logger.info("fine-tuning took %.0f s: %s", res.wall_seconds,
                ", ".join(f"{k} {v:.1f}" for k, v in res.phases.items()))  # fmt: skip
    if is_main_process():
        files.write_text(final_dir / "README.md", finetuned_model_card(res, cfg, corpus))
        res.save(run / RunDir.FINETUNE_RESULT)
    return res


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded GGUF's source


def finetuned_model_card(res: FinetuneResult, cfg: FinetuneConfig, corpus: CorpusId) -> str:
    """README.md of ``model_hf_finetuned/``: the base model, how it was fine-tuned, its scores
    before and after on the same validation text, the command, how to load it."""
    base = EMBEDDED_HUB_ID if res.model_name == EMBEDDED else res.model_name
    hub_base = HUB_ID.fullmatch(base) is not None and not Path(base).exists()
    method = (
        f"LoRA (rank {cfg.lora_r}, alpha {cfg.lora_alpha}), merged into the weights"
        if cfg.lora_r > 0
        else "full fine-tuning (every weight)"
    )
    command = command_line() or "`nanobard.hf.finetune.finetune` (Python)"
    b, a = res.before, res.after
    prompt = cfg.prompts[0] if cfg.prompts else "ROMEO:\n"
    chars = corpus.train_chars + corpus.val_chars
    training = (
        f"{res.steps:,} steps, {res.tokens:,} tokens ({res.tokens // max(1, res.steps):,} a "
        f"step), {res.train_seconds:.0f} s, learning rate {cfg.lr:g}"
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [nanobard, fine-tuned{", lora" if cfg.lora_r > 0 else ""}]
{f"base_model: {base}" + chr(10) if hub_base else ""}---
# {base} fine-tuned with nanobard

`{base}` fine-tuned on `{corpus.name}` ({chars:,} characters, SHA-256
`{corpus.sha256[:12]}...`) with nanobard and the Hugging Face Trainer.

| | |
|---|---|
| base model | `{base}` ({res.num_params:,} parameters; {res.reason}) |
| method | {method}; {res.trainable_params:,} parameters trained |
| training | {training} |
| bits per character before | {b.bits_per_char:.4f} ({b.chars:,} validation characters scored) |
| bits per character after | {a.bits_per_char:.4f} (the same characters) |
| fine-tuned with | `{command}` |

Bits per character divide the total negative log-likelihood by the characters scored, so they
compare models with different tokenizers (lower is better; the validation text was never trained
on).

```python
from transformers import pipeline

pipe = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")
print(pipe({prompt!r}, max_new_tokens=60, do_sample=True, temperature=0.8)[0]["generated_text"])
```

`generation_config.json` holds the base model's generation settings; `nanobard.json` records
what made this folder (the base model, the full configuration, the corpus).
"""
