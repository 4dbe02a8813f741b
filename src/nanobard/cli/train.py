"""``nanobard train``: train the from-scratch character GPT."""

from __future__ import annotations

import argparse

from nanobard import config as C
from nanobard.cli.common import (
    add_config_flags,
    add_corpus_flags,
    add_report_flag,
    add_run_flags,
    count,
    overrides,
    run_folder,
)


def add(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train the from-scratch character GPT",
        description="Train the from-scratch character-level GPT. A preset sets every "
        "hyperparameter; any flag below overrides one. Writes checkpoints, metrics.jsonl, "
        "config.json and train_result.json into --out.",
    )
    t.add_argument(
        "--preset",
        default="quick",
        choices=list(C.PRESETS),
        help="; ".join(f"{k}: {v.description}" for k, v in C.PRESETS.items()),
    )
    add_corpus_flags(t)
    add_run_flags(t, "scratch", "continue from DIR/ckpt_last.pt exactly where it stopped")
    add_report_flag(t)
    t.add_argument(
        "--sample-tokens",
        type=count,
        default=300,
        help="characters to sample at the end (0 = none)",
    )
    add_config_flags(t, C.ModelConfig, C.TrainConfig, skip=("vocab_size",))
    t.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.cli.common import print_stream
    from nanobard.cli.generate import default_prompt
    from nanobard.data.tokens import load_tokens
    from nanobard.hf.pretrained import scratch_generator
    from nanobard.model.sampling import SamplingConfig
    from nanobard.rundir import RunDir
    from nanobard.train.loop import train
    from nanobard.train.tracking import flat_config, tracking

    model_cfg, train_cfg = C.resolve_preset(
        args.preset, overrides(args, C.ModelConfig, C.TrainConfig)
    )
    corpus = load_tokens(args.corpus, args.data)  # encoded once, then memory-mapped from the cache
    out = run_folder(args, "scratch")
    with tracking(args.report_to, out, "scratch", config=flat_config(model_cfg, train_cfg),
                  resume=args.resume) as tracker:  # fmt: skip
        res = train(model_cfg, train_cfg, corpus, out, resume=args.resume,
                    progress=not args.no_progress, allow_new_corpus=args.allow_new_corpus,
                    on_eval=[tracker.on_eval])  # fmt: skip
    print(
        f"\ntrained {res.num_params:,} parameters for {res.steps} steps ({res.tokens:,} tokens) "
        f"in {res.elapsed_s:.1f} s, {res.tokens_per_s:,.0f} tokens/s; stopped by {res.stopped}"
    )
    print(
        f"val loss: first {res.first_val_loss:.4f}, best {res.best_val_loss:.4f}, "
        f"final {res.final_val_loss:.4f} (nats/char); best checkpoint: {out / RunDir.BEST}; "
        f"result: {out / RunDir.TRAIN_RESULT}"
    )
    if tracker.view:
        print(f"curves ({tracker.kind}): {tracker.view}")
    if args.sample_tokens > 0:
        print("\n--- sample (temperature 0.8) ---")
        gen = scratch_generator(out / RunDir.BEST)
        print_stream(
            gen,
            default_prompt(gen, corpus),
            args.sample_tokens,
            SamplingConfig(temperature=0.8, seed=train_cfg.seed),
        )
    return 0
