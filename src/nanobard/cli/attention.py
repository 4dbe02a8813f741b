"""``nanobard attention``: heatmap, head statistics and causality check for one model."""

from __future__ import annotations

import argparse

from nanobard.errors import ConfigError

SHAKESPEARE_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def add(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "attention", help="attention heatmap, head statistics and causality check for one model"
    )
    a.add_argument(
        "model",
        metavar="MODEL",
        help="model_scratch_best.pt, a run folder, or an HF folder or hub id of a GPT-2 or "
        "Llama-style model (the architectures nanobard's Lens opens)",
    )
    a.add_argument(
        "--text", default=SHAKESPEARE_TEXT, help="text to look at (characters the model knows)"
    )
    a.add_argument("--layer", type=int, default=None, help="layer to draw (default: the last)")
    a.add_argument("--png", default="attention.png", help="where to write the heatmap")
    a.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from nanobard.hf.pretrained import open_model
    from nanobard.interp import attention as A
    from nanobard.interp.figures import attention_heads, check_figure_path
    from nanobard.interp.lens import make_lens

    check_figure_path(args.png, "--png")
    m = open_model(args.model, attn="eager")
    lens = make_lens(m.model, m.tokenizer, m.name)
    maps = A.attention_maps(
        lens, args.text, max_tokens=None if m.kind == "scratch" else A.HF_MAP_TOKENS
    )
    n_layers = maps.weights.shape[0]
    layer = args.layer if args.layer is not None else n_layers - 1
    if not 0 <= layer < n_layers:
        raise ConfigError(f"--layer must be in 0..{n_layers - 1}")
    png = attention_heads(maps.weights, maps.tokens, layer, f"{m.name}: layer {layer}", args.png)
    analysis = A.analyse_attention(lens, maps)
    for line in analysis.findings:
        print(line)
    c = analysis.causality
    print(
        f"causality: attention above diagonal max {c.attention_above_diagonal_max:.3g} "
        f"({c.attention_check}); future gradient max {c.future_gradient_max:.3g} "
        f"({c.gradient_check})"
    )
    print(f"figure: {png}")
    return 0
