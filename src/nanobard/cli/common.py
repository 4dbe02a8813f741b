"""Shared pieces of the command modules: flags built from config dataclasses, corpus and sampling
flags, one-line argparse errors. Nothing here imports torch (``--help`` stays fast)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanobard import config as C

if TYPE_CHECKING:  # these import torch: only for the type checker
    from nanobard.model.evaluate import Score
    from nanobard.model.sampling import SamplingConfig, TextGenerator


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the command, suggest the closest flag or command
    and point at that command's own ``--help``. Abbreviated flags are refused (a prefix that works
    today would change meaning when a flag is added)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the root's subcommand parsers, by name

    def parse_args(self, args=None, namespace=None):
        """Unknown flags are reported by the command they were given to, not by the root."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            target = self.commands.get(getattr(ns, "command", None) or "", self)
            target.error(
                f"unrecognized arguments: {' '.join(extras)}{target._closest_flag(extras)}"
            )
        return ns

    def _closest_flag(self, extras: list[str]) -> str:
        names = [o[2:] for a in self._actions for o in a.option_strings if o.startswith("--")]
        for arg in extras:
            if arg.startswith("--"):
                name = arg[2:].split("=", 1)[0]
                close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean --{close[0]}?)"
        return ""

    def error(self, message: str) -> typing.NoReturn:
        hint = ""
        if "expected one argument" in message:
            hint = " (a negative number needs '=', e.g. --lr=-1e-3)"
        elif m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            choices = [c.strip(" '\"") for c in m.group(2).split(",")]
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
            if close:
                message = message.replace(
                    "(choose from", f"(did you mean '{close[0]}'? choose from"
                )
        self.exit(2, f"{self.prog}: error: {message}{hint}; see {self.prog} --help\n")


def _flag_type(tp: Any) -> tuple[Any, list[str] | None]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return str, list(typing.get_args(tp))
    if args:  # Optional[X] / X | None / Literal in a union
        return _flag_type(args[0])
    return tp, None


def add_config_flags(
    parser: argparse.ArgumentParser, *classes: type, skip: tuple[str, ...] = ()
) -> None:
    """One ``--kebab-case`` flag per dataclass field, its help from the field's metadata; an unset
    flag keeps the preset's value (None)."""
    for cls in classes:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(f"{cls.__name__} overrides (default: the preset's value)")
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            tp, choices = _flag_type(hints[f.name])
            help_ = f.metadata.get("help", f.name.replace("_", " "))
            if tp is bool:
                group.add_argument(
                    flag,
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=help_,
                )
            elif f.name == "max_time":
                group.add_argument(
                    flag,
                    dest=f.name,
                    type=C.parse_duration,
                    default=None,
                    metavar="DURATION",
                    help=help_,
                )
            else:
                group.add_argument(
                    flag, dest=f.name, type=tp, choices=choices, default=None, help=help_
                )


def overrides(args: argparse.Namespace, *classes: type) -> dict[str, Any]:
    """The flags of ``classes``' fields that the user set."""
    names = {f.name for cls in classes for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def count(text: str) -> int:
    """An argparse type: a whole number >= 0 (a count of tokens or characters)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def add_corpus_flags(parser: argparse.ArgumentParser, use: str = "train on") -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--corpus",
        default="shakespeare",
        choices=["shakespeare", "tinyshakespeare"],
        help="built-in corpus: the 38 plays shipped with nanobard (default, offline) or the "
        "classic tiny Shakespeare file (downloaded once; or set NANOBARD_TINYSHAKESPEARE=PATH)",
    )
    g.add_argument("--data", metavar="PATH", help=f"{use} any UTF-8 text file instead")


def add_run_flags(parser: argparse.ArgumentParser, what: str, resume: str) -> None:
    parser.add_argument(
        "--out", metavar="DIR", help=f"run folder (default: runs/{what}-<timestamp>)"
    )
    parser.add_argument("--resume", action="store_true", help=resume)
    parser.add_argument(
        "--force",
        action="store_true",
        help="start afresh in a --out folder that holds a run already (its checkpoints, metrics "
        "and results are replaced); without --resume or --force such a folder is refused",
    )
    parser.add_argument(
        "--allow-new-corpus",
        action="store_true",
        help="with --resume: continue on a corpus that changed since the run began (by default "
        "a resumed run refuses a text other than its checkpoint's SHA-256)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_report_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-to",
        default="none",
        choices=list(C.REPORT_TO),
        help="also log the metrics-file scalars to an experiment tracker: tensorboard (event "
        "files in DIR/tensorboard; `tensorboard --logdir runs` shows runs side by side), trackio "
        "(its local store; `trackio show --project nanobard`) or wandb (offline into DIR/wandb "
        "unless you are logged in); each is an optional install, e.g. "
        "pip install 'nanobard[tensorboard]' (default: none)",
    )


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt",
        default=None,
        help="text to continue (default: 'ROMEO:\\n' for Shakespeare, "
        "else the opening of a validation line)",
    )
    parser.add_argument("--max-new-tokens", type=count, default=300, help="tokens to generate")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="0 = greedy; higher = more random"
    )
    parser.add_argument(
        "--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = off)"
    )
    parser.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)"
    )
    parser.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    parser.add_argument("--seed", type=int, default=1337, help="random seed for sampling")


def run_folder(args: argparse.Namespace, what: str) -> Path:
    """``--out``, or a new folder under runs/. The commands that take ``--resume`` (train,
    finetune) refuse, in one line, to start afresh over a run already there unless told to
    (``--force``): a finished run's best checkpoint and results would be replaced without a
    word."""
    import time

    from nanobard.errors import NanobardError
    from nanobard.rundir import RunDir

    out = Path(args.out or f"runs/{what}-{time.strftime('%Y%m%d-%H%M%S')}")
    if getattr(args, "resume", True) or getattr(args, "force", False):
        return out
    held = [name for name in RunDir.RUN_FILES if (out / name).exists()]
    if held:
        raise NanobardError(
            f"{out} holds a run already ({', '.join(held)}); pass --resume to continue it, "
            "--force to start afresh over it, or another --out"
        )
    return out


def print_stream(gen: TextGenerator, prompt: str, n: int, scfg: SamplingConfig) -> None:
    """Stream a continuation to stdout. The prompt is encoded first, so a prompt the model cannot
    read fails before anything is printed."""
    pieces = gen.stream(prompt, n, scfg)
    first = next(pieces, "")
    sys.stdout.write(prompt + first)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def print_score_table(rows: list[tuple[str, int, Score]]) -> None:
    """One line per (model name, parameters, score)."""
    print(f"{'model':<38} {'params':>12} {'chars':>8} {'nats/token':>11} {'bits/char':>10}")
    for name, params, score in rows:
        print(
            f"{name:<38} {params:>12,} {score.chars:>8,} "
            f"{score.nats_per_token:>11.4f} {score.bits_per_char:>10.4f}"
        )
