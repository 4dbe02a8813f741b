"""Prompts and probe texts taken from a corpus, in its own characters."""

import pytest

from nanobard.data.corpus import CorpusError
from nanobard.data.prompts import attention_text, corpus_prompts


def test_corpus_prompts_use_only_vocabulary_characters():
    lines = [
        "jack and jill went up the hill",
        "  to fetch a pail of water",
        "Ünïcödé lïñé hëré qqq",
        "jack fell down and broke his crown",
        "x",
        "and jill came tumbling after",
    ]
    corpus = "\n".join(lines * 3)
    vocab = set("abcdefghijklmnopqrstuvwxyz ,.\n")  # no capitals: "ROMEO" could not even be spelled
    prompts = corpus_prompts(corpus, vocab, n=4, length=12)
    assert len(prompts) == 4 and len(set(prompts)) == 4
    assert all(set(p) <= vocab and 8 <= len(p) <= 12 for p in prompts)
    assert prompts[1] == "to fetch a p"
    text = attention_text(corpus, vocab, n_chars=40)
    assert len(text) == 40 and set(text) <= vocab and text.startswith("jack and jill")
    assert set(attention_text("Ü\nab", vocab, n_chars=40)) <= vocab
    with pytest.raises(CorpusError):
        corpus_prompts("ÜÜÜÜÜÜÜÜÜÜ\nÖÖÖÖÖÖÖÖÖÖ", vocab)
