"""``nanobard run``: the whole study into one folder."""

from __future__ import annotations

import argparse
import time

from nanobard import config as C
from nanobard.cli.common import add_corpus_flags, add_report_flag, run_folder


def add(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "run",
        help="the whole study: train, fine-tune, compare, look inside, report",
        description="Run the whole study into one folder (report.html, figures, models). "
        "Re-running with the same --out skips finished stages and resumes an "
        "interrupted one.",
    )
    r.add_argument(
        "--preset",
        default="quick",
        choices=list(C.STUDY_PRESETS),
        help="; ".join(f"{k}: {v.description}" for k, v in C.STUDY_PRESETS.items()),
    )
    add_corpus_flags(r)
    r.add_argument("--out", metavar="DIR", help="output folder (default: runs/study-<timestamp>)")
    r.add_argument("--force", action="store_true", help="redo every stage even if finished")
    r.add_argument(
        "--pretrained",
        default=None,
        help="auto (default), gpt2, smollm2-135m, a hub id or a local folder",
    )
    r.add_argument(
        "--scratch-steps",
        type=int,
        default=None,
        help="from-scratch step budget (replaces its time budget)",
    )
    r.add_argument(
        "--scratch-time",
        type=C.parse_duration,
        default=None,
        help="from-scratch time budget, e.g. 2m",
    )
    r.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="fine-tuning step budget (replaces its time budget)",
    )
    r.add_argument(
        "--finetune-time",
        type=C.parse_duration,
        default=None,
        help="the fine-tuning stage's time budget, e.g. 2m (the whole stage: scoring and samples "
        "before and after included)",
    )
    r.add_argument(
        "--lora-r",
        type=int,
        default=None,
        help="LoRA rank of the fine-tuning (merged on save); 0 = full fine-tuning "
        f"(the CPU study presets use {C.STUDY_PRESETS['quick'].finetune.lora_r})",
    )
    r.add_argument(
        "--score-chars", type=int, default=None, help="validation characters to score (0 = all)"
    )
    r.add_argument(
        "--prompt",
        action="append",
        default=None,
        metavar="TEXT",
        help="a sample prompt (repeat for several); default: Shakespeare prompts for Shakespeare, "
        "else openings of validation lines",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_report_flag(r)
    r.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.study.pipeline import STAGES, run_study

    t0 = time.perf_counter()

    def on_stage(i: int, stage: str) -> None:
        print(
            f"\n[{i + 1}/{len(STAGES)}] {stage}  ({time.perf_counter() - t0:.0f} s elapsed)",
            flush=True,
        )

    over = {"max_steps": args.scratch_steps, "max_time": args.scratch_time}
    ft_over = {
        "pretrained": args.pretrained,
        "max_steps": args.finetune_steps,
        "max_time": args.finetune_time,
        "lora_r": args.lora_r,
        "score_chars": args.score_chars,
    }
    out = run_folder(args, "study")
    res = run_study(
        out,
        args.preset,
        args.corpus,
        args.data,
        over,
        ft_over,
        force=args.force,
        progress=not args.no_progress,
        on_stage=on_stage,
        prompts=tuple(args.prompt) if args.prompt else None,
        report_to=args.report_to,
    )
    s, p = res.headline.scratch, res.headline.pretrained
    print(f"\nstudy finished in {time.perf_counter() - t0:.0f} s; report: {res.report}")
    print(
        f"\nbits per character on the same {res.headline.score_chars:,} validation characters "
        "(lower is better):"
    )
    print(
        f"  {'model':<34} {'params':>12} {'bits/char':>10} "
        f"{'loss reduction':>15} {'train time':>11}"
    )
    print(
        f"  {'from scratch':<34} {s.num_params:>12,} {s.bits_per_char:>10.4f} "
        f"{s.loss_reduction_pct:>14.1f}% {s.train_seconds:>10.0f}s"
    )
    print(
        f"  {p.name + ' before fine-tuning':<34} {p.num_params:>12,} "
        f"{p.bits_per_char_before:>10.4f}"
    )
    print(
        f"  {p.name + ' after fine-tuning':<34} {p.num_params:>12,} {p.bits_per_char:>10.4f} "
        f"{p.loss_reduction_pct:>14.1f}% {p.train_seconds:>10.0f}s"
    )
    if args.report_to != "none":
        from nanobard.train.tracking import where_to_look

        print(f"\ncurves ({args.report_to}): {where_to_look(args.report_to, out)}")
    print(f"\nto type your own text and watch all three models respond: nanobard serve {out}")
    return 0
