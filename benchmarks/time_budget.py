"""Does a wall-time budget end on time, and what does it buy? The one rule both tracks share
(train/schedule.py's TimeBudget) against the rule each track had before it was unified.

    .venv/bin/python benchmarks/time_budget.py --track scratch --budget 75 --repeats 2
    .venv/bin/python benchmarks/time_budget.py --track finetune --budget 75 --repeats 2

Rules:
- ``shared``: calibrate on the steps after the first until >= 2 are timed and they cover >= 1% of
  the budget; size with each evaluation's measured cost; refine at every evaluation.
- ``old-scratch``: the from-scratch loop's rule before: time steps 3..13, size with the evaluation
  cost, refine at every evaluation.
- ``old-finetune``: the Trainer's rule before: time >= 2 steps covering >= 5% of the budget, size
  what is left minus a 10% margin (evaluations not measured), never refine.

Prints, per run, the training loop's wall time against the budget, the steps, and the result
(best validation loss in nats/char from scratch; bits/char after fine-tuning on --score-chars).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from nanobard.hardware import cpu_info
from nanobard.train.schedule import TimeBudget


class OldScratchRule(TimeBudget):
    WARMUP_STEPS = 3
    MIN_TIMED = 10
    MIN_FRACTION = 0.0


class OldFinetuneRule(TimeBudget):
    MIN_FRACTION = 0.05
    MARGIN = 0.1

    def refine(self, step: int, eval_s: float) -> int:
        assert self.horizon is not None
        return self.horizon

    def _fit(self, step: int, per_step: float, how: str) -> int:
        left = max(0.0, self.seconds * (1 - self.MARGIN) - self.elapsed())
        self.horizon = max(step + 1, step + int(left / per_step))
        return self.horizon


RULES = {"shared": TimeBudget, "old-scratch": OldScratchRule, "old-finetune": OldFinetuneRule}


def run_scratch(rule: type[TimeBudget], budget: float, out: Path) -> tuple[float, int, float]:
    from nanobard.config import resolve_preset
    from nanobard.data.tokens import load_tokens
    from nanobard.train import loop

    loop.TimeBudget = rule  # type: ignore[misc]
    mcfg, tcfg = resolve_preset("quick", {"max_time": budget})
    res = loop.train(mcfg, tcfg, load_tokens("shakespeare"), out, progress=False)
    return res.elapsed_s, res.steps, res.best_val_loss


def run_finetune(
    rule: type[TimeBudget], budget: float, out: Path, score_chars: int
) -> tuple[float, int, float]:
    from nanobard.config import STUDY_PRESETS, resolve
    from nanobard.data.tokens import load_tokens
    from nanobard.hf import finetune as ft

    ft.TimeBudget = rule  # type: ignore[misc]
    cfg = resolve(
        STUDY_PRESETS["quick"].finetune,
        {
            "max_time": budget,
            "score_chars": score_chars,
            "sample_tokens": 1,
            "prompts": ("ROMEO:\n",),
        },
    )
    res = ft.finetune(cfg, load_tokens("shakespeare"), out, progress=False, keep_checkpoints=False)
    return res.train_seconds, res.steps, res.after.bits_per_char


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--track", choices=("scratch", "finetune"), required=True)
    ap.add_argument("--budget", type=float, default=75.0, help="seconds of training per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--score-chars", type=int, default=4000, help="fine-tuning: validation characters scored"
    )
    args = ap.parse_args()
    rules = ("shared", f"old-{args.track}")
    cpu = cpu_info()
    print(
        f"{cpu.kind} ({cpu.model}), {cpu.threads} threads; {args.track}, budget {args.budget:.0f} s"
    )
    print(f"{'rule':<14}{'run':>4}{'loop s':>9}{'of budget':>11}{'steps':>7}{'result':>9}")
    for name in rules:
        results = []
        for k in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                if args.track == "scratch":
                    r = run_scratch(RULES[name], args.budget, Path(tmp))
                else:
                    r = run_finetune(RULES[name], args.budget, Path(tmp), args.score_chars)
            results.append(r)
            print(
                f"{name:<14}{k + 1:>4}{r[0]:>9.1f}{r[0] / args.budget:>10.0%}{r[1]:>7}{r[2]:>9.4f}",
                flush=True,
            )
        med = [statistics.median(x) for x in zip(*results)]
        print(
            f"{name:<14}{'med':>4}{med[0]:>9.1f}{med[0] / args.budget:>10.0%}"
            f"{med[1]:>7.0f}{med[2]:>9.4f}"
        )


if __name__ == "__main__":
    main()
