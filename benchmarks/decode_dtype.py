"""Single-stream decoding speed of the 10.7M (`gpu`-shaped) from-scratch model by weight
precision: float32, bfloat16 and weight-only int8, with sampling (``generate_ids``) and the
decoder's steps alone. A random model: speed does not depend on the weights.

    .venv/bin/python benchmarks/decode_dtype.py [--tokens 250] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from nanobard.config import PRESETS
from nanobard.hardware import cpu_info
from nanobard.model.gpt import GPT
from nanobard.model.sampling import STRATEGIES, ScratchDecoder, generate_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(PRESETS["gpu"].model, vocab_size=65)).eval()
    info = cpu_info()
    print(f"{info.model} [{info.kind}], {model.num_params() / 1e6:.1f}M parameters")
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        for _ in range(args.repeats):
            decoder = ScratchDecoder(model, dtype=dtype)  # the copy or quantizing: not timed
            t = time.perf_counter()
            ids = list(generate_ids(decoder, [1, 2, 3], args.tokens, STRATEGIES["top_k"]))
            with_sampling = len(ids) / (time.perf_counter() - t)
            dec = ScratchDecoder(model, dtype=dtype)
            with torch.inference_mode():
                dec.start([1, 2, 3])
                t = time.perf_counter()
                for token in ids[:-1]:
                    dec.advance(token)
                steps = (len(ids) - 1) / (time.perf_counter() - t)
            print(f"{str(dtype).removeprefix('torch.'):<9} {with_sampling:6.0f} tokens/s "
                  f"(steps alone {steps:.0f}/s)")  # fmt: skip


if __name__ == "__main__":
    main()
