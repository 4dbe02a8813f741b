import logging
import math
from dataclasses import replace

import pytest
import torch

from nanobard.config import ModelConfig
from nanobard.data.tokenizer import CharTokenizer
from nanobard.model.evaluate import bits_per_char, score_scratch, sliding_nll, window_plan
from nanobard.model.gpt import GPT


def test_bits_per_char_by_hand():
    # a model that puts probability 1/4 on every next character of an 8-character text:
    # 7 predictions x ln 4 nats = 7 x 2 bits; 7 characters scored -> exactly 2 bits per character
    assert bits_per_char(7 * math.log(4), 7) == pytest.approx(2.0)
    # 3 BPE tokens of p=1/2 covering 6 characters -> 3 bits / 6 chars
    assert bits_per_char(3 * math.log(2), 6) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bits_per_char(1.0, 0)


def test_uniform_model_scores_log2_vocab():
    # logits all zero -> uniform over V=4 -> every token costs ln 4 nats = 2 bits
    ids = [0, 1, 2, 3, 0, 1, 2, 3, 3, 2]
    nll, n = sliding_nll(
        lambda x, start: torch.zeros(x.shape[0], x.shape[1] - start, 4), ids, window=4, stride=2
    )
    assert n == 9 and nll == pytest.approx(9 * math.log(4))


@pytest.mark.parametrize("n, window, stride", [(10, 4, 2), (100, 17, 8), (5, 8, 4), (33, 9, 1)])
def test_window_plan_scores_each_token_once_with_context(n, window, stride):
    plan = window_plan(n, window, stride)
    scored = [t for b, e, f in plan for t in range(f, e)]
    assert scored == list(range(1, n))
    for b, e, f in plan:
        assert e - b <= window and f > b
        if f >= window:  # after the first window, at least window - stride tokens of context
            assert f - b >= window - stride


def test_sliding_window_equals_direct_sum_for_char_model(tiny_text):
    torch.manual_seed(0)
    text = tiny_text[:300]
    tok = CharTokenizer.from_text(text)
    model = GPT(
        ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    s = score_scratch(model, tok, text)
    ids = torch.tensor(tok.encode(text))
    # recompute by hand: target t predicted from ids[b:t] with the plan's windows
    total = 0.0
    for b, e, f in window_plan(len(ids), s.window, s.stride):
        logp = torch.log_softmax(model(ids[None, b : e - 1]).logits[0], -1)
        total += -sum(logp[t - b - 1, ids[t]].item() for t in range(f, e))
    assert s.nll_nats == pytest.approx(total, rel=1e-5)
    assert s.chars == 299 and s.bits_per_char == pytest.approx(total / 299 / math.log(2), rel=1e-5)


def test_a_pretrained_model_is_scored_on_the_positions_it_scores_only(tmp_path, tiny_text):
    """The LM head on the scored positions only, and bfloat16 autocast: the same score as the
    model's full float32 forward (to round-off, and to 0.01 bits/char in bfloat16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanobard.model import evaluate as E
    from tests.fixtures import build_tiny_hf_model

    folder = build_tiny_hf_model(tmp_path / "gpt2", tiny_text)
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    x = torch.tensor([tok(tiny_text[:400])["input_ids"][:40]])
    with torch.no_grad():
        assert torch.allclose(E._logits_from(model)(x, 17), model(input_ids=x).logits[:, 17:],
                              atol=1e-5)  # fmt: skip
    text = tiny_text[:3000]
    seen = []  # the positions the LM head runs on, per batch: the scored ones (and the first
    # window's, batched with them), never the context alone
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    fast = E.score_hf(model, tok, text, max_window=64)
    hook.remove()
    assert seen and max(seen) == 64 and min(seen) <= 32
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll, n = E.sliding_nll(lambda x, s: model(input_ids=x).logits[:, s:], ids, 65, 32, 4)
    assert (fast.tokens, fast.precision) == (n, "float32")
    assert fast.nll_nats == pytest.approx(nll, rel=1e-5)
    bf16 = E.score_hf(model, tok, text, max_window=64, precision=torch.bfloat16)
    assert bf16.precision == "bfloat16" and bf16.nll_nats != fast.nll_nats
    assert bf16.bits_per_char == pytest.approx(fast.bits_per_char, abs=0.01)


def test_a_model_without_the_causal_mask_is_scored_with_a_warning(tiny_text, caplog):
    """--no-causal sees the character it predicts: its bits/char are no measure of prediction."""
    tok = CharTokenizer.from_text(tiny_text[:300])
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with caplog.at_level(logging.WARNING, logger="nanobard"):
        score_scratch(GPT(cfg).eval(), tok, tiny_text[:100])
        assert not caplog.records
        score_scratch(GPT(replace(cfg, causal=False)).eval(), tok, tiny_text[:100], "enc")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("enc attends to the characters it predicts")
