"""``nanobard compare``: several runs' curves in one figure and their numbers in one table."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compare",
        help="several runs' curves in one figure, their numbers in one table",
        description="Compare run folders of nanobard train, finetune or run (e.g. an LR sweep: "
        "nanobard compare runs/lr-*): validation loss and learning rate by step in one figure, "
        "one panel per track (from-scratch losses are nats per character, fine-tuning losses "
        "nats per token), and a table of steps, time, best and final validation loss and bits "
        "per character, naming the configuration values that differ between the runs. Also "
        "writes the table as JSON beside the figure.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one or more)")
    c.add_argument(
        "--out",
        metavar="FILE",
        default="compare.png",
        help="the figure to write (default: compare.png; the table goes to FILE's name with .json)",
    )
    c.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nanobard.study.compare import compare_runs

    out = Path(args.out)
    res = compare_runs(args.runs, out)
    res.save(out.with_suffix(".json"))
    print(res.table())
    print(
        "\nbits/char on 'val text': the model scored on the validation text (a finished study or "
        "fine-tuning); on 'val batches': a from-scratch run's best evaluation in bits (its "
        "fixed validation batches)"
    )
    print(f"figure: {res.figure}; table: {out.with_suffix('.json')}")
    return 0
