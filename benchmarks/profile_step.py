"""Profile training steps of the from-scratch GPT with torch.profiler: where does the time go?

    .venv/bin/python benchmarks/profile_step.py --preset fast --steps 20 [--dtype bfloat16]

Prints the operators sorted by their own CPU time and writes the table to bench_results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nanobard.config import get_preset, with_overrides
from nanobard.model.gpt import GPT
from nanobard.train.optim import make_optimizer
from nanobard.train.step import train_step


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["auto", "float32", "bfloat16"],
        help="default: the preset's",
    )
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args()
    p = get_preset(args.preset)
    mcfg = with_overrides(p.model, {"vocab_size": 65, "dropout": 0.0})
    tcfg = with_overrides(p.train, {"dtype": args.dtype})  # None keeps the preset's
    model = GPT(mcfg)
    opt = make_optimizer(model, tcfg, torch.device("cpu"))
    x = torch.randint(0, 65, (tcfg.batch_size, mcfg.block_size))

    def step() -> None:
        train_step(model, opt, [(x, x)], tcfg, torch.device("cpu"))

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(text)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / f"profile-{args.preset}-{tcfg.dtype}.txt").write_text(text)


if __name__ == "__main__":
    main()
