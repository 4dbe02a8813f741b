"""Command-line front end: ``nanobard <command>``. The only module that prints.

Every user-caused problem ends as one line on stderr (``nanobard: error: ...``) and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import typing
from pathlib import Path
from typing import Any

from nanobard import config as C

ATTN_DEFAULT = "ROMEO:\nBut soft, what light through yonder window breaks?"

FIELD_HELP = {
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block (must divide --n-embd)",
    "n_embd": "embedding width; reduce (e.g. 128 -> 64) if you run out of memory",
    "block_size": "context length in characters; reduce if you run out of memory",
    "batch_size": "sequences per micro-batch; reduce (16 -> 8 -> 4) if you run out of memory",
    "max_steps": "optimizer steps to run",
    "epochs": "passes over the training text (converted to steps)",
    "max_time": "wall-time budget, e.g. 90s, 5m, 1h",
    "lr": "peak learning rate after warmup",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear warmup",
    "lr_decay_steps": "length of the cosine decay (default: the step budget)",
    "dropout": "dropout probability (0 for small data/short runs)",
    "grad_accum": "micro-batches per optimizer step",
    "eval_interval": "steps between evaluations (and checkpoints)",
    "eval_iters": "batches averaged per evaluation",
    "patience": "evaluations without val-loss improvement before stopping early",
    "device": "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps",
    "dtype": "auto (default: bfloat16 autocast where it is native, i.e. CPUs with AVX-512 BF16 or AMX and recent "
             "GPUs; float32 elsewhere), float32, or bfloat16 (forced; very slow on CPUs without native bfloat16)",
    "compile": "torch.compile the model (compile time counts in the wall time)",
    "pos_encoding": "learned (GPT-2) or sinusoidal (Vaswani et al.)",
    "tie_weights": "share token embedding and output layer weights",
    "threads": "CPU threads for torch (default: torch's choice)",
    "optimizer": "adamw, or muon: Muon for the matrices inside the blocks, AdamW for embeddings and norms "
                 "(learns about twice as fast per step; same --lr and schedule)",
}


def _flag_type(tp: Any) -> tuple[Any, list[str] | None]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return str, list(typing.get_args(tp))
    if args:  # Optional[X] / X | None / Literal in a union
        return _flag_type(args[0])
    return tp, None


def add_config_flags(parser: argparse.ArgumentParser, *classes: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--kebab-case`` flag per dataclass field; unset flags keep the preset's value."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(f"{cls.__name__} overrides (default: the preset's value)")
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            tp, choices = _flag_type(hints[f.name])
            help_ = FIELD_HELP.get(f.name, f.name.replace("_", " "))
            if tp is bool:
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
            elif f.name == "max_time":
                group.add_argument(flag, dest=f.name, type=C.parse_duration, default=None, metavar="DURATION", help=help_)
            else:
                group.add_argument(flag, dest=f.name, type=tp, choices=choices, default=None, help=help_)


def add_corpus_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--corpus", default="shakespeare", choices=["shakespeare", "tinyshakespeare"],
                   help="built-in corpus: the 38 plays shipped with nanobard (default, offline) or the "
                        "classic tiny Shakespeare file (downloaded once; or set NANOBARD_TINYSHAKESPEARE=PATH)")
    g.add_argument("--data", metavar="PATH", help="train on any UTF-8 text file instead")


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="ROMEO:\n", help="text to continue (default: 'ROMEO:\\n')")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random")
    parser.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    parser.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    parser.add_argument("--seed", type=int, default=1337, help="random seed for sampling")


def resolve_configs(args: argparse.Namespace) -> tuple[C.ModelConfig, C.TrainConfig]:
    preset = C.get_preset(args.preset)
    over = vars(args)
    model_cfg = C.with_overrides(preset.model, over)
    train_cfg = C.with_overrides(preset.train, over)
    if over.get("max_time") is not None and over.get("max_steps") is None and over.get("epochs") is None:
        train_cfg = dataclasses.replace(train_cfg, max_steps=None, epochs=None)  # time is the budget
    if over.get("epochs") is not None and over.get("max_steps") is None:
        train_cfg = dataclasses.replace(train_cfg, max_steps=None)
    return model_cfg, train_cfg


# --------------------------------------------------------------------------------------------
# commands


def cmd_train(args: argparse.Namespace) -> int:
    from nanobard.sampling import SamplingConfig
    from nanobard.tokens import load_tokens
    from nanobard.train import train

    model_cfg, train_cfg = resolve_configs(args)
    corpus = load_tokens(args.corpus, args.data)  # encoded once, then memory-mapped from the cache
    out = Path(args.out or f"runs/scratch-{time.strftime('%Y%m%d-%H%M%S')}")
    res = train(model_cfg, train_cfg, corpus, out, resume=args.resume, progress=not args.no_progress)
    print(f"\ntrained {res.num_params:,} parameters for {res.steps} steps ({res.tokens:,} tokens) "
          f"in {res.elapsed_s:.1f} s, {res.tokens_per_s:,.0f} tokens/s; stopped by {res.stopped}")
    print(f"val loss: first {res.first_val_loss:.4f}, best {res.best_val_loss:.4f}, final {res.final_val_loss:.4f} "
          f"(nats/char); best checkpoint: {out / 'model_scratch_best.pt'}")
    if args.sample_tokens > 0:
        print("\n--- sample (temperature 0.8) ---")
        _print_stream(out / "model_scratch_best.pt", "ROMEO:\n" if not args.data else "\n",
                      args.sample_tokens, SamplingConfig(temperature=0.8, seed=train_cfg.seed))
    return 0


def _print_stream(path: Path, prompt: str, n: int, scfg: Any, dtype: str = "float32") -> None:
    from nanobard.hardware import pick_device, resolve_precision
    from nanobard.pretrained import open_for_generation

    device = pick_device("auto")
    model = open_for_generation(path, dtype=resolve_precision(dtype, device, "generation"), device=device)
    sys.stdout.write(prompt)
    for piece in model.stream(prompt, n, scfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_generate(args: argparse.Namespace) -> int:
    from nanobard.sampling import SamplingConfig

    scfg = SamplingConfig(temperature=0.0 if args.greedy else args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    _print_stream(Path(args.model), args.prompt, args.max_new_tokens, scfg, args.dtype)
    return 0


def print_score_table(rows: list[Any]) -> None:
    print(f"{'model':<38} {'params':>12} {'chars':>8} {'nats/token':>11} {'bits/char':>10}")
    for name, params, score in rows:
        print(f"{name:<38} {params:>12,} {score.chars:>8,} {score.nats_per_token:>11.4f} {score.bits_per_char:>10.4f}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from nanobard.data import load_split
    from nanobard.finetune import FinetuneConfig, finetune

    cfg = C.with_overrides(FinetuneConfig(), vars(args))
    if args.epochs is not None and args.max_steps is None:
        cfg = dataclasses.replace(cfg, max_steps=None)
    split = load_split(args.corpus, args.data)
    out = Path(args.out or f"runs/finetune-{time.strftime('%Y%m%d-%H%M%S')}")
    res = finetune(cfg, split, out, resume=args.resume, progress=not args.no_progress)
    print(f"\nfine-tuned {res.model_name} ({res.num_params:,} parameters, {res.trainable_params:,} trained) for "
          f"{res.steps} steps, {res.tokens:,} tokens in {res.train_seconds:.1f} s ({res.tokens_per_s:,.0f} tokens/s)")
    print(f"scored on the first {res.before.chars + 1:,} characters of the validation text:")
    print_score_table([(res.before.model, res.num_params, res.before), (res.after.model, res.num_params, res.after)])
    print(f"saved: {out / 'model_hf_finetuned'}")
    for row in res.samples:
        if row["strategy"] == "temperature" and row["prompt"] == res.samples[0]["prompt"]:
            print(f"\n--- {row['model']} fine-tuning, {row['strategy']} ---\n{row['prompt']}{row['text']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nanobard.checkpoint import load_model, resolve_checkpoint
    from nanobard.data import load_split
    from nanobard.evaluate import score_hf, score_scratch
    from nanobard.pretrained import load_pretrained

    split = load_split(args.corpus, args.data)
    text = split.val[: args.score_chars] if args.score_chars else split.val
    rows = []
    for m in args.models:
        p = resolve_checkpoint(m)
        if p.suffix == ".pt":
            model, tok, _ = load_model(p)
            rows.append((str(m), model.num_params(), score_scratch(model, tok, text, str(m), progress=True)))
        else:
            pre = load_pretrained(m)
            rows.append((pre.name, pre.num_params, score_hf(pre.model, pre.tokenizer, text, pre.name, progress=True)))
    print(f"validation text of {split.name!r}: {len(text):,} characters")
    print_score_table(rows)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nanobard.pipeline import STAGES, run_study

    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()

    def on_stage(i: int, stage: str) -> None:
        print(f"\n[{i + 1}/{len(STAGES)}] {stage}  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)

    over = {"max_steps": args.scratch_steps, "max_time": args.scratch_time}
    ft_over = {"pretrained": args.pretrained, "max_steps": args.finetune_steps, "lora_r": args.lora_r,
               "score_chars": args.score_chars}
    res = run_study(out, args.preset, args.corpus, args.data, over, ft_over, force=args.force,
                    progress=not args.no_progress, on_stage=on_stage)
    h = res["headline"]
    s, p = h["scratch"], h["pretrained"]
    print(f"\nstudy finished in {time.perf_counter() - t0:.0f} s; report: {res['report']}")
    print(f"\nbits per character on the same {h['score_chars']:,} validation characters (lower is better):")
    print(f"  {'model':<34} {'params':>12} {'bits/char':>10} {'loss reduction':>15} {'train time':>11}")
    print(f"  {'from scratch':<34} {s['num_params']:>12,} {s['bits_per_char']:>10.4f} "
          f"{s['loss_reduction_pct']:>14.1f}% {s['train_seconds']:>10.0f}s")
    print(f"  {p['name'] + ' before fine-tuning':<34} {p['num_params']:>12,} {p['bits_per_char_before']:>10.4f}")
    print(f"  {p['name'] + ' after fine-tuning':<34} {p['num_params']:>12,} {p['bits_per_char_after']:>10.4f} "
          f"{p['loss_reduction_pct']:>14.1f}% {p['train_seconds']:>10.0f}s")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from nanobard import attention as A
    from nanobard import plots
    from nanobard.checkpoint import load_model, resolve_checkpoint
    from nanobard.pretrained import load_pretrained

    p = resolve_checkpoint(args.model)
    if p.suffix == ".pt":
        model, tok, _ = load_model(p)
        maps, kind, name = A.scratch_attention(model, tok, args.text), "scratch", "from scratch"
    else:
        pre = load_pretrained(args.model, attn="eager")
        model, maps, kind, name = pre.model, A.hf_attention(pre.model, pre.tokenizer, args.text), "hf", pre.name
    stats = A.head_statistics(maps.weights)
    layer = args.layer if args.layer is not None else maps.weights.shape[0] - 1
    if not 0 <= layer < maps.weights.shape[0]:
        raise ValueError(f"--layer must be in 0..{maps.weights.shape[0] - 1}")
    png = plots.attention_heads(maps.weights, maps.tokens, layer, f"{name}: layer {layer}", args.png)
    for line in A.findings(stats, name):
        print(line)
    c = A.causality_check(model, maps.ids, kind)
    print(f"causality: attention above diagonal max {c['attention_above_diagonal_max']:.3g} "
          f"({c['attention_check']}); future gradient max {c['future_gradient_max']:.3g} ({c['gradient_check']})")
    print(f"figure: {png}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """A thin entry to benchmarks/bench.py, which lives in the source checkout, not in the package."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not script.exists():
        raise FileNotFoundError(f"the benchmarks live in nanobard's source checkout ({script} not found); "
                                "run them from a clone: python benchmarks/bench.py --help")
    import subprocess

    return subprocess.run([sys.executable, str(script), *args.bench_args]).returncode


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one --help away)."""

    def error(self, message: str) -> typing.NoReturn:
        hint = ""
        if "expected one argument" in message:
            hint = " (a negative number needs '=', e.g. --lr=-1e-3)"
        self.exit(2, f"nanobard: error: {self.prog.removeprefix('nanobard ')}: {message}{hint}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="nanobard",
        description="Build a GPT from scratch, fine-tune a pretrained one, and look inside both.",
        epilog="Run `nanobard COMMAND --help` for the options of each command.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train the from-scratch character GPT",
                       description="Train the from-scratch character-level GPT. A preset sets every "
                                   "hyperparameter; any flag below overrides one.")
    t.add_argument("--preset", default="quick", choices=list(C.PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in C.PRESETS.items()))
    add_corpus_flags(t)
    t.add_argument("--out", metavar="DIR", help="run folder (default: runs/scratch-<timestamp>)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/ckpt_last.pt exactly where it stopped")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--sample-tokens", type=int, default=300, help="characters to sample at the end (0 = none)")
    add_config_flags(t, C.ModelConfig, C.TrainConfig, skip=("vocab_size",))
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate text from a checkpoint or a fine-tuned model folder",
                       description="Stream text from a from-scratch checkpoint (.pt or its run folder) "
                                   "or a Hugging Face model folder (e.g. model_hf_finetuned/).")
    g.add_argument("model", metavar="MODEL", help="model_scratch_best.pt, a run folder, or a model_hf_finetuned/ folder")
    add_sampling_flags(g)
    g.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                   help="precision of the weights while generating. float32 (default) gives the same text on "
                        "every machine; auto takes bfloat16 where it is native (AVX-512 BF16/AMX CPUs, recent "
                        "GPUs), which halves the memory read per token (~1.8x faster for the 10.7M model on "
                        "an AVX-512 BF16 CPU) but samples differ slightly; bfloat16 forces it")
    g.set_defaults(func=cmd_generate)

    from nanobard.finetune import FinetuneConfig

    f = sub.add_parser("finetune", help="fine-tune a pretrained causal LM on the same text",
                       description="Fine-tune a pretrained causal LM with the Hugging Face Trainer; score it "
                                   "before and after on the shared validation text (bits per character).")
    add_corpus_flags(f)
    f.add_argument("--out", metavar="DIR", help="run folder (default: runs/finetune-<timestamp>)")
    f.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR/hf_checkpoints")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    FIELD_HELP.update({
        "pretrained": "auto (gpt2 if cached/reachable, else smollm2-135m), a hub id, a local folder, or smollm2-135m",
        "lora_r": "LoRA rank (0 = full fine-tuning); merged into the weights before saving",
        "precision": "auto (bfloat16 where the CPU/GPU supports it), float32 or bfloat16",
        "score_chars": "score bits/char on the first N validation characters (0 = the whole validation text)",
        "train_chars": "use only the first N characters of the training text",
        "max_time": "wall-time cap, e.g. 5m (the LR schedule follows the step budget)",
    })
    add_config_flags(f, FinetuneConfig, skip=("prompts",))
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("evaluate", help="bits per character of any models on the shared validation text")
    e.add_argument("models", nargs="+", metavar="MODEL", help="model_scratch_best.pt, run folder, HF folder or hub id")
    add_corpus_flags(e)
    e.add_argument("--score-chars", type=int, default=None, help="score only the first N validation characters")
    e.set_defaults(func=cmd_evaluate)

    from nanobard.pipeline import STUDY_PRESETS

    r = sub.add_parser("run", help="the whole study: train, fine-tune, compare, attention, report",
                       description="Run the whole study into one folder (report.html, figures, models). "
                                   "Re-running with the same --out skips finished stages and resumes an "
                                   "interrupted one.")
    r.add_argument("--preset", default="quick", choices=list(STUDY_PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in STUDY_PRESETS.items()))
    add_corpus_flags(r)
    r.add_argument("--out", metavar="DIR", help="output folder (default: runs/<timestamp>)")
    r.add_argument("--force", action="store_true", help="redo every stage even if finished")
    r.add_argument("--pretrained", default=None, help="auto (default), gpt2, smollm2-135m, a hub id or a local folder")
    r.add_argument("--scratch-steps", type=int, default=None, help="override the from-scratch step budget")
    r.add_argument("--scratch-time", type=C.parse_duration, default=None, help="cap from-scratch training time (5m)")
    r.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tuning step budget")
    r.add_argument("--lora-r", type=int, default=None, help="fine-tune with LoRA of this rank (merged on save)")
    r.add_argument("--score-chars", type=int, default=None, help="validation characters to score (0 = all)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    a = sub.add_parser("attention", help="attention heatmap, head statistics and causality check for one model")
    a.add_argument("model", metavar="MODEL", help="model_scratch_best.pt, a run folder, an HF folder or hub id")
    a.add_argument("--text", default=ATTN_DEFAULT, help="text to look at")
    a.add_argument("--layer", type=int, default=None, help="layer to draw (default: the last)")
    a.add_argument("--png", default="attention.png", help="where to write the heatmap")
    a.set_defaults(func=cmd_attention)

    b = sub.add_parser("bench", help="benchmarks: peak matmul, training, generation, fine-tuning, time to loss",
                       description="Runs benchmarks/bench.py of the source checkout with the arguments given "
                                   "(`nanobard bench --help` lists them)", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for benchmarks/bench.py (--help lists them)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from nanobard.train import NonFiniteLossError, TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"nanobard: {e}", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        print(f"nanobard: error: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"nanobard: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"nanobard: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanobard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
