"""``nanobard generate``: stream text from any nanobard model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from nanobard.cli.common import add_sampling_flags, print_stream

if TYPE_CHECKING:  # these import torch: only for the type checker
    from nanobard.data.tokens import TokenCorpus
    from nanobard.model.sampling import TextGenerator


def add(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="generate text from a checkpoint or a fine-tuned model folder",
        description="Stream text from a from-scratch checkpoint (.pt or its run folder) "
        "or a Hugging Face model folder (e.g. model_hf_finetuned/).",
    )
    g.add_argument(
        "model",
        metavar="MODEL",
        help="model_scratch_best.pt, a train or finetune run folder, a model_hf_finetuned/ "
        "folder, or a Hugging Face model id",
    )
    add_sampling_flags(g)
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["auto", "float32", "bfloat16", "int8"],
        help="precision of the weights while generating. float32 (default) gives the same text on "
        "every machine. A CPU spends each token reading the weights, so fewer bytes are faster: "
        "bfloat16 (= auto on a CPU) or int8 (weight-only, CPU, from-scratch models) are faster "
        "for larger models "
        "(benchmarks/README.md has the measured speeds); samples then differ slightly from float32",
    )
    g.set_defaults(handler=handle)


def default_prompt(gen: TextGenerator, corpus: TokenCorpus | None = None) -> str:
    """'ROMEO:\\n' where the model can read it, else the opening of a validation line of ``corpus``,
    else a newline (or the model's first character)."""
    try:
        gen.encode("ROMEO:\n")
        return "ROMEO:\n"
    except ValueError:
        pass
    if corpus is not None:
        from nanobard.data.prompts import corpus_prompts

        return corpus_prompts(corpus.val_text(100_000), corpus.tokenizer.chars, n=1)[0]
    try:
        gen.encode("\n")
        return "\n"
    except ValueError:
        return gen.decode([0])


def handle(args: argparse.Namespace) -> int:
    from nanobard.hardware import generation_dtype, pick_device
    from nanobard.hf.pretrained import open_for_generation
    from nanobard.model.sampling import SamplingConfig

    scfg = SamplingConfig(
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    device = pick_device("auto")
    gen = open_for_generation(
        Path(args.model), dtype=generation_dtype(args.dtype, device), device=device
    )
    print_stream(
        gen,
        args.prompt if args.prompt is not None else default_prompt(gen),
        args.max_new_tokens,
        scfg,
    )
    return 0
