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
    e.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload the folder to the Hugging Face Hub as REPO (user/name, created when "
        "missing); needs a login (`hf auth login` or HF_TOKEN)",
    )
    e.add_argument("--private", action="store_true", help="with --push-to-hub: a private repo")
    e.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.model.export import export_hf, hub_token, push_to_hub

    if args.push_to_hub:
        hub_token(args.push_to_hub)  # not logged in: say so before anything is written
    print(export_hf(args.model, args.out, gguf=args.gguf).summary())
    if args.push_to_hub:
        url = push_to_hub(args.out, args.push_to_hub, private=args.private)
        print(f"pushed to {url}")
    return 0
