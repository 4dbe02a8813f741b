"""``nanobard run``: the whole study, stage by stage, into one folder.

corpus -> scratch training -> fine-tuning -> evaluation -> attention -> samples -> figures -> report

Each finished stage is recorded in ``stages.json`` with its results; running again with the same
``--out`` skips finished stages and resumes an interrupted training stage from its checkpoint.
``force=True`` redoes everything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nanobard import config as C
from nanobard.finetune import FINETUNED_NAME, FinetuneConfig
from nanobard.tokens import TokenCorpus, load_tokens

logger = logging.getLogger(__name__)

STAGES = ("corpus", "scratch", "finetune", "evaluate", "attention", "samples", "figures", "report")
ATTENTION_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    scratch: str  # a from-scratch preset name
    finetune: FinetuneConfig
    sample_tokens: int = 200  # from-scratch sample length (characters)
    scratch_time: float | None = None  # a wall-time budget in seconds that replaces the preset's step budget


# Fine-tuning a 135M model on a CPU: 60 steps, scores on the first 20,000 validation characters.
_CPU_FINETUNE = FinetuneConfig(max_steps=60, eval_interval=20, score_chars=20_000, sample_tokens=60)

STUDY_PRESETS: dict[str, StudyPreset] = {
    "quick": StudyPreset(
        "quick", "the whole study in about 12 minutes on 2 CPU cores", "quick", _CPU_FINETUNE,
    ),
    "cpu-10min": StudyPreset(
        "cpu-10min", "the quick study with the best from-scratch model that 10 minutes of CPU buy (the cpu-10min "
        "preset): about 20 minutes on 2 CPU cores", "cpu-10min", _CPU_FINETUNE,
    ),
    "seed": StudyPreset(
        "seed", "the seed notebook's scale: scratch ~690K parameters for 10 epochs, fine-tuning 3 epochs "
        "(hours on a CPU)", "seed",
        FinetuneConfig(max_steps=None, epochs=3.0, eval_interval=200, eval_blocks=64, patience=3,
                       score_chars=None, sample_tokens=100),
    ),
    "gpu": StudyPreset(
        "gpu", "larger, for a CUDA machine: the 10.7M scratch model, 1 epoch of fine-tuning, whole-text scores",
        "gpu",
        FinetuneConfig(max_steps=None, epochs=1.0, batch_size=16, block_size=256, eval_interval=200,
                       eval_blocks=64, score_chars=None, sample_tokens=100),
    ),
}


class Study:
    """Runs the stages; each stage's result lands in ``self.state[stage]`` and in stages.json."""

    def __init__(self, out: Path, preset: StudyPreset, corpus: str, data_path: str | None,
                 scratch_overrides: dict[str, Any], finetune_overrides: dict[str, Any], force: bool,
                 progress: bool, on_stage: Callable[[int, str], None] | None = None):
        self.out, self.preset, self.force, self.progress = out, preset, force, progress
        self.corpus, self.data_path = corpus, data_path
        sp = C.get_preset(preset.scratch)
        train = sp.train
        if preset.scratch_time is not None:  # steps sized from the measured speed (see train.py)
            train = dataclasses.replace(train, max_steps=None, epochs=None, max_time=preset.scratch_time)
        self.model_cfg = C.with_overrides(sp.model, scratch_overrides)
        self.train_cfg = C.with_overrides(train, scratch_overrides)
        self.ft_cfg = C.with_overrides(preset.finetune, finetune_overrides)
        self.on_stage = on_stage or (lambda i, s: None)
        self.state_path = out / "stages.json"
        self.state: dict[str, Any] = {}
        self.corpus_tokens: TokenCorpus | None = None

    # ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.force and self.state_path.exists():
            self.state_path.unlink()
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
        self._write_config()
        t0 = time.perf_counter()
        for i, stage in enumerate(STAGES):
            self.on_stage(i, stage)
            if stage in self.state and not self.force:
                logger.info("stage %s already done; skipping (use --force to redo)", stage)
                continue
            t = time.perf_counter()
            result = getattr(self, f"stage_{stage}")()
            result["stage_seconds"] = round(time.perf_counter() - t, 2)
            self.state[stage] = result
            self.state_path.write_text(json.dumps(self.state, indent=2))
        self.state["total_seconds_this_call"] = round(time.perf_counter() - t0, 1)
        return self.state

    def _write_config(self) -> None:
        (self.out / "config.json").write_text(json.dumps({
            "preset": self.preset.name, "corpus": self.data_path or self.corpus,
            "scratch": {"model": asdict(self.model_cfg), "train": asdict(self.train_cfg)},
            "finetune": asdict(self.ft_cfg), "attention_text": ATTENTION_TEXT,
        }, indent=2))

    def _split(self) -> TokenCorpus:
        """The corpus as token ids, from the token cache (encoded on the first run)."""
        if self.corpus_tokens is None:
            self.corpus_tokens = load_tokens(self.corpus, self.data_path)
        return self.corpus_tokens

    def _score_text(self) -> str:
        return self._split().val_text(self.ft_cfg.score_chars or None)

    # ---------------------------------------------------------------------------------------
    # stages

    def stage_corpus(self) -> dict[str, Any]:
        s = self._split()
        from nanobard.data import check_fits

        check_fits(s, self.model_cfg.block_size)
        return {"name": s.name, "train_chars": len(s.train), "val_chars": len(s.val),
                "score_chars": len(self._score_text()), "distinct_chars": s.tokenizer.vocab_size}

    def stage_scratch(self) -> dict[str, Any]:
        from nanobard.train import train

        resume = not self.force and (self.out / "ckpt_last.pt").exists()
        res = train(self.model_cfg, self.train_cfg, self._split(), self.out, resume=resume,
                    progress=self.progress, config_name="config_scratch.json")
        return {"num_params": res.num_params, "steps": res.steps, "tokens": res.tokens,
                "train_seconds": res.elapsed_s, "tokens_per_s": res.tokens_per_s,
                "first_val_loss": res.first_val_loss, "best_val_loss": res.best_val_loss,
                "final_val_loss": res.final_val_loss, "stopped": res.stopped, "history": res.history}

    def stage_finetune(self) -> dict[str, Any]:
        from nanobard.finetune import finetune

        resume = not self.force and (self.out / "finetune_before.json").exists()
        res = finetune(self.ft_cfg, self._split(), self.out, resume=resume, progress=self.progress)
        shutil.rmtree(self.out / "hf_checkpoints", ignore_errors=True)  # 1.6 GB of optimizer state
        return {"name": res.model_name, "reason": res.reason, "num_params": res.num_params,
                "trainable_params": res.trainable_params, "steps": res.steps, "tokens": res.tokens,
                "train_seconds": res.train_seconds, "tokens_per_s": res.tokens_per_s,
                "before": res.before.as_dict(), "after": res.after.as_dict(), "history": res.history,
                "samples": res.samples}

    def stage_evaluate(self) -> dict[str, Any]:
        from nanobard.checkpoint import load_model
        from nanobard.evaluate import score_scratch

        model, tok, _ = load_model(self.out / "model_scratch_best.pt")
        score = score_scratch(model, tok, self._score_text(), "from scratch", progress=self.progress)
        ft = self.state["finetune"]
        return {"scratch": score.as_dict(), "pretrained_before": ft["before"], "pretrained_after": ft["after"],
                "score_chars": len(self._score_text())}

    def stage_attention(self) -> dict[str, Any]:
        from nanobard import attention as A
        from nanobard.checkpoint import load_model
        from nanobard.pretrained import load_pretrained

        model, tok, _ = load_model(self.out / "model_scratch_best.pt")
        text = ATTENTION_TEXT
        if tok.unknown(text):
            text = self._split().val_text(64)
        maps_s = A.scratch_attention(model, tok, text)
        res_s = A.analysis_dict(maps_s, A.head_statistics(maps_s.weights),
                                A.causality_check(model, maps_s.ids, "scratch"), "from scratch")
        pre = load_pretrained(str(self.out / FINETUNED_NAME), attn="eager")
        maps_h = A.hf_attention(pre.model, pre.tokenizer, ATTENTION_TEXT)
        res_h = A.analysis_dict(maps_h, A.head_statistics(maps_h.weights),
                                A.causality_check(pre.model, maps_h.ids, "hf"), f"{self.state['finetune']['name']} fine-tuned")
        torch.save({"scratch": maps_s.weights, "hf": maps_h.weights}, self.out / "attention_weights.pt")
        analysis = {"text": ATTENTION_TEXT, "scratch": res_s, "pretrained": res_h}
        (self.out / "attention_analysis.json").write_text(json.dumps(analysis, indent=2))
        return {"findings": res_s["findings"] + res_h["findings"],
                "causality": {"scratch": res_s["causality"], "pretrained": res_h["causality"]}}

    def stage_samples(self) -> dict[str, Any]:
        from nanobard.pretrained import scratch_generator
        from nanobard.sampling import STRATEGIES

        gen = scratch_generator(self.out / "model_scratch_best.pt")
        rows = []
        for prompt in self.ft_cfg.prompts:
            for strategy in ("greedy", "top_k", "temperature"):
                try:
                    text = gen.complete(prompt, self.preset.sample_tokens, STRATEGIES[strategy])
                except ValueError as e:  # a prompt with characters the corpus never had
                    text = f"[cannot encode this prompt: {e}]"
                rows.append({"model": "scratch", "strategy": strategy, "prompt": prompt, "text": text})
        rows += self.state["finetune"]["samples"]
        (self.out / "samples.md").write_text(samples_markdown(rows))
        return {"samples": rows}

    def stage_figures(self) -> dict[str, Any]:
        from nanobard import plots
        from nanobard.attention import HeadStats, most_interesting_layer

        s, f = self.state["scratch"], self.state["finetune"]
        plots.training_progress(s["history"], f"From-scratch GPT ({s['num_params']:,} parameters)",
                                self.out / "training_progress_scratch.png")
        plots.training_progress(f["history"], f"Fine-tuning {f['name']} ({f['num_params']:,} parameters)",
                                self.out / "finetuning_progress_hf.png")
        summary = self.headline()
        plots.model_comparison(summary, self.out / "model_comparison.png")
        w = torch.load(self.out / "attention_weights.pt", weights_only=True)
        an = json.loads((self.out / "attention_analysis.json").read_text())
        ls, lh = (most_interesting_layer([HeadStats(**h) for h in an[k]["heads_stats"]])
                  for k in ("scratch", "pretrained"))
        plots.attention_heads(w["scratch"], an["scratch"]["tokens"], ls,
                              f"From-scratch GPT: all {w['scratch'].shape[1]} heads of layer {ls} "
                              "(the layer of its strongest previous-token head)",
                              self.out / "attention_weights_scratch.png")
        plots.attention_heads(w["hf"], an["pretrained"]["tokens"], lh,
                              f"{f['name']} fine-tuned: {min(8, w['hf'].shape[1])} of {w['hf'].shape[1]} heads of "
                              f"layer {lh} (the layer of its strongest previous-token head)",
                              self.out / "attention_weights_hf.png")
        (self.out / "metrics.json").write_text(json.dumps(summary, indent=2))
        return {"scratch_layer": ls, "hf_layer": lh}

    def stage_report(self) -> dict[str, Any]:
        from nanobard.report import write_report

        path = write_report(self.out, self.headline(), self.state, machine_info())
        return {"path": str(path)}

    # ---------------------------------------------------------------------------------------

    def headline(self) -> dict[str, Any]:
        s, f, e = self.state["scratch"], self.state["finetune"], self.state["evaluate"]

        def reduction(h: list[dict[str, Any]]) -> float:
            first, last = h[0]["val_loss"], h[-1]["val_loss"]
            return 100.0 * (first - last) / first

        return {
            "corpus": self.state["corpus"]["name"], "score_chars": e["score_chars"],
            "scratch": {"name": "from scratch", "num_params": s["num_params"], "train_seconds": s["train_seconds"],
                        "tokens_per_s": s["tokens_per_s"], "steps": s["steps"], "best_val_loss": s["best_val_loss"],
                        "loss_reduction_pct": reduction(s["history"]), "bits_per_char": e["scratch"]["bits_per_char"]},
            "pretrained": {"name": f["name"], "reason": f["reason"], "num_params": f["num_params"],
                           "train_seconds": f["train_seconds"], "tokens_per_s": f["tokens_per_s"], "steps": f["steps"],
                           "loss_reduction_pct": reduction(f["history"]),
                           "bits_per_char_before": f["before"]["bits_per_char"],
                           "bits_per_char_after": f["after"]["bits_per_char"]},
            "bpc": {"from scratch": e["scratch"]["bits_per_char"],
                    f"{f['name']} before": f["before"]["bits_per_char"],
                    f"{f['name']} after": f["after"]["bits_per_char"]},
        }


def samples_markdown(rows: list[dict[str, str]]) -> str:
    lines = ["# Samples", "", "Same prompts, decoding settings and seeds for every model.",
             "Strategies: greedy (argmax), top_k (k=40, temperature 1.0), temperature (0.8).", ""]
    for prompt in dict.fromkeys(r["prompt"] for r in rows):
        lines.append(f"## Prompt: `{prompt.strip()!s}`")
        for r in rows:
            if r["prompt"] == prompt:
                body = (r["prompt"] + r["text"]).replace("```", "'''")
                lines += ["", f"### {r['model']} — {r['strategy']}", "", "```text", body, "```"]
        lines.append("")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads()}


def run_study(out: str | os.PathLike, preset: str = "quick", corpus: str = "shakespeare",
              data_path: str | None = None, scratch_overrides: dict[str, Any] | None = None,
              finetune_overrides: dict[str, Any] | None = None, force: bool = False, progress: bool = True,
              on_stage: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    if preset not in STUDY_PRESETS:
        raise C.ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(STUDY_PRESETS)}")
    study = Study(Path(out), STUDY_PRESETS[preset], corpus, data_path, scratch_overrides or {},
                  finetune_overrides or {}, force, progress, on_stage)
    state = study.run()
    return {"state": state, "headline": study.headline(), "report": state["report"]["path"]}


