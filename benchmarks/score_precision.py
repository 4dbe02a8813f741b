"""Scoring the pretrained model (SmolLM2-135M, embedded) on the study's 20,000 validation
characters in float32 and under bfloat16 autocast: seconds and bits/char of each.

    .venv/bin/python benchmarks/score_precision.py [--chars 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse

import torch

from nanobard.data.tokens import load_tokens
from nanobard.hardware import cpu_info
from nanobard.hf.pretrained import EMBEDDED, load_pretrained
from nanobard.model.evaluate import score_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    text = load_tokens("shakespeare").val_text(args.chars)
    pre = load_pretrained(EMBEDDED, torch.device("cpu"))
    info = cpu_info()
    print(f"{info.model} [{info.kind}], {pre.name}, {len(text):,} characters")
    for _ in range(args.repeats):
        for precision in (torch.float32, torch.bfloat16):
            s = score_hf(pre.model, pre.tokenizer, text, pre.name, precision=precision)
            print(f"{s.precision:<9} {s.seconds:5.1f} s  {s.bits_per_char:.5f} bits/char")


if __name__ == "__main__":
    main()
