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
    add_corpus_flags(e, "score on")
    e.add_argument(
        "--score-chars",
        type=int,
        default=None,
        help="score only the first N validation characters (default and 0: all of them)",
    )
    e.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.config import ConfigError
    from nanobard.data.tokenizer import CharTokenizer
    from nanobard.data.tokens import load_tokens
    from nanobard.hf.pretrained import open_model
    from nanobard.model.evaluate import Score, score_hf, score_scratch
    from nanobard.model.gpt import GPT

    if args.score_chars is not None and args.score_chars < 0:
        raise ConfigError(f"--score-chars must be >= 0 (0: all), got {args.score_chars}")
    corpus = load_tokens(args.corpus, args.data)
    text = corpus.val_text(args.score_chars or None)
    rows: list[tuple[str, int, Score]] = []
    for m in args.models:
        opened = open_model(m)
        model, tok = opened.model, opened.tokenizer
        if opened.kind == "scratch":  # our GPT with its CharTokenizer (open_model decides)
            assert isinstance(model, GPT) and isinstance(tok, CharTokenizer)
            score = score_scratch(model, tok, text, opened.name, progress=True)
        else:  # a transformers causal LM with its tokenizer
            assert not isinstance(model, GPT) and not isinstance(tok, CharTokenizer)
            score = score_hf(model, tok, text, opened.name, progress=True)
        rows.append((opened.name, opened.num_params, score))
    print(f"validation text of {corpus.name!r}: {len(text):,} characters")
    print_score_table(rows)
    return 0
