"""``nanobard evaluate``: bits per character of any models on the shared validation text."""

from __future__ import annotations

import argparse

from nanobard.cli.common import add_corpus_flags, print_score_table


def add(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate", help="bits per character of any models on the shared validation text"
    )
    e.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="model_scratch_best.pt, run folder, HF folder or hub id",
    )
    add_corpus_flags(e)
    e.add_argument(
        "--score-chars", type=int, default=None, help="score only the first N validation characters"
    )
    e.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.data.tokens import load_tokens
    from nanobard.hf.pretrained import open_model
    from nanobard.model.evaluate import score_hf, score_scratch

    corpus = load_tokens(args.corpus, args.data)
    text = corpus.val_text(args.score_chars or None)
    rows = []
    for m in args.models:
        opened = open_model(m)
        score = (score_scratch if opened.kind == "scratch" else score_hf)(
            opened.model, opened.tokenizer, text, opened.name, progress=True
        )
        rows.append((opened.name, opened.num_params, score))
    print(f"validation text of {corpus.name!r}: {len(text):,} characters")
    print_score_table(rows)
    return 0
