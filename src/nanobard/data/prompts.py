"""Text taken from the corpus for the study to show and probe: sample prompts and the stretch of
validation text the attention maps and ablations read, in the corpus's own characters (any
language works), or Shakespeare's own when the corpus is Shakespeare."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from nanobard.data.corpus import CorpusError

__all__ = ["SHAKESPEARE_ATTENTION_TEXT", "is_shakespeare", "corpus_prompts", "attention_text"]

SHAKESPEARE_ATTENTION_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def is_shakespeare(name: str) -> bool:
    return name in ("shakespeare", "tinyshakespeare")


def corpus_prompts(
    val_text: str,
    vocab_chars: Iterable[str] | None,
    n: int = 4,
    length: int = 32,
    min_length: int = 8,
) -> list[str]:
    """Openings (first ``length`` characters, stripped) of ``n`` lines of the validation text,
    spread evenly through it, that use only characters of ``vocab_chars`` (None: any) and have
    at least ``min_length`` characters: prompts from any corpus, no language assumed."""
    vocab = None if vocab_chars is None else set(vocab_chars)
    seen: set[str] = set()
    found = []
    for line in val_text.splitlines():
        s = line.strip()[:length].rstrip()
        if len(s) >= min_length and (vocab is None or set(s) <= vocab) and s not in seen:
            seen.add(s)
            found.append(s)
    if not found:
        raise CorpusError(
            f"no line of the validation text opens with {min_length}+ characters of the "
            "vocabulary; lower min_length or pass more text"
        )
    step = len(found) / min(n, len(found))
    return [found[int(k * step)] for k in range(min(n, len(found)))]


def attention_text(val_text: str, vocab_chars: Iterable[str] | None, n_chars: int = 64) -> str:
    """The first stretch of ``n_chars`` characters of the validation text that starts a line and
    uses only vocabulary characters (for attention maps, or a longer one as an ablation slice);
    the longest such stretch when none is that long."""
    vocab = None if vocab_chars is None else set(vocab_chars)
    bad = [] if vocab is None else [i for i, c in enumerate(val_text) if c not in vocab]
    bad.append(len(val_text))
    starts = [0] + [i + 1 for i, c in enumerate(val_text) if c == "\n"]
    best = ""
    for s in starts:
        stop = bad[bisect.bisect_left(bad, s)]  # first unknown character at or after s
        piece = val_text[s : min(stop, s + n_chars)]
        if len(piece) == n_chars:
            return piece
        best = max(best, piece, key=len)
    if not best.strip():
        raise CorpusError("no line of the validation text starts with characters of the vocabulary")
    return best
