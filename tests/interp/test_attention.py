import torch

from nanobard.config import ModelConfig
from nanobard.data.tokenizer import CharTokenizer
from nanobard.interp.attention import (
    attention_findings,
    attention_maps,
    causality_check,
    head_statistics,
)
from nanobard.interp.lens import make_lens
from nanobard.model.gpt import GPT


def test_head_statistics_on_known_patterns():
    T = 6
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    for i in range(1, T):
        prev[i, i - 1] = 1  # attends only to the token before
    selfp = torch.eye(T)
    w = torch.stack([torch.stack([prev, selfp])])  # [1 layer, 2 heads, T, T]
    stats = head_statistics(w)
    assert (
        stats[0].previous_token == 1.0
        and stats[0].mean_distance == 1.0
        and stats[0].entropy_bits == 0.0
    )
    assert stats[1].self_attention == 1.0 and stats[1].mean_distance == 0.0
    text = " ".join(attention_findings(stats, "m"))
    assert "L0H0" in text and "previous-token" in text


def test_attention_maps_and_causality_check():
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefgh ")
    model = GPT(
        ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    )
    maps = attention_maps(make_lens(model, tok), "abc defg")
    assert maps.weights.shape == (2, 2, 8, 8) and maps.tokens[3] == " "
    res = causality_check(make_lens(model, tok), tok.encode("abc defg"))
    assert res.attention_check == "pass" and res.gradient_check == "pass" and res.passed


def test_causality_check_catches_a_leak():
    """A model with the causal mask removed must fail both checks (so the check can fail)."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text("abcdefgh")
    model = GPT(
        ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    )
    orig = torch.Tensor.tril
    try:
        torch.Tensor.tril = lambda self, *a, **k: torch.ones_like(self)  # no mask
        res = causality_check(make_lens(model, tok), tok.encode("abcdefgh"))
    finally:
        torch.Tensor.tril = orig
    assert res.attention_check == "fail" and res.gradient_check == "fail" and not res.passed


def test_attention_maps_and_causality_of_a_hugging_face_model(tmp_path, tiny_text):
    """The same two functions open a GPT-2 through the Lens: weights from its explicit attention
    path (rows sum to 1, nothing above the diagonal), BPE tokens as labels, and both checks pass."""
    from nanobard.hf.pretrained import load_pretrained
    from tests.fixtures import build_tiny_hf_model

    # fused (sdpa) attention
    pre = load_pretrained(str(build_tiny_hf_model(tmp_path / "gpt2", tiny_text)))
    lens = make_lens(pre.model, pre.tokenizer)
    maps = attention_maps(lens, tiny_text[:200], max_tokens=12)
    assert maps.weights.shape == (2, 4, 12, 12)
    assert torch.allclose(maps.weights.sum(-1), torch.ones(2, 4, 12), atol=1e-5)
    assert "".join(maps.tokens) == pre.tokenizer.decode(maps.ids)
    res = causality_check(lens, maps.ids)
    assert res.passed and res.tokens == 12
