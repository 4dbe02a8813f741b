"""``nanobard run``: the whole study, stage by stage, into one folder.

corpus -> scratch training -> fine-tuning -> evaluation -> attention -> interpretability -> samples
-> figures -> report

Each finished stage's result (a record, see rundir.py) is kept in ``stages.json``; running again
with the same ``--out`` skips finished stages and resumes an interrupted training stage from its
checkpoint. ``force=True`` redoes everything. The ``quick`` study gives its two training stages a
wall-time budget each (steps are sized from the speed measured at their start), so it takes about
the same time on any machine and the report says what each budget bought.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nanobard import config as C
from nanobard.config import SHAKESPEARE_PROMPTS, StudyPreset
from nanobard.data.prompts import SHAKESPEARE_ATTENTION_TEXT, is_shakespeare
from nanobard.data.tokens import TokenCorpus, load_tokens
from nanobard.hf.finetune import FinetuneResult, Sample
from nanobard.rundir import RunDir
from nanobard.study.records import (
    STAGES,
    AttentionStudy,
    CorpusInfo,
    Headline,
    InterpretStudy,
    Scores,
    StudyState,
    headline,
)
from nanobard.train.loop import TrainResult

logger = logging.getLogger(__name__)


class Study:
    """Runs the stages; each stage's result lands in ``self.state`` and in stages.json."""

    def __init__(
        self,
        out: Path,
        preset: StudyPreset,
        corpus: str,
        data_path: str | None,
        scratch_overrides: dict[str, Any],
        finetune_overrides: dict[str, Any],
        force: bool,
        progress: bool,
        on_stage: Callable[[int, str], None] | None = None,
        prompts: tuple[str, ...] | None = None,
    ):
        self.run_dir, self.preset, self.force, self.progress = RunDir(out), preset, force, progress
        self.corpus_name, self.data_path, self.user_prompts = corpus, data_path, prompts
        sp = C.get_preset(preset.scratch)
        train = (
            C.resolve(sp.train, {"max_time": preset.scratch_time})
            if preset.scratch_time
            else sp.train
        )
        self.model_cfg = C.resolve(sp.model, scratch_overrides)
        self.train_cfg = C.resolve(train, scratch_overrides)
        self.ft_cfg = C.resolve(preset.finetune, finetune_overrides)
        self.on_stage = on_stage or (lambda i, s: None)
        self.state = StudyState()
        self._tokens: TokenCorpus | None = None

    @property
    def out(self) -> Path:
        return self.run_dir.path

    def run(self) -> StudyState:
        self.run_dir.ensure()
        stages_path = self.run_dir / RunDir.STAGES
        if self.force:
            stages_path.unlink(missing_ok=True)
        if stages_path.exists():
            self.state = StudyState.load(stages_path)
        for i, stage in enumerate(STAGES):
            self.on_stage(i, stage)
            if getattr(self.state, stage) is not None:
                logger.info("stage %s already done; skipping (use --force to redo)", stage)
                continue
            t = time.perf_counter()
            setattr(self.state, stage, getattr(self, f"stage_{stage}")())
            self.state.seconds[stage] = round(time.perf_counter() - t, 2)
            self.state.save(stages_path)
        return self.state

    def _corpus(self) -> TokenCorpus:
        """The corpus as token ids, from the token cache (encoded on the first run)."""
        if self._tokens is None:
            self._tokens = load_tokens(self.corpus_name, self.data_path)
        return self._tokens

    def _score_text(self) -> str:
        return self._corpus().val_text(self.ft_cfg.score_chars or None)

    # ---------------------------------------------------------------------------------------
    # stages

    def stage_corpus(self) -> CorpusInfo:
        from nanobard.data.corpus import check_fits
        from nanobard.data.prompts import attention_text, corpus_prompts

        c = self._corpus()
        check_fits(c, self.model_cfg.block_size)
        if self.user_prompts:
            prompts = list(self.user_prompts)
        elif is_shakespeare(c.name):
            prompts = list(SHAKESPEARE_PROMPTS)
        else:  # openings of validation lines, in the corpus's own characters: any language works
            prompts = corpus_prompts(c.val_text(200_000), c.tokenizer.chars, n=3)
        text = (
            SHAKESPEARE_ATTENTION_TEXT
            if is_shakespeare(c.name)
            else attention_text(c.val_text(200_000), c.tokenizer.chars)
        )
        self._write_config(prompts, text)
        return CorpusInfo(
            c.name,
            len(c.train),
            len(c.val),
            len(self._score_text()),
            c.tokenizer.vocab_size,
            prompts,
            text,
        )

    def _write_config(self, prompts: list[str], text: str) -> None:
        (self.run_dir / RunDir.CONFIG).write_text(
            json.dumps(
                {
                    "preset": self.preset.name,
                    "corpus": self.data_path or self.corpus_name,
                    "scratch": {"model": asdict(self.model_cfg), "train": asdict(self.train_cfg)},
                    "finetune": asdict(self.ft_cfg),
                    "prompts": prompts,
                    "attention_text": text,
                },
                indent=2,
            )
        )

    def stage_scratch(self) -> TrainResult:
        from nanobard.interp.circuits import record_head_scores
        from nanobard.train.loop import train

        resume = not self.force and (self.run_dir / RunDir.LAST).exists()
        return train(
            self.model_cfg,
            self.train_cfg,
            self._corpus(),
            self.out,
            resume=resume,
            progress=self.progress,
            config_name=RunDir.CONFIG_SCRATCH,
            on_eval=[record_head_scores],
        )

    def stage_finetune(self) -> FinetuneResult:
        from nanobard.hf.finetune import finetune

        resume = not self.force and (self.run_dir / RunDir.BEFORE).exists()
        cfg = C.resolve(self.ft_cfg, {"prompts": tuple(self.state.corpus.prompts)})
        return finetune(
            cfg,
            self._corpus(),
            self.out,
            resume=resume,
            progress=self.progress,
            keep_checkpoints=False,
        )  # 1.6 GB of optimizer state

    def stage_evaluate(self) -> Scores:
        from nanobard.model.checkpoint import load_model
        from nanobard.model.evaluate import score_scratch

        model, tok, _ = load_model(self.run_dir / RunDir.BEST)
        text = self._score_text()
        score = score_scratch(model, tok, text, "from scratch", progress=self.progress)
        return Scores(score, self.state.finetune.before, self.state.finetune.after, len(text))

    def stage_attention(self) -> AttentionStudy:
        from nanobard.study.stages import attention_stage

        return attention_stage(self.run_dir, self.state)

    def stage_interpret(self) -> InterpretStudy:
        from nanobard.study.stages import interpret_stage

        return interpret_stage(self.run_dir, self.state, self._corpus(), self.ft_cfg.pretrained)

    def stage_samples(self) -> list[Sample]:
        from nanobard.hf.finetune import make_samples
        from nanobard.hf.pretrained import scratch_generator

        gen = scratch_generator(self.run_dir / RunDir.BEST)
        rows = make_samples(
            gen, "scratch", self.preset.sample_tokens, tuple(self.state.corpus.prompts)
        )
        rows += self.state.finetune.samples
        (self.run_dir / RunDir.SAMPLES).write_text(samples_markdown(rows))
        return rows

    def stage_figures(self) -> list[str]:
        from nanobard.study.stages import figures_stage

        head = headline(self.state)
        head.save(self.run_dir / RunDir.HEADLINE)
        return figures_stage(self.run_dir, self.state, head)

    def stage_report(self) -> str:
        from nanobard.study.report import write_report

        return str(write_report(self.run_dir, self.state, headline(self.state), machine_info()))


def samples_markdown(rows: list[Sample]) -> str:
    lines = [
        "# Samples",
        "",
        "Same prompts, decoding settings and seeds for every model.",
        "Strategies: greedy (argmax), top_k (k=40, temperature 1.0), temperature (0.8).",
        "",
    ]
    for prompt in dict.fromkeys(r.prompt for r in rows):
        lines.append(f"## Prompt: `{prompt.strip()!s}`")
        for r in rows:
            if r.prompt == prompt:
                body = (r.prompt + r.text).replace("```", "'''")
                lines += ["", f"### {r.model} — {r.strategy}", "", "```text", body, "```"]
        lines.append("")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    from nanobard.hardware import cpu_info

    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": cpu.model,
        "cpu kind": f"{cpu.kind} (torch capability {cpu.capability})",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@dataclass
class StudyOutcome:
    state: StudyState
    headline: Headline
    report: str


def run_study(
    out: str | os.PathLike,
    preset: str = "quick",
    corpus: str = "shakespeare",
    data_path: str | None = None,
    scratch_overrides: dict[str, Any] | None = None,
    finetune_overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    on_stage: Callable[[int, str], None] | None = None,
    prompts: tuple[str, ...] | None = None,
) -> StudyOutcome:
    study = Study(
        Path(out),
        C.get_study_preset(preset),
        corpus,
        data_path,
        scratch_overrides or {},
        finetune_overrides or {},
        force,
        progress,
        on_stage,
        prompts,
    )
    state = study.run()
    return StudyOutcome(state, headline(state), state.report)
