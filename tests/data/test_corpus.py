import pytest
import torch

from nanobard.data.corpus import (
    CorpusError,
    check_fits,
    get_batch,
    load_corpus,
    markdown_play_to_text,
    read_text_file,
    split_text,
    tiny_shakespeare_path,
)
from tests.conftest import SHARED_TINY


def test_split_is_first_90_percent_of_characters():
    s = split_text("abcdefghij" * 10)
    assert s.train == ("abcdefghij" * 10)[:90] and s.val == ("abcdefghij" * 10)[90:]


PLAY = """# A Play

## ACT I

### SCENE I. A street.

_Enter ROMEO and a long
direction that continues_

**ROMEO**  
_\\[Aside]_  
But soft, what light  
through yonder window\\* breaks?

_Exit_

**FIRST CITIZEN**  
Speak, speak.
"""


def test_markdown_play_conversion():
    text = markdown_play_to_text(PLAY)
    assert text == (
        "ROMEO:\nBut soft, what light\nthrough yonder window* breaks?\n\n"
        "FIRST CITIZEN:\nSpeak, speak.\n"
    )


def test_embedded_plays_are_deterministic_plain_text():
    name, text = load_corpus("shakespeare")
    assert name == "shakespeare" and len(text) > 4_000_000
    assert "**" not in text and "## ACT" not in text and "_Exit_" not in text
    assert text.startswith("THESEUS:\n")
    assert load_corpus("shakespeare")[1] == text


@pytest.mark.skipif(not SHARED_TINY.exists(), reason="tiny Shakespeare not on this machine")
def test_tiny_shakespeare_from_env_path():
    assert tiny_shakespeare_path() == SHARED_TINY
    assert len(load_corpus("tinyshakespeare")[1]) == 1_115_394


def test_tiny_shakespeare_corrupted_cache_is_fetched_again(monkeypatch, tmp_path):
    from nanobard.data import corpus as data

    monkeypatch.delenv("NANOBARD_TINYSHAKESPEARE", raising=False)
    monkeypatch.setenv("NANOBARD_CACHE", str(tmp_path))
    (tmp_path / "tinyshakespeare.txt").write_text("corrupted")
    calls = []
    monkeypatch.setattr(data, "download_verified", lambda url, dest, sha: calls.append(dest))
    assert tiny_shakespeare_path() == tmp_path / "tinyshakespeare.txt"
    assert calls == [tmp_path / "tinyshakespeare.txt"]


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"caf\xe9 latin-1", "not UTF-8")],
)
def test_bad_files(tmp_path, content, message):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_text_file(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="folder"):
        read_text_file(tmp_path)


def test_too_short_for_a_block():
    with pytest.raises(CorpusError, match="too short"):
        check_fits(split_text("0123456789"), block_size=64)
    with pytest.raises(CorpusError, match="validation part"):
        check_fits(split_text("x" * 500), block_size=64)


def test_get_batch_targets_are_shifted_inputs():
    data = torch.arange(100)
    x, y = get_batch(data, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 8) and torch.equal(y, x + 1)


def test_download_verified_checks_the_sha256_and_never_leaves_a_wrong_file(tmp_path):
    """Through pooch, from a server on 127.0.0.1 (tests never reach the network)."""
    import functools
    import hashlib
    import http.server
    import threading

    from nanobard.data.corpus import download_verified

    served = tmp_path / "served"
    served.mkdir()
    (served / "text.txt").write_bytes(b"To be, or not to be\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/text.txt"
    try:
        good = hashlib.sha256(b"To be, or not to be\n").hexdigest()
        dest = tmp_path / "cache" / "text.txt"
        download_verified(url, dest, good)
        assert dest.read_bytes() == b"To be, or not to be\n"
        with pytest.raises(CorpusError, match="checksum"):
            download_verified(url, tmp_path / "cache" / "other.txt", "0" * 64)
        assert not (tmp_path / "cache" / "other.txt").exists()  # no wrong file left behind
        with pytest.raises(CorpusError, match="cannot download"):
            download_verified(
                url.replace("text.txt", "missing.txt"), tmp_path / "cache" / "m.txt", good
            )
    finally:
        server.shutdown()
