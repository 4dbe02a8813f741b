"""interp.probe: what the live explorer shows of one text, checked against the model's own
outputs, the sampling code and the study's analyses (a tiny GPT and a tiny GPT-2)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.nn import functional as F

from nanobard.config import ModelConfig
from nanobard.data.tokenizer import CharTokenizer, UnknownCharactersError
from nanobard.hf.pretrained import load_pretrained
from nanobard.interp.attention import attention_maps
from nanobard.interp.circuits import head_ablation
from nanobard.interp.lens import make_lens
from nanobard.interp.probe import MAX_CHARS, ProbeError, probe
from nanobard.model.gpt import GPT
from nanobard.model.sampling import SamplingConfig
from tests.fixtures import build_tiny_hf_model

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


@pytest.fixture(scope="module")
def scratch(tiny_text):
    tok = CharTokenizer.from_text(tiny_text + TEXT)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                            n_embd=32))  # fmt: skip
    with torch.no_grad():  # far from the init, so that heads differ and ablation matters
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return make_lens(model, tok, "scratch")


@pytest.fixture(scope="module")
def hf(tiny_text, tmp_path_factory):
    folder = build_tiny_hf_model(tmp_path_factory.mktemp("hf"), tiny_text)
    pre = load_pretrained(str(folder))
    return make_lens(pre.model, pre.tokenizer, "tiny-gpt2")


@pytest.fixture(scope="module")
def llama(hf):
    """A tiny Llama (grouped-query attention, rotary positions: the SmolLM2 path) on the same
    BPE as the tiny GPT-2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=hf.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    ))  # fmt: skip
    return make_lens(model.eval(), hf.tokenizer, "tiny-llama")


KINDS = ["scratch", "hf", "llama"]


def _direct_bits(lens, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = lens.trace(torch.tensor([ids])).logits[0]
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none") / math.log(2)


@pytest.mark.parametrize("which", KINDS)
def test_tokens_cover_the_text_and_surprise_is_the_models_loss(which, request):
    lens = request.getfixturevalue(which)
    p = probe(lens, TEXT)
    # the spans tile the text: every character belongs to exactly one token, in order
    assert p.spans[0][0] == 0 and p.spans[-1][1] == len(TEXT)
    assert all(a[1] == b[0] for a, b in zip(p.spans, p.spans[1:]))
    assert "".join(p.tokens) == TEXT
    ids, _ = lens.encode(TEXT)
    bits = _direct_bits(lens, ids)
    assert p.surprise_bits[0] is None
    assert p.surprise_bits[1:] == pytest.approx(bits.tolist(), abs=1e-3)
    scored = len(TEXT) - p.spans[0][1]
    assert p.chars_scored == scored
    assert p.bits_per_char == pytest.approx(float(bits.sum()) / scored, rel=1e-3)


def test_sampled_set_follows_the_sampling_settings(scratch):
    plain = probe(scratch, TEXT, top=20)
    assert plain.next.kept == scratch.vocab_size  # temperature 1, no filter: everything
    assert [c.sampled for c in plain.next.candidates] == pytest.approx(
        [c.prob for c in plain.next.candidates], abs=1e-4
    )
    probs = [c.prob for c in plain.next.candidates]
    assert probs == sorted(probs, reverse=True)

    k3 = probe(scratch, TEXT, top=20, sampling=SamplingConfig(top_k=3))
    assert k3.next.kept == 3
    assert [c.sampled > 0 for c in k3.next.candidates] == [True] * 3 + [False] * 17
    assert sum(c.sampled for c in k3.next.candidates) == pytest.approx(1.0, abs=1e-3)

    cold = probe(scratch, TEXT, sampling=SamplingConfig(temperature=0.5))
    assert cold.next.candidates[0].sampled > cold.next.candidates[0].prob  # sharper

    greedy = probe(scratch, TEXT, sampling=SamplingConfig(temperature=0.0))
    assert greedy.next.kept == 1 and greedy.next.candidates[0].sampled == 1.0

    nucleus = probe(scratch, TEXT, top=20, sampling=SamplingConfig(top_p=0.3))
    mass = sum(c.prob for c in nucleus.next.candidates if c.sampled > 0)
    before = mass - min(c.prob for c in nucleus.next.candidates if c.sampled > 0)
    assert before < 0.3 + 1e-3 <= mass + 1e-3  # the smallest set that reaches 0.3


def test_prediction_at_a_character_is_the_prediction_after_that_prefix(scratch, hf):
    for at in (1, 7, 20, len(TEXT)):  # causal: what follows text[:at] does not see the rest
        a, b = probe(scratch, TEXT, at=at).next, probe(scratch, TEXT[:at]).next
        assert a.after == at and a.candidates[0].token == b.candidates[0].token
        assert a.candidates[0].prob == pytest.approx(b.candidates[0].prob, abs=1e-4)
    p = probe(hf, TEXT, at=9)  # inside a BPE token: the token covering character 8
    start, end = p.spans[p.next.position]
    assert start <= 8 < end and p.next.after == end


def test_attention_and_logit_lens_match_the_models_own(scratch, hf, llama):
    for lens in (scratch, hf, llama):
        p = probe(lens, TEXT, head=(1, 1), logit_lens=True, thumbnails=True)
        maps = attention_maps(lens, TEXT).weights[1, 1]
        for i, row in enumerate(p.attention.weights):
            assert len(row) == i + 1 and sum(row) == pytest.approx(1.0, abs=1e-3)
            assert row == pytest.approx(maps[i, : i + 1].tolist(), abs=1e-3)
        assert [layer.layer for layer in p.lens] == list(range(lens.n_layers + 1))
        assert p.lens[-1].tokens[0] == p.next.candidates[0].token  # the output layer
        assert p.lens[-1].probs[0] == pytest.approx(p.next.candidates[0].prob, abs=1e-3)
        assert len(p.thumbnails) == lens.n_layers and len(p.thumbnails[0]) == lens.n_heads


@pytest.mark.parametrize("which", KINDS)
def test_switching_a_head_off_costs_what_the_studys_ablation_says(which, request):
    lens = request.getfixturevalue(which)
    study = head_ablation(lens, TEXT, layers=[0])  # one window: the same tokens as the probe
    for h in range(lens.n_heads):
        p = probe(lens, TEXT, ablate=[[0, h]])
        assert p.ablated.heads == [[0, h]]
        cost = p.ablated.bits_per_char - p.bits_per_char
        assert cost == pytest.approx(study.delta_bpc[0][h], abs=1e-4)
        # the clean candidates' probabilities with the head off: the ablated model's own
        assert len(p.ablated.clean_candidates) == len(p.next.candidates)
        ablated = {c.id: c.prob for c in p.ablated.next.candidates}
        shared = [(c.id, q) for c, q in zip(p.next.candidates, p.ablated.clean_candidates)
                  if c.id in ablated]  # fmt: skip
        assert shared and all(q == pytest.approx(ablated[i], abs=1e-5) for i, q in shared)
    both = probe(lens, TEXT, ablate=[[0, 0], [1, 1]], logit_lens=True)
    assert both.ablated.bits_per_char != both.bits_per_char  # (a random GPT-2 moves ~1e-5)
    assert len(both.ablated.lens) == lens.n_layers + 1
    assert both.ablated.lens[0] == both.lens[0]  # the embeddings come before any head


def test_a_character_split_over_byte_tokens(hf):
    text = "a😀b😀"  # byte-level BPE: the emoji is several tokens, the first covering it
    p = probe(hf, text, at=2)
    assert p.spans[-1][1] == len(text) == 4  # (each byte token alone decodes to "\ufffd")
    widths = [e - s for s, e in p.spans]
    assert 0 in widths  # the emoji's other byte tokens cover no character
    start, end = p.spans[p.next.position]
    assert end == 2  # the prediction after the whole emoji, not after its first byte
    assert p.spans[p.next.position + 1] == [2, 3]  # the next token is "b"
    assert all(c.token for c in p.next.candidates)


@pytest.mark.parametrize("which", KINDS)
def test_direct_logit_attribution_of_the_top_prediction(which, request):
    from nanobard.interp.patching import direct_logit_attribution

    lens = request.getfixturevalue(which)
    p = probe(lens, TEXT, dla=True)
    want = direct_logit_attribution(lens, TEXT, p.next.candidates[0].id)
    assert sum(p.dla.heads, []) == pytest.approx(sum(want.heads, []), abs=1e-5)
    assert p.dla.mlp == pytest.approx(want.mlp, abs=1e-5)
    assert (p.dla.embed, p.dla.logit) == pytest.approx((want.embed, want.logit), abs=1e-5)
    if lens.kind == "scratch":  # at a position: the prefix's own attribution (causal)
        at = probe(lens, TEXT, at=20, dla=True)
        prefix = direct_logit_attribution(lens, TEXT[:20], at.next.candidates[0].id)
        assert at.dla.logit == pytest.approx(prefix.logit, abs=1e-4)
        assert sum(at.dla.heads, []) == pytest.approx(sum(prefix.heads, []), abs=1e-4)


def test_a_long_text_is_cut_from_the_front(scratch):
    text = TEXT * 3  # 177 characters, the context holds 64
    p = probe(scratch, text)
    assert len(p.tokens) == scratch.context and p.start == len(text) - scratch.context
    assert p.spans[0][0] == p.start and p.next.after == len(text)
    with pytest.raises(ProbeError, match="before the 64 tokens"):
        probe(scratch, text, at=10)


def test_probe_refuses_what_it_cannot_read(scratch):
    cases = [
        (dict(text=""), "empty"),
        (dict(text="x" * (MAX_CHARS + 1)), "limit is 4,096"),
        (dict(text=TEXT, top=0), "top must be"),
        (dict(text=TEXT, head=(2, 0)), "layer in 0 .. 1"),
        (dict(text=TEXT, ablate=[[0, 5]]), "head in 0 .. 1"),
        (dict(text=TEXT, at=len(TEXT) + 1), "at must be in"),
    ]
    for kw, message in cases:
        with pytest.raises(ProbeError, match=message):
            probe(scratch, **kw)
    with pytest.raises(UnknownCharactersError, match="'☃'"):
        probe(scratch, "snow ☃ man")


def test_thumbnails_average_the_full_map(scratch):
    p = probe(scratch, TEXT[:16], head=(0, 0), thumbnails=True)  # 16 tokens: no pooling
    full = [v for row in p.attention.weights for v in row + [0.0] * (16 - len(row))]
    thumb = [v for row in p.thumbnails[0][0] for v in row]
    assert thumb == pytest.approx(full, abs=1e-3)
    dataclasses.asdict(p)  # a plain record: JSON all the way down
