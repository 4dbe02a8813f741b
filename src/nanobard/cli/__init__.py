"""Command-line front end: ``nanobard <command>``, one module per command (its flags and its
handler). The only package that prints.

An error the user can cause (a ``NanobardError``, or a file the OS refuses) ends as one line on
stderr and a non-zero exit code; any other exception is a bug in nanobard and keeps its
traceback. Building the parser imports no torch, so ``nanobard --help`` is quick.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from nanobard.cli import (
    attention,
    bench,
    compare,
    evaluate,
    export,
    finetune,
    generate,
    patch,
    run,
    serve,
    train,
)
from nanobard.cli.common import Parser
from nanobard.errors import NanobardError
from nanobard.files import DISK_ERRNOS
from nanobard.rundir import set_command

COMMANDS = (
    train,
    generate,
    finetune,
    evaluate,
    compare,
    run,
    attention,
    patch,
    serve,
    export,
    bench,
)
_OS_USER_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="nanobard",
        description="Build a GPT from scratch, fine-tune a pretrained one, and look inside both.",
        epilog="Run `nanobard COMMAND --help` for the options of each command.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    p.commands = dict(sub.choices)
    return p


def _device_of(args: argparse.Namespace) -> str:
    """The device a command ran on, for an out-of-memory message."""
    from nanobard.hardware import pick_device

    try:
        return str(pick_device(getattr(args, "device", None) or "auto"))
    except NanobardError:
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    set_command(argv)  # quoted by the run folders and model cards this command writes
    try:
        return _run(args)
    finally:
        set_command(None)  # a later call from Python is not this command


TRAINING = ("train", "finetune", "run")  # the commands that train, told to keep freed memory


def _run(args: argparse.Namespace) -> int:
    # under torchrun rank 0 speaks for every rank: the others print only warnings and errors
    other_rank = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if args.quiet or other_rank else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    if args.command in TRAINING:  # no page faults in every step; a server returns what it frees
        from nanobard.hardware import keep_freed_memory  # torch: not imported for --help

        keep_freed_memory()
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(
        args, "no_progress", False
    ):  # Hugging Face's own bars too (loading weights, downloads)
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is imported
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        with open(os.devnull, "w") if other_rank else contextlib.nullcontext(sys.stdout) as out:
            with contextlib.redirect_stdout(out):
                return args.handler(args)
    except NanobardError as e:  # 130: interrupted with a checkpoint written, not an error
        print(f"nanobard: {'' if e.exit_code == 130 else 'error: '}{e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if not isinstance(e, _OS_USER_ERRORS) and e.errno not in DISK_ERRNOS:
            raise
        print(
            f"nanobard: error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}",
            file=sys.stderr,
        )
        return 2 if isinstance(e, _OS_USER_ERRORS) else 1
    except (RuntimeError, MemoryError) as e:  # an allocation refused outside train/finetune
        if "torch" not in sys.modules:
            raise
        from nanobard.hardware import out_of_memory

        oom = out_of_memory(e, _device_of(args), f"see nanobard {args.command} --help for the "
                            "sizes to lower")  # fmt: skip
        if oom is None:
            raise
        print(f"nanobard: error: {oom}", file=sys.stderr)
        return oom.exit_code
    except KeyboardInterrupt:
        print("nanobard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
