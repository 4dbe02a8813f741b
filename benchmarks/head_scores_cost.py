"""What the study's head scores cost at each evaluation, against the evaluation itself: what plain
``nanobard train`` saves now that training takes analyses as on_eval callbacks.

    .venv/bin/python benchmarks/head_scores_cost.py quick cpu-10min

For each preset's model (random weights, in training mode, as the loop calls its callbacks):
``record_head_scores`` and the loop's two ``estimate_loss`` passes, median of 6 after a warm-up.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from nanobard.config import resolve_preset, with_overrides
from nanobard.data.tokens import load_tokens
from nanobard.hardware import cpu_info
from nanobard.interp.circuits import record_head_scores
from nanobard.model.gpt import GPT
from nanobard.records import EvalRow
from nanobard.train.step import estimate_loss


def main(presets: list[str]) -> None:
    data = load_tokens("shakespeare")
    print(f"{cpu_info().kind}, {torch.get_num_threads()} threads")
    for preset in presets:
        m, t = resolve_preset(preset, {})
        model = GPT(with_overrides(m, {"vocab_size": data.tokenizer.vocab_size})).train()
        row = EvalRow(step=0, tokens=0, val_loss=1.0)
        heads, evals = [], []
        for _ in range(7):
            t0 = time.perf_counter()
            record_head_scores(model, row)
            heads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for part in (data.val, data.train):
                estimate_loss(
                    model,
                    part,
                    m.block_size,
                    t.batch_size,
                    t.eval_iters,
                    1,
                    torch.device("cpu"),
                    t.dtype,
                )
            evals.append(time.perf_counter() - t0)
        h, e = statistics.median(heads[1:]), statistics.median(evals[1:])
        print(
            f"{preset}: head scores {h * 1e3:.1f} ms, evaluation {e * 1e3:.1f} ms "
            f"({h / e:.1%} of it)"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["quick", "cpu-10min"])
