"""The token cache: the same ids as the character tokenizer,
reused, rebuilt when the text changes."""

import os

import numpy as np
import pytest
import torch

import nanobard.data.tokens as T
from nanobard.data.corpus import CorpusError, get_batch, read_text_file, split_text
from nanobard.data.tokenizer import CharTokenizer
from nanobard.data.tokens import load_tokens, tokens_from_split


def _today(path):
    """What training did before the cache: read, split, CharTokenizer, a LongTensor."""
    split = split_text(read_text_file(path))
    tok = CharTokenizer.from_text(split.train, split.val)
    return split, tok, torch.tensor(tok.encode(split.train)), torch.tensor(tok.encode(split.val))


def test_same_ids_and_batches_as_the_character_tokenizer(tmp_path, tiny_text, monkeypatch):
    # many chunks: characters and CRLFs straddle their edges
    monkeypatch.setattr(T, "CHUNK_BYTES", 997)
    text = (
        tiny_text[:6000] + "\r\nnaïve café — ✓ 日本\r\n" * 20 + "only-in-validation: Ωμέγα\r\n" * 40
    )
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    split, tok, train, val = _today(path)
    tc = load_tokens(data_path=path, cache_root=tmp_path / "cache")
    # validation-only characters come last
    assert tc.tokenizer.chars == tok.chars and "Ω" in tok.chars[-12:]
    assert tc.train.dtype == np.uint16 and isinstance(tc.train, np.memmap)
    assert np.array_equal(tc.train, train.numpy()) and np.array_equal(tc.val, val.numpy())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        for a, b in zip(get_batch(tc.train, 16, 4, g1), get_batch(train, 16, 4, g2)):
            assert a.dtype == torch.int64 and torch.equal(a, b)
    assert tc.val_text() == split.val and tc.train_text(50) == split.train[:50]
    mem = tokens_from_split(split)
    assert np.array_equal(mem.train, train.numpy()) and mem.tokenizer.chars == tok.chars


def test_the_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, tiny_text, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text(tiny_text[:5000])
    first = load_tokens(data_path=path, cache_root=tmp_path / "cache")
    calls = []
    real = T.encode_chunks
    monkeypatch.setattr(T, "encode_chunks", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = load_tokens(data_path=path, cache_root=tmp_path / "cache")
    assert calls == [] and again.folder == first.folder  # reused: nothing encoded
    path.write_text(tiny_text[:5000] + "and a new line\n")
    changed = load_tokens(data_path=path, cache_root=tmp_path / "cache")
    assert calls == [1] and changed.folder != first.folder and changed.n_chars == first.n_chars + 15
    (changed.folder / "val.npy").write_bytes(b"damaged")  # a damaged entry is rebuilt, not trusted
    load_tokens(data_path=path, cache_root=tmp_path / "cache")
    assert calls == [1, 1]


def test_a_big_vocabulary_takes_uint32(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000)) * 2  # beyond uint16, no surrogates
    tc = T.encode_chunks(lambda: iter([text]), tmp_path / "big", "big")
    assert tc.train.dtype == np.uint32 and tc.tokenizer.vocab_size == 70_000


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"\x00\x01binary", "binary"), (b"caf\xe9 " * 100, "not UTF-8")],
)
def test_unusable_files_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        load_tokens(data_path=path, cache_root=tmp_path / "cache")


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="Linux only")
def test_a_full_disk_under_the_cache_is_one_line_not_a_bus_error(tmp_path, tiny_file, monkeypatch):
    """The token files are memory-mapped: on a full disk an unreserved page write kills the
    process with SIGBUS (measured on a 1 MB tmpfs); their blocks are reserved first instead."""
    import errno

    from nanobard.files import WriteFailed

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(WriteFailed) as e:
        load_tokens(data_path=tiny_file, cache_root=tmp_path / "cache")
    msg = str(e.value)
    assert msg.startswith("no space left on the device") and "nothing was written there" in msg
    assert msg.endswith("point NANOBARD_CACHE at a disk with room for the token cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # no half entry left
    monkeypatch.undo()
    corpus = load_tokens(data_path=tiny_file, cache_root=tmp_path / "cache")
    assert corpus.sha256 == split_text(read_text_file(tiny_file)).sha256  # one text, one SHA-256
