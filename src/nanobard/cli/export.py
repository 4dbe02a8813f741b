"""``nanobard export``: the from-scratch GPT as a Hugging Face GPT-2 folder
(and optionally GGUF)."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="export the from-scratch GPT as a Hugging Face GPT-2 folder",
        description="Write a from-scratch checkpoint (or a run folder's best one) as a "
        "GPT2LMHeadModel folder with a character tokenizer: transformers.pipeline("
        "'text-generation', model=DIR) then gives the same greedy text as "
        "`nanobard generate --greedy`.",
    )
    e.add_argument(
        "model", metavar="RUN_OR_CHECKPOINT", help="model_scratch_best.pt or a run folder"
    )
    e.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="folder to write (created; an earlier export is replaced)",
    )
    e.add_argument(
        "--gguf", action="store_true", help="also write model.gguf (ASCII vocabularies only)"
    )
    e.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.model.export import export_hf

    print(export_hf(args.model, args.out, gguf=args.gguf).summary())
    return 0
