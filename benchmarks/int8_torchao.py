"""Weight-only int8 generation on a CPU: nanobard's ``torch._weight_int8pack_mm`` path
(model/quantize.py, ``--dtype int8``) against torchao's ``Int8WeightOnlyConfig``.

    .venv/bin/python benchmarks/int8_torchao.py [--repeats 5] [--tokens 500]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/int8_torchao.py

The 10.7M model (``gpu`` preset shape, random weights, vocab 65) decodes ``--tokens`` greedy tokens
after a 1-token prompt through ScratchDecoder + generate_ids (KV cache, batch 1), as
``nanobard generate`` does. torchao swaps the block matrices' weights for ``Int8Tensor`` subclasses
that ``F.linear`` dispatches on, so its models go through the same decoder unchanged. Quantized:
the 24 block matrices (not the tied embedding / output layer), from the float32 weights; torchao
is shown with float32 activations and, like ours, with the rest of the model in bfloat16. Each
repeat runs every path once (interleaved, after one warm-up each); the table shows the median and
min-max tokens/s. Needs ``pip install -c constraints.txt torchao``; prints, writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from nanobard.config import ModelConfig
from nanobard.hardware import cpu_info
from nanobard.model.gpt import GPT
from nanobard.model.sampling import SamplingConfig, ScratchDecoder, generate_ids


def torchao_int8(model: GPT, bfloat16: bool) -> GPT:
    """A copy whose block nn.Linear weights are torchao int8 (per row); the rest float32 or bf16."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    q = copy.deepcopy(model)
    quantize_(
        q,
        Int8WeightOnlyConfig(),
        filter_fn=lambda m, fqn: (
            isinstance(m, torch.nn.Linear) and fqn.startswith("transformer.h.")
        ),
    )
    return q.to(torch.bfloat16) if bfloat16 else q


def decode(decoder: ScratchDecoder, tokens: int) -> tuple[float, list[int]]:
    t = time.perf_counter()
    ids = list(generate_ids(decoder, [0], tokens, SamplingConfig(temperature=0.0)))
    return len(ids) / (time.perf_counter() - t), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=500)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, vocab_size=65)
    model = GPT(cfg).eval()
    t = time.perf_counter()
    import torchao

    import_s = time.perf_counter() - t
    decoders = {
        "float32": ScratchDecoder(model),
        "int8 ours (_weight_int8pack_mm, bf16 act)": ScratchDecoder(model, dtype=torch.int8),
        "int8 torchao (float32 act)": ScratchDecoder(torchao_int8(model, bfloat16=False)),
        "int8 torchao (bf16 act)": ScratchDecoder(torchao_int8(model, bfloat16=True)),
    }

    x = torch.randint(
        0, cfg.vocab_size, (1, cfg.block_size), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        ref = model(x).logits.float()
        diffs = {
            name: (d.model(x).logits.float() - ref).abs().max().item()
            for name, d in decoders.items()
        }

    for d in decoders.values():  # warm-up
        decode(d, args.tokens)
    speeds: dict[str, list[float]] = {name: [] for name in decoders}
    outputs: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, d in decoders.items():
            tps, outputs[name] = decode(d, args.tokens)
            speeds[name].append(tps)

    c = cpu_info()
    print(
        f"CPU: {c.model} | kind {c.kind} | torch {torch.__version__} capability {c.capability} | "
        f"threads {torch.get_num_threads()} | torchao {torchao.__version__} "
        f"(import {import_s:.2f} s)"
    )
    print(
        f"{cfg.n_layer}x{cfg.n_embd}, {model.num_params() / 1e6:.1f}M params, {args.tokens} greedy "
        f"tokens after 1, KV cache, batch 1; {args.repeats} repeats\n"
    )
    w = max(map(len, decoders))
    base = statistics.median(speeds["float32"])
    print(f"{'path':<{w}}  tok/s median  (min-max)      x fp32  max|dlogit|  same tokens")
    for name, s in speeds.items():
        med = statistics.median(s)
        same = sum(a == b for a, b in zip(outputs[name], outputs["float32"]))
        print(
            f"{name:<{w}}  {med:12.1f}  ({min(s):6.1f}-{max(s):6.1f})  {med / base:6.2f}  "
            f"{diffs[name]:11.2e}  {same}/{len(outputs['float32'])}"
        )
    print(
        f"\nmax|logit| (float32, one {cfg.block_size}-token forward): {ref.abs().max().item():.2f}"
    )


if __name__ == "__main__":
    main()
