"""interp.patching on a GPT with a planted induction circuit (tests/interp/test_circuits.py's
planted_gpt), where the right answer is known site by site, and on a tiny GPT-2; the comparison
with TransformerLens is test_transformer_lens.py."""

from __future__ import annotations

import pytest
import torch

from nanobard.data.tokenizer import CharTokenizer
from nanobard.hf.pretrained import load_pretrained
from nanobard.interp.lens import make_lens
from nanobard.interp.patching import (
    PatchingError,
    activation_patching,
    attribution_patching,
    direct_logit_attribution,
)
from tests.fixtures import build_tiny_hf_model
from tests.interp.test_circuits import LETTERS, planted_gpt

# the first half once, then its start again: the induction head at the last position ("c")
# attends to the token after the earlier "c" (position 5, "q") and predicts it
CLEAN = "fbjhcqadlm" + "fbjhc"
CORRUPT = "fbjhcradlm" + "fbjhc"  # position 5 changed: the copy says "r"


@pytest.fixture(scope="module")
def planted():
    return make_lens(planted_gpt(2), CharTokenizer(list(LETTERS)), "planted")


def ranks(x) -> torch.Tensor:
    """Ranks (ties averaged) of values rounded to 1e-6: 1e-33 and 0 are the same site."""
    x = torch.round(torch.as_tensor(x, dtype=torch.float64).flatten() * 1e6)
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=torch.float64)
    for v in x.unique():
        r[x == v] = r[x == v].mean()
    return r


def spearman(a, b) -> float:
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_patching_finds_the_planted_circuit(planted):
    r = activation_patching(planted, CLEAN, CORRUPT, "q")
    assert r.logit_clean > r.logit_corrupt + 5  # the clean prompt predicts "q"
    # only the induction head L1H0 carries the answer: patching it back restores all of it
    assert sum(r.heads, []) == pytest.approx([0.0, 0.0, 1.0, 0.0], abs=1e-4)
    # the residual stream carries it at the corrupted position, into both layers
    for layer in range(2):
        want = [1.0 if p == 5 else 0.0 for p in range(len(CLEAN))]
        assert r.resid_pre[layer] == pytest.approx(want, abs=1e-4)
    # the answer is written by layer 1's attention at the last position; no MLP writes anything
    assert r.attn_out[1][-1] == pytest.approx(1.0, abs=1e-4)
    assert sum(r.mlp_out, []) == pytest.approx([0.0] * 2 * len(CLEAN), abs=1e-4)
    assert r.tokens_clean[5] == "q" and r.tokens_corrupt[5] == "r" and r.target == "q"


def test_attribution_patching_ranks_the_sites_like_exact_patching(planted):
    for corrupt in (CORRUPT, "fbjhcrstpo" + "fbjhc"):  # one token changed, five
        exact = activation_patching(planted, CLEAN, corrupt, "q")
        est = attribution_patching(planted, CLEAN, corrupt, "q")
        assert est.heads == exact.attribution.heads and est.resid_pre == exact.attribution.resid_pre
        assert spearman(exact.heads, est.heads) >= 0.9
        assert spearman(exact.resid_pre, est.resid_pre) >= 0.9


def test_direct_logit_attribution_adds_up_and_names_the_induction_head(planted, tiny_text,
                                                                       tmp_path):  # fmt: skip
    d = direct_logit_attribution(planted, CLEAN, "q")
    total = d.embed + sum(map(sum, d.heads)) + sum(d.attn_bias) + sum(d.mlp) + d.rest
    assert total == pytest.approx(d.logit, abs=1e-4)
    flat = [(v, layer, h) for layer, row in enumerate(d.heads) for h, v in enumerate(row)]
    assert max(flat)[1:] == (1, 0)  # the induction head writes the answer
    pre = load_pretrained(str(build_tiny_hf_model(tmp_path / "hf", tiny_text)))
    lens = make_lens(pre.model, pre.tokenizer, "tiny-gpt2")
    d = direct_logit_attribution(lens, "ROMEO: O, she doth teach", " the")
    total = d.embed + sum(map(sum, d.heads)) + sum(d.attn_bias) + sum(d.mlp) + d.rest
    assert total == pytest.approx(d.logit, abs=1e-4)
    assert len(d.heads) == lens.n_layers and len(d.heads[0]) == lens.n_heads


def test_patching_refuses_what_it_cannot_compare(planted):
    with pytest.raises(PatchingError, match="same number of characters: 15 and 14"):
        activation_patching(planted, CLEAN, CORRUPT[:-1], "q")
    with pytest.raises(PatchingError, match="one token of planted; 'qa' is 2"):
        activation_patching(planted, CLEAN, CORRUPT, "qa")
    with pytest.raises(PatchingError, match="the same on both prompts"):
        activation_patching(planted, CLEAN, CLEAN, "q")
    with pytest.raises(PatchingError, match="outside 0 .. 19"):
        direct_logit_attribution(planted, CLEAN, 99)
