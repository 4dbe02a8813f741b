import pytest

from nanobard.data.tokenizer import CharTokenizer, UnknownCharactersError


def test_roundtrip_and_json(tmp_path):
    tok = CharTokenizer.from_text("hello world\n")
    ids = tok.encode("hello\nworld")
    assert tok.decode(ids) == "hello\nworld"
    assert tok.chars == sorted(set("hello world\n"))
    tok.save(tmp_path / "vocab.json")
    assert CharTokenizer.load(tmp_path / "vocab.json").chars == tok.chars


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("abz€")
    assert e.value.chars == ["z", "€"]
    assert "'z'" in str(e.value) and "'€'" in str(e.value)


def test_validation_only_characters_are_appended_after_training_ones():
    tok = CharTokenizer.from_text("bca", extra_text="abz")
    assert tok.chars == ["a", "b", "c", "z"]
