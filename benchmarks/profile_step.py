"""Profile training steps of the from-scratch GPT with torch.profiler: where does the time go?

    .venv/bin/python benchmarks/profile_step.py --preset fast --steps 20 [--dtype bfloat16]
    .venv/bin/python benchmarks/profile_step.py --preset cpu-10min --phases   # where a step goes

Prints the operators sorted by their own CPU time and writes the table to bench_results/.
``--phases`` instead times the parts of a step (forward, backward, clipping, optimizer) and sets
them against the time the model's matmuls alone would take at the same-shape peak.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from nanobard.config import get_preset, with_overrides
from nanobard.hardware import autocast_context, keep_freed_memory, resolve_precision
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
    ap.add_argument("--phases", action="store_true", help="time the parts of a step instead")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="model overrides, e.g. pos_encoding=rotary qk_norm=true")  # fmt: skip
    args = ap.parse_args()
    keep_freed_memory()  # as the nanobard command does
    p = get_preset(args.preset)
    from cases import set_fields  # the script folder is on sys.path when run as a script

    mcfg = set_fields(with_overrides(p.model, {"vocab_size": 65, "dropout": 0.0}), args.set)
    tcfg = with_overrides(p.train, {"dtype": args.dtype})  # None keeps the preset's
    model = GPT(mcfg)
    opt = make_optimizer(model, tcfg, torch.device("cpu"))
    x = torch.randint(0, 65, (tcfg.batch_size, mcfg.block_size))

    def step() -> None:
        train_step(model, opt, [(x, x)], tcfg, torch.device("cpu"))

    for _ in range(5):
        step()
    if args.phases:
        print(phases(model, opt, x, tcfg, args.steps))
        return
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    print(text)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / f"profile-{args.preset}-{tcfg.dtype}.txt").write_text(text)


def phases(model: GPT, opt, x: torch.Tensor, tcfg, steps: int) -> str:
    """Median milliseconds of each part of a training step, and the matmul-only floor."""
    import statistics
    import time

    from cases import same_shape_peak

    dev = torch.device("cpu")
    times: dict[str, list[float]] = {"forward": [], "backward": [], "clip": [], "optimizer": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast_context(dev, tcfg.dtype):
            loss = model(x, x).loss
            t1 = time.perf_counter()
            loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for k, a, b in (("forward", t0, t1), ("backward", t1, t2), ("clip", t2, t3),
                        ("optimizer", t3, t4)):  # fmt: skip
            times[k].append(1000 * (b - a))
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    c = model.config
    dtype = resolve_precision(tcfg.dtype, dev)
    peak = same_shape_peak(x.numel(), c.n_embd, c.n_layer, c.vocab_size, dtype, dev)
    flops = model.flops_per_token() * x.numel()
    floor = 1000 * 6 * (model.num_params() * x.numel()) / (peak * 1e9)
    lines = [f"{k:<10} {v:7.1f} ms  {100 * v / total:4.0f}%" for k, v in med.items()]
    lines.append(f"{'step':<10} {total:7.1f} ms  ({flops / total / 1e6:.0f} GFLOP/s achieved)")
    lines.append(
        f"the weight matmuls alone at the same-shape peak ({peak:.0f} GFLOP/s, {dtype}): "
        f"{floor:.1f} ms = {100 * floor / total:.0f}% of the step"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
