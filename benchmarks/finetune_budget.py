"""Which fine-tuning gives the lowest bits/char in a fixed wall-time budget on this machine?

    .venv/bin/python benchmarks/finetune_budget.py --budget 75 [--variants full lora block64]
        [--out DIR]
    (prefix ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    to measure a CPU without native bfloat16)

Each variant fine-tunes the embedded SmolLM2-135M on the default corpus for ``--budget`` seconds
(steps sized from the measured speed, see hf_trainer.TimeBudget) and is scored on the same first
20,000 validation characters. Writes one JSON line per variant; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "full": {},  # full fine-tuning, block 128, batch 8 (FinetuneConfig's defaults)
    "block64": {"block_size": 64, "batch_size": 16},  # the same tokens per step in shorter blocks
    "lora": {
        "lora_r": 8,
        "lr": 1e-3,
    },  # LoRA rank 8 on every linear layer (a higher lr, as usual for LoRA)
    "lora16": {"lora_r": 16, "lr": 1e-3},
    # a budget of ~10 steps leaves the defaults (lr 1e-4, 6 warmup steps) little room to move:
    "full-hi": {"lr": 3e-4, "warmup_steps": 2},  # full fine-tuning, short warmup, higher lr
    "lora-hi": {"lora_r": 8, "lr": 3e-3, "warmup_steps": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget", type=float, default=75.0, help="seconds of fine-tuning per variant")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="bench_results/finetune_budget")
    args = ap.parse_args()

    from nanobard.config import FinetuneConfig
    from nanobard.data.tokens import load_tokens
    from nanobard.hardware import cpu_info
    from nanobard.hf.finetune import finetune

    corpus = load_tokens("shakespeare")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        cfg = FinetuneConfig(
            pretrained="smollm2-135m",
            max_steps=None,
            max_time=args.budget,
            eval_interval=1000,
            patience=None,
            score_chars=20_000,
            prompts=(),
            **VARIANTS[name],
        )
        t = time.perf_counter()
        res = finetune(cfg, corpus, out / name, progress=False)
        row = {
            "variant": name,
            "cpu": cpu_info().kind,
            "budget_s": args.budget,
            "steps": res.steps,
            "tokens": res.tokens,
            "train_seconds": round(res.train_seconds, 1),
            "tokens_per_s": round(res.tokens_per_s, 1),
            "bpc_before": round(res.before.bits_per_char, 4),
            "bpc_after": round(res.after.bits_per_char, 4),
            "total_s": round(time.perf_counter() - t, 1),
        }
        print(json.dumps(row), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
