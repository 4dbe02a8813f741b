"""``nanobard finetune``: fine-tune a pretrained causal LM and score it before and after."""

from __future__ import annotations

import argparse

from nanobard import config as C
from nanobard.cli.common import (
    add_config_flags,
    add_corpus_flags,
    add_report_flag,
    add_run_flags,
    overrides,
    print_score_table,
    run_folder,
)


def add(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained causal LM on the same text",
        description="Fine-tune a pretrained causal LM with the Hugging Face Trainer; score it "
        "before and after on the shared validation text (bits per character). Writes "
        "model_hf_finetuned/, metrics_hf.jsonl and finetune_result.json into --out.",
    )
    add_corpus_flags(f)
    add_run_flags(f, "finetune", "continue from the last checkpoint in DIR/hf_checkpoints")
    add_report_flag(f)
    add_config_flags(f, C.FinetuneConfig, skip=("prompts",))
    f.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.data.tokens import load_tokens
    from nanobard.hf.finetune import finetune
    from nanobard.rundir import RunDir
    from nanobard.train.tracking import flat_config, tracking

    cfg = C.resolve(C.FinetuneConfig(), overrides(args, C.FinetuneConfig))
    out = run_folder(args, "finetune")
    data = load_tokens(args.corpus, args.data)  # a missing file fails before any tracker starts
    with tracking(
        args.report_to, out, "finetune", config=flat_config(cfg), resume=args.resume
    ) as tracker:
        res = finetune(
            cfg,
            data,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            allow_new_corpus=args.allow_new_corpus,
            tracker=tracker,
        )
    print(
        f"\nfine-tuned {res.model_name} ({res.num_params:,} parameters, "
        f"{res.trainable_params:,} trained) for {res.steps} steps, {res.tokens:,} tokens "
        f"in {res.train_seconds:.1f} s ({res.tokens_per_s:,.0f} tokens/s)"
    )
    print(f"scored on the first {res.before.chars + 1:,} characters of the validation text:")
    print_score_table(
        [
            (res.before.model, res.num_params, res.before),
            (res.after.model, res.num_params, res.after),
        ]
    )
    print(f"saved: {out / RunDir.FINETUNED}; result: {out / RunDir.FINETUNE_RESULT}")
    for row in res.samples:
        if row.strategy == "temperature" and row.prompt == res.samples[0].prompt:
            print(f"\n--- {row.model} fine-tuning, {row.strategy} ---\n{row.prompt}{row.text}")
    if tracker.view:
        print(f"\ncurves ({tracker.kind}): {tracker.view}")
    return 0
