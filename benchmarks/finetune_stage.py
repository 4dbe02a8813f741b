"""The `quick` study's fine-tuning stage alone, with its time budget covering the whole command:
wall time against the budget, each part's seconds (FinetuneResult.phases), steps and bits/char.

    .venv/bin/python benchmarks/finetune_stage.py [--max-time 150] [--lr LR] [--lora-r R]
        [--set FIELD=VALUE ...]   # any other FinetuneConfig field, e.g. --set lora_alpha=16

Unset, --lr and --lora-r are the study's (STUDY_PRESETS["quick"].finetune: 2e-3, rank 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

from nanobard.config import STUDY_PRESETS
from nanobard.data.tokens import load_tokens
from nanobard.hardware import cpu_info
from nanobard.hf.finetune import finetune

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: the benchmarks' own helpers
from cases import set_fields  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-time", type=float, default=150.0)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lora-r", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    from nanobard.hardware import keep_freed_memory

    keep_freed_memory()  # as the nanobard command does
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    base = STUDY_PRESETS["quick"].finetune
    cfg = dataclasses.replace(
        base,
        max_time=args.max_time,
        lr=base.lr if args.lr is None else args.lr,
        lora_r=base.lora_r if args.lora_r is None else args.lora_r,
    )
    cfg = set_fields(cfg, args.set)
    info = cpu_info()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        res = finetune(cfg, load_tokens("shakespeare"), out, progress=False, keep_checkpoints=False)
    wall = time.perf_counter() - t
    print(f"{info.model} [{info.kind}]: budget {args.max_time:.0f} s, wall {wall:.1f} s; "
          f"{res.steps} steps; {res.before.bits_per_char:.4f} -> {res.after.bits_per_char:.4f} "
          f"bits/char ({res.after.precision}); {args.set}; parts: {res.phases}")  # fmt: skip


if __name__ == "__main__":
    main()
