"""Where a fine-tuning step of the study's LoRA stage goes: SmolLM2-135M (the embedded model),
LoRA on every linear layer, the study's batch (STUDY_PRESETS["quick"].finetune), bfloat16
autocast with cpu_bfloat16_training, as the Trainer runs it on a CPU. Prints the seconds of
4 steps after 2 warm-up steps, then torch.profiler's table for one step by op and input shape.

    .venv/bin/python benchmarks/profile_finetune_step.py [--rows 30]
"""

from __future__ import annotations

import argparse
import time

import torch

from nanobard.config import STUDY_PRESETS
from nanobard.hardware import cpu_info, keep_freed_memory
from nanobard.hf.finetune import _with_lora
from nanobard.hf.pretrained import load_pretrained
from nanobard.hf.trainer import chunked_lm_loss, cpu_bfloat16_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    keep_freed_memory()  # as the nanobard command does
    cfg = STUDY_PRESETS["quick"].finetune
    model, _ = _with_lora(load_pretrained("smollm2-135m").model, cfg)
    model.train()
    vocab = model.get_output_embeddings().weight.shape[0]
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.block_size))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = chunked_lm_loss(model, x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from torch.profiler import ProfilerActivity, profile

    with cpu_bfloat16_training(model):
        for _ in range(2):
            step()
        seconds = []
        for _ in range(4):
            t = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
            step()
    info = cpu_info()
    print(f"{info.model} [{info.kind}]: {cfg.batch_size} x {cfg.block_size} tokens, LoRA r"
          f"{cfg.lora_r}: step {', '.join(f'{s:.3f}' for s in seconds)} s")  # fmt: skip
    table = p.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total",
        row_limit=args.rows,
        max_name_column_width=30,
        max_shapes_column_width=70,
    )
    print(table)


if __name__ == "__main__":
    main()
