"""Character tokenizer: one token per character, stored as JSON (never a pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nanobard.errors import NanobardError


class UnknownCharactersError(NanobardError, ValueError):
    """Text contains characters outside the vocabulary."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        shown = ", ".join(repr(c) for c in chars[:20]) + (" ..." if len(chars) > 20 else "")
        super().__init__(
            f"{len(chars)} character(s) not in the model's vocabulary: {shown}; "
            "remove them from the text or train on a corpus that contains them"
        )


class CharTokenizer:
    """Maps each character to an integer id, in sorted order of the characters."""

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary must be a list of distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, train_text: str, extra_text: str = "") -> CharTokenizer:
        """Vocabulary of ``train_text``; characters only in ``extra_text`` are appended after it.

        The validation text is passed as ``extra_text`` so that it can always be scored: a
        character never seen in training keeps its untrained embedding, and the model is charged
        the full cost of predicting it.
        """
        base = sorted(set(train_text))
        extra = sorted(set(extra_text) - set(base))
        return cls(base + extra)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise UnknownCharactersError(self.unknown(text)) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        obj = json.loads(text)
        if obj.get("type") != "char" or not isinstance(obj.get("chars"), list):
            raise ValueError("not a nanobard character vocabulary")
        return cls(obj["chars"])

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
