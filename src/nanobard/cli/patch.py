"""``nanobard patch``: activation patching, direct logit attribution and attribution patching of
one clean / corrupted pair, for any model nanobard opens."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "patch",
        help="activation patching and direct logit attribution for a clean / corrupted pair",
        description="Run a clean and a corrupted prompt (the same number of tokens; for the "
        "character model, of characters), copy each activation of the clean run into the "
        "corrupted one, and measure how much of the clean answer comes back: (logit_patched - "
        "logit_corrupt) / (logit_clean - logit_corrupt) for the target token at the last "
        "position. Sites: the residual stream before each layer, each attention and MLP output "
        "(layer x position) and each head (every position). Also the direct logit attribution "
        "of each head and MLP on the clean prompt, and attribution patching (the gradient "
        "estimate). Writes DIR/patching.json (keys in the README) and DIR/patching.png.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="model_scratch_best.pt, a run folder, or an HF folder or hub id of a GPT-2 or "
        "Llama-style model (smollm2-135m: the embedded one)",
    )
    p.add_argument("--clean", required=True, metavar="TEXT", help="the prompt with the answer")
    p.add_argument(
        "--corrupt", required=True, metavar="TEXT", help="the same prompt with the clue changed"
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="TEXT",
        help="the answer: one token of the model (for a BPE model mind the leading space, e.g. "
        "' Juliet')",
    )
    p.add_argument("--out", default="patching", metavar="DIR", help="output folder")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.hf.pretrained import open_model
    from nanobard.interp.figures import activation_patching as figure
    from nanobard.interp.lens import make_lens
    from nanobard.interp.patching import activation_patching

    m = open_model(args.model)
    lens = make_lens(m.model, m.tokenizer, m.name)
    r = activation_patching(lens, args.clean, args.corrupt, args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r.save(out / "patching.json")
    png = figure(r, out / "patching.png")
    flat = sorted(
        (
            (v, layer, h)
            for layer, row in enumerate(r.heads)
            for h, v in enumerate(row)
            if v is not None
        ),
        reverse=True,
    )
    v, layer, h = flat[0]
    print(
        f"target {r.target!r}: logit {r.logit_clean:.3f} clean, {r.logit_corrupt:.3f} corrupted; "
        f"{len(r.tokens_clean)} tokens"
    )
    print(f"the head that restores most: layer {layer} head {h} ({v:.2f} of the difference)")
    dla = r.dla
    top = max((val, i, j) for i, row in enumerate(dla.heads) for j, val in enumerate(row))
    heads = sum(map(sum, dla.heads))
    print(
        f"direct logit attribution: embeddings {dla.embed:+.2f}, heads {heads:+.2f} "
        f"(most: layer {top[1]} head {top[2]}, {top[0]:+.2f}), MLPs {sum(dla.mlp):+.2f}"
    )
    secs = r.seconds or {}
    print(f"{', '.join(f'{k} {s:.1f} s' for k, s in secs.items())}")
    print(f"wrote {out / 'patching.json'} and {png}")
    return 0
