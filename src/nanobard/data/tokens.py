"""The corpus encoded once into a token file, cached by the text's hash, memory-mapped for batches.

As nanoGPT's ``prepare.py`` does: the character ids of the training and validation parts are
written as flat ``uint16`` arrays (``uint32`` when the vocabulary has more than 65,536 characters)
to ``<cache>/tokens/<sha256 of the text>/{train,val}.npy`` with a ``meta.json`` holding the
vocabulary (``np.load(path, mmap_mode="r")`` opens them without nanobard). A later run on the
same text maps those files instead of reading and encoding the text again, and every process
under ``torchrun`` maps the same files. Memory stays small whatever the corpus size: the file is
read, validated and encoded in chunks of a few MB with vectorised NumPy lookups (one table from
code point to id), never as one Python list of ints.

The ids equal ``CharTokenizer.from_text(train, val).encode(text)``: the sorted characters of the
training part, then the characters found only in the validation part (see tokenizer.py). The
split is the one of ``data.split_text``: the first 90% of the characters train.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanobard import files
from nanobard.data.corpus import (
    VAL_FRACTION,
    CorpusError,
    CorpusId,
    CorpusSplit,
    cache_dir,
    check_text_file,
    load_corpus,
    sha256_file,
)
from nanobard.data.tokenizer import CharTokenizer

logger = logging.getLogger(__name__)

FORMAT = 2  # bump when the files' layout or the encoding changes: old caches are then ignored
CHUNK_BYTES = 1 << 23  # 8 MiB of text at a time
_N_CODE_POINTS = 0x110000


@dataclass
class TokenCorpus:
    """A corpus as token ids: ``train`` and ``val`` are 1-D integer arrays
    (memory-mapped when cached)."""

    name: str
    tokenizer: CharTokenizer
    train: np.ndarray
    val: np.ndarray
    folder: Path | None = None  # the cache folder the arrays are mapped from
    sha256: str = ""  # of the whole text (UTF-8, CRLF read as LF): which text this is

    @property
    def n_chars(self) -> int:
        return len(self.train) + len(self.val)

    @property
    def identity(self) -> CorpusId:
        return CorpusId(self.name, self.sha256, len(self.train), len(self.val))

    def train_text(self, n: int | None = None) -> str:
        """The first ``n`` characters of the training part (all when None)."""
        return self.tokenizer.decode(self.train[:n].tolist())

    def val_text(self, n: int | None = None) -> str:
        """The first ``n`` characters of the validation part: the text every model is scored on."""
        return self.tokenizer.decode(self.val[:n].tolist())


# --------------------------------------------------------------------------------------------
# reading text as code points, chunk by chunk


def _file_chunks(path: Path) -> Iterator[str]:
    """A UTF-8 file as text chunks, with CRLF turned into LF (as ``data.read_text_file``)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, carry = 0, ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(CHUNK_BYTES)
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise CorpusError(
                    f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}); "
                    "convert it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`"
                ) from None
            offset += len(raw)
            carry = "\r" if raw and text.endswith("\r") else ""  # a CRLF may straddle two chunks
            text = text[: len(text) - len(carry)].replace("\r\n", "\n")
            if text:
                yield text
            if not raw:
                return


def _text_chunks(text: str) -> Iterator[str]:
    for i in range(0, len(text), CHUNK_BYTES):
        yield text[i : i + CHUNK_BYTES]


def _code_points(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as one NumPy array (uint8 for ASCII, else uint32)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# --------------------------------------------------------------------------------------------
# encoding


def _vocabulary(train_seen: np.ndarray, val_seen: np.ndarray) -> list[str]:
    """CharTokenizer.from_text's order: sorted training characters, then validation-only ones."""
    base = np.flatnonzero(train_seen)
    extra = np.flatnonzero(val_seen & ~train_seen)
    return [chr(c) for c in base] + [chr(c) for c in extra]


def encode_chunks(chunks: Callable[[], Iterator[str]], out_dir: Path, name: str) -> TokenCorpus:
    """Encode the text that ``chunks()`` yields into ``out_dir/{train,val}.npy`` and ``meta.json``.

    Two passes over the text: the first counts characters (which fixes the 90/10 split) and finds
    which characters occur in each part; the second writes the ids.
    """
    n = sum(len(c) for c in chunks())
    split_at = int(n * (1 - VAL_FRACTION))
    seen = [
        np.zeros(_N_CODE_POINTS, dtype=bool),
        np.zeros(_N_CODE_POINTS, dtype=bool),
    ]  # train, val
    pos = 0
    for chunk in chunks():
        cps = _code_points(chunk)
        cut = min(max(split_at - pos, 0), len(cps))
        seen[0][cps[:cut]] = True
        seen[1][cps[cut:]] = True
        pos += len(cps)
    vocab = _vocabulary(*seen)
    dtype = np.uint16 if len(vocab) <= np.iinfo(np.uint16).max + 1 else np.uint32
    table = np.zeros(_N_CODE_POINTS, dtype=dtype)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = [
        _reserved(np.lib.format.open_memmap(out_dir / f"{part}.npy", mode="w+", dtype=dtype,
                                            shape=(size,)), out_dir / f"{part}.npy")
        for part, size in (("train", split_at), ("val", n - split_at))
    ]  # fmt: skip
    pos, digest = 0, hashlib.sha256()
    for chunk in chunks():
        digest.update(chunk.encode("utf-8"))
        ids = table[_code_points(chunk)]
        cut = min(max(split_at - pos, 0), len(ids))  # this chunk's characters that train
        arrays[0][pos : pos + cut] = ids[:cut]
        v = pos + cut - split_at  # where the rest starts in the validation part
        arrays[1][v : v + len(ids) - cut] = ids[cut:]
        pos += len(ids)
    for a in arrays:
        a.flush()
    tok = CharTokenizer(vocab)
    (out_dir / "meta.json").write_text(
        json.dumps(
            {
                "format": FORMAT,
                "name": name,
                "dtype": np.dtype(dtype).name,
                "train_chars": split_at,
                "val_chars": n - split_at,
                "sha256": digest.hexdigest(),
                "vocab": tok.to_json(),
            },
            ensure_ascii=False,
        )
    )
    return TokenCorpus(name, tok, arrays[0], arrays[1], out_dir, digest.hexdigest())


def _reserved(array: np.memmap, path: Path) -> np.memmap:
    """The mapped file's blocks taken on disk now: a memory map into a sparse file on a full disk
    dies of SIGBUS on a page write, with no message; reserving them fails here, in one line."""
    if hasattr(os, "posix_fallocate"):  # Linux; elsewhere the map stays sparse
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            files.raise_as_write_failed(
                e, path, "point NANOBARD_CACHE at a disk with room for the token cache"
            )
        finally:
            os.close(fd)
    return array


def open_cached(folder: Path) -> TokenCorpus | None:
    """Map a cache folder written by ``encode_chunks``; None if it is missing, old or damaged."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            return None
        train = np.load(folder / "train.npy", mmap_mode="r")
        val = np.load(folder / "val.npy", mmap_mode="r")
        if len(train) != meta["train_chars"] or len(val) != meta["val_chars"]:
            return None
        tok = CharTokenizer.from_json(meta["vocab"])
        return TokenCorpus(meta["name"], tok, train, val, folder, meta["sha256"])
    except (OSError, ValueError, KeyError):
        return None


def _cached(
    key: str, name: str, chunks: Callable[[], Iterator[str]], root: Path | None
) -> TokenCorpus:
    """The cache entry for ``key``, built first if needed (into a temp folder, then renamed, so
    concurrent processes never see a half-written one)."""
    root = root or cache_dir() / "tokens"
    folder = root / key[:32]
    found = open_cached(folder)
    if found is not None:
        logger.info("token cache: %s (%s characters)", folder, f"{found.n_chars:,}")
        found.name = name
        return found
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key[:12]}-"))
    try:
        logger.info("encoding %s into %s", name, folder)
        try:
            encode_chunks(chunks, tmp, name)
        except files.WriteFailed as e:  # named by the entry it was for, not its temp folder
            shutil.rmtree(tmp, ignore_errors=True)
            raise files.WriteFailed(folder, e.cause, e.hint) from None
        if folder.exists() and open_cached(folder) is None:  # damaged or of an older format
            shutil.rmtree(folder, ignore_errors=True)  # (one another process just wrote is kept)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same entry first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    corpus = open_cached(folder)
    if corpus is None:
        raise CorpusError(
            f"could not write the token cache {folder}; check that the folder is writable "
            "or point NANOBARD_CACHE at another folder"
        )
    corpus.name = name
    return corpus


def load_tokens(
    corpus: str = "shakespeare",
    data_path: str | os.PathLike | None = None,
    cache_root: Path | None = None,
) -> TokenCorpus:
    """The corpus as memory-mapped token ids, encoded on first use and cached by the text's
    SHA-256."""
    if data_path is not None:
        path = Path(data_path)
        check_text_file(path)
        return _cached(sha256_file(path), path.name, lambda: _file_chunks(path), cache_root)
    name, text = load_corpus(corpus)
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _cached(key, name, lambda: _text_chunks(text), cache_root)


def tokens_from_split(split: CorpusSplit) -> TokenCorpus:
    """An in-memory TokenCorpus of a CorpusSplit (small texts, tests, notebooks)."""
    tok = CharTokenizer.from_text(split.train, split.val)
    table = np.zeros(_N_CODE_POINTS, dtype=np.int64)
    table[[ord(c) for c in tok.chars]] = np.arange(tok.vocab_size)
    return TokenCorpus(
        split.name,
        tok,
        table[_code_points(split.train)],
        table[_code_points(split.val)],
        sha256=split.sha256,
    )
