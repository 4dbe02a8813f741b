"""One run folder, one contract: every file of a run is named here, and the metrics files are
read and written here (the typed results themselves are records, see records.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nanobard.records import EvalRow, Record


@dataclass(frozen=True)
class RunDir:
    """The files of a run folder (``nanobard train``, ``finetune`` or ``run``)."""

    path: Path

    # the from-scratch track
    CONFIG = "config.json"  # the full configuration (of the run, or of the whole study)
    CONFIG_SCRATCH = "config_scratch.json"  # the scratch trainer's own, inside a study
    BEST = "model_scratch_best.pt"  # best checkpoint by validation loss
    LAST = "ckpt_last.pt"  # latest checkpoint with optimizer state, for resuming
    METRICS = "metrics.jsonl"
    TRAIN_RESULT = "train_result.json"
    # the pretrained track
    FINETUNED = "model_hf_finetuned"
    FINETUNED_INFO = "nanobard.json"  # inside FINETUNED: the base model, the config, the steps
    HF_CHECKPOINTS = "hf_checkpoints"
    METRICS_HF = "metrics_hf.jsonl"
    BEFORE = "finetune_before.json"
    FINETUNE_RESULT = "finetune_result.json"
    # the lessons
    CROSSOVER = "crossover.json"  # transfer.crossover's result
    # the study
    STAGES = "stages.json"
    HEADLINE = "metrics.json"
    SAMPLES = "samples.md"
    ATTENTION_ANALYSIS = "attention_analysis.json"
    ATTENTION_WEIGHTS = "attention_weights.pt"
    INTERPRET = "interpretability.json"
    REPORT = "report.html"
    FIG_TRAINING_SCRATCH = "training_progress_scratch.png"
    FIG_TRAINING_HF = "finetuning_progress_hf.png"
    FIG_COMPARISON = "model_comparison.png"
    FIG_ATTENTION_SCRATCH = "attention_weights_scratch.png"
    FIG_ATTENTION_HF = "attention_weights_hf.png"
    FIG_ATTENTION = {"scratch": FIG_ATTENTION_SCRATCH, "pretrained": FIG_ATTENTION_HF}
    FIG_INDUCTION = {
        "scratch": "induction_heads_scratch.png",
        "pretrained": "induction_heads_pretrained.png",
    }
    FIG_ABLATION = {
        "scratch": "head_ablation_scratch.png",
        "pretrained": "head_ablation_pretrained.png",
    }
    FIG_LOGIT_LENS = "logit_lens.png"
    FIG_LOSS_BY_POSITION = "loss_by_position.png"
    FIG_HEAD_FORMATION = "head_formation_scratch.png"
    FIG_PATCHING = {
        "scratch": "activation_patching_scratch.png",
        "pretrained": "activation_patching_pretrained.png",
    }

    def write_config(self, config: Record, name: str = CONFIG) -> Path:
        """The one writer of a run's configuration file: the full config it ran with, as a
        record."""
        return config.save(self.path / name)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def ensure(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def read_metrics(self, name: str = METRICS) -> list[EvalRow]:
        """The rows of a metrics file (empty when there is none)."""
        p = self.path / name
        if not p.exists():
            return []
        return [
            EvalRow.from_dict(json.loads(ln)) for ln in p.read_text().splitlines() if ln.strip()
        ]

    def append_metrics(self, row: EvalRow, name: str = METRICS) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(row.to_dict()) + "\n")

    def trim_metrics(self, last_step: int, name: str = METRICS) -> None:
        """On resume, drop rows written after the checkpoint we resume from."""
        p = self.path / name
        if p.exists():
            keep = [r for r in self.read_metrics(name) if r.step <= last_step]
            p.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in keep))
