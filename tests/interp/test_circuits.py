"""Each analysis on a model whose answer is known: hand-built previous-token and induction
circuits, the logit lens against the model's own loss, loss by position against the total."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from nanobard.config import ModelConfig
from nanobard.data.tokenizer import CharTokenizer
from nanobard.interp.analysis import Analysis, _settings, analyse
from nanobard.interp.circuits import (
    AblationResult,
    InductionResult,
    InterpretError,
    LogitLensResult,
    PositionLoss,
    _spread,
    circuit_findings,
    head_ablation,
    head_scores,
    induction_scores,
    induction_test,
    logit_lens,
    loss_by_position,
)
from nanobard.interp.lens import LensError, make_lens
from nanobard.model.gpt import GPT
from tests.fixtures import build_tiny_hf_model

LETTERS = "abcdefghijklmnopqrst"  # 20 tokens: random sequences of 10 rarely repeat a token


def tiny_gpt(
    vocab_size: int, block_size: int, n_layer: int = 2, n_head: int = 2, n_embd: int = 32
) -> GPT:
    torch.manual_seed(0)
    return GPT(
        ModelConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
        )
    ).eval()


def planted_gpt(n_layer: int, V: int = len(LETTERS), T: int = 32) -> GPT:
    """A GPT whose head L0H0 copies the previous token and, with two layers, whose head L1H0 is
    an induction head: it attends to the token after an earlier copy of the current token and
    predicts it. Heads H1 are dead (zero weights); the MLPs write nothing.

    Residual stream layout; every part is a ±1 pair per item, so the stream has mean 0 and a
    fixed norm and LayerNorm only rescales it (by s):
    POS (cos, sin, -cos, -sin of θp) | TOK current token | PREV token before | OUT induction output.
    """
    C = 4 + 6 * V
    model = GPT(
        ModelConfig(
            vocab_size=V, block_size=T, n_layer=n_layer, n_head=2, n_embd=C, tie_weights=False
        )
    )
    TOK, PREV, OUT = 4, 4 + 2 * V, 4 + 4 * V
    hs, theta, eye = C // 2, math.pi / T, torch.eye(2 * V)
    pair = torch.zeros(V, 2 * V)  # token t -> +1 at 2t, -1 at 2t + 1
    pair[torch.arange(V), 2 * torch.arange(V)], pair[torch.arange(V), 2 * torch.arange(V) + 1] = (
        1.0,
        -1.0,
    )
    angle = torch.arange(T, dtype=torch.float32)[:, None] * theta
    h = model.transformer["h"]
    with torch.no_grad():
        for name, prm in model.named_parameters():
            prm.fill_(1.0 if "ln" in name else 0.0)
        model.transformer["wpe"].weight[:, 0:4] = torch.cat(
            [angle.cos(), angle.sin(), -angle.cos(), -angle.sin()], 1
        )
        model.transformer["wte"].weight[:, TOK : TOK + 2 * V] = pair
        # layer 0: q_i . k_j ∝ cos(θ (i - 1 - j)), the largest at j = i - 1;
        # value: the token -> PREV
        s = math.sqrt(C / 4)  # |x|^2 = 4 (POS + TOK)
        w = h[
            0
        ].attn.c_attn.weight  # rows: q [0, C), k [C, 2C), v [2C, 3C); head 0 = the first hs of each
        rot = torch.tensor(
            [[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]
        )
        w[0:2, 0:2] = rot * 4000 * math.sqrt(hs) / s**2
        w[C : C + 2, 0:2] = torch.eye(2)
        w[2 * C : 2 * C + 2 * V, TOK : TOK + 2 * V] = eye
        h[0].attn.c_proj.weight[PREV : PREV + 2 * V, 0 : 2 * V] = eye / s
        if n_layer == 2:  # layer 1: query = current token, key = PREV; value: the token -> OUT
            s = math.sqrt(C / 6)  # |x|^2 = 6 (POS + TOK + PREV)
            w = h[1].attn.c_attn.weight
            w[0 : 2 * V, TOK : TOK + 2 * V] = eye * 15 * math.sqrt(hs) / s**2
            w[C : C + 2 * V, PREV : PREV + 2 * V] = eye
            w[2 * C : 2 * C + 2 * V, TOK : TOK + 2 * V] = eye
            h[1].attn.c_proj.weight[OUT : OUT + 2 * V, 0 : 2 * V] = eye / s
        read = OUT if n_layer == 2 else PREV
        # the right token by a margin of ~9 nats
        model.lm_head.weight[:, read : read + 2 * V] = pair
    return model.eval()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """A tiny GPT-2 and a tiny Llama (grouped-query attention) sharing a locally trained BPE."""
    from transformers import AutoTokenizer, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    text = (
        "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune. "
    ) * 40
    folder = build_tiny_hf_model(tmp_path_factory.mktemp("gpt2"), text)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    return (
        {"gpt2": GPT2LMHeadModel.from_pretrained(folder).eval(), "llama": llama.eval()},
        tok,
        text,
    )


def test_induction_scores_on_constructed_patterns():
    n = 5
    T = 2 * n
    prev, ind = torch.zeros(T, T), torch.zeros(T, T)
    prev[0, 0] = ind[0, 0] = 1.0
    for i in range(1, T):
        prev[i, i - 1] = 1.0
        ind[i, i - n + 1 if i >= n else 0] = 1.0
    # [1 layer, 2 heads, T, T]
    i_score, p_score = induction_scores(torch.stack([prev, ind])[None], n)
    assert p_score[0, 0] == 1.0 and i_score[0, 0] == 0.0
    assert i_score[0, 1] == 1.0 and p_score[0, 1] < 0.3


def test_previous_token_head_is_found_and_costly_to_ablate():
    model = planted_gpt(n_layer=1).train()
    tok = CharTokenizer(list(LETTERS))
    scores = head_scores(model, seq_len=10)
    assert model.training, "head_scores must leave a training model in training mode"
    assert scores.previous_token[0][0] > 0.95 and scores.previous_token[0][1] < 0.3
    lens = make_lens(model, tok)
    for method in ("mean", "zero"):
        abl = head_ablation(lens, "ab" * 40, method=method)
        assert abl.delta_bpc[0][0] > 0.3 and abs(abl.delta_bpc[0][1]) < 1e-6
    assert "L0H0" in circuit_findings(ablation=abl)[0]


def test_planted_induction_circuit_scores_high_random_init_does_not():
    planted = induction_test(make_lens(planted_gpt(n_layer=2)), seq_len=10, batch=8)
    assert planted.induction[1][0] > 0.6 and planted.previous_token[0][0] > 0.95
    assert planted.loss_second_bits < 0.2 * planted.loss_first_bits  # it copies
    rand = induction_test(make_lens(tiny_gpt(len(LETTERS), 32)), seq_len=10, batch=8)
    assert max(max(row) for row in rand.induction) < 0.3
    assert rand.loss_second_bits > 0.8 * rand.loss_first_bits
    assert (
        "L1H0" in circuit_findings(induction=planted)[0]
        and "copies" in circuit_findings(induction=planted)[0]
    )


def _ablate_one_at_a_time(lens, ids: torch.Tensor, n_chars: int, layer: int, head: int) -> float:
    """Cost of one head with a full forward pass of the model: a reference for the batched run."""
    tr = lens.trace(ids)
    nh = lens.n_heads
    means = tr.head_inputs[layer].reshape(-1, nh, tr.head_inputs[layer].shape[-1] // nh).mean(0)
    with lens.ablate(layer, torch.full((ids.shape[0],), head), means):
        logits = lens.trace(ids).logits
    clean = sum(
        F.cross_entropy(lg[:-1], x[1:], reduction="sum").item() for lg, x in zip(tr.logits, ids)
    )
    ablated = sum(
        F.cross_entropy(lg[:-1], x[1:], reduction="sum").item() for lg, x in zip(logits, ids)
    )
    return (ablated - clean) / n_chars / math.log(2)


@pytest.mark.parametrize("kind", ["scratch", "gpt2", "llama", "gpt2-eager", "llama-eager"])
def test_batched_ablation_matches_full_forward_passes(kind, hf_models):
    """Also with eager attention, whose explicit (batch, 1, T, T) masks must follow the rows."""
    models, tok, text = hf_models
    if kind == "scratch":
        ctok = CharTokenizer.from_text(text)
        lens = make_lens(tiny_gpt(ctok.vocab_size, 32, n_head=4), ctok)
    else:
        model = models[kind.removesuffix("-eager")]
        if kind.endswith("eager"):
            model = copy.deepcopy(model)
            model.set_attn_implementation("eager")
        lens = make_lens(model, tok)
    # several windows, heads split over batches
    abl = head_ablation(lens, text, max_tokens=150, max_rows=5)
    ids, chars = lens.encode(text)
    T = min(lens.context, 150)
    W = 150 // T
    x = torch.tensor(ids[: W * T]).view(W, T)
    n_chars = sum(sum(chars[w * T + 1 : (w + 1) * T]) for w in range(W))
    assert abl.chars == n_chars and abl.layers == [0, 1]
    for layer, head in [(0, 1), (1, 3)]:
        ref = _ablate_one_at_a_time(lens, x, n_chars, layer, head)
        assert abl.delta_bpc[layer][head] == pytest.approx(ref, abs=1e-4)
    only = head_ablation(lens, text, layers=[1], max_tokens=64)
    assert only.delta_bpc[0] == [None] * 4 and None not in only.delta_bpc[1]
    with pytest.raises(InterpretError):
        head_ablation(lens, text, layers=[2])


@pytest.mark.parametrize("kind", ["scratch", "gpt2", "llama"])
def test_logit_lens_last_layer_is_the_models_own_loss(kind, hf_models):
    models, tok, text = hf_models
    if kind == "scratch":
        ctok = CharTokenizer.from_text(text)
        model = tiny_gpt(ctok.vocab_size, 64, n_layer=3)
        lens = make_lens(model, ctok)
        ids = torch.tensor([ctok.encode(text[:64])])
        own = model(ids[:, :-1], ids[:, 1:]).loss.item() / math.log(2)  # one char per token
    else:
        model = models[kind]
        lens = make_lens(model, tok)
        ids = torch.tensor([lens.encode(text)[0][:64]])
        n_chars = sum(lens.encode(text)[1][1:64])
        own = model(input_ids=ids, labels=ids).loss.item() * 63 / n_chars / math.log(2)
    ll = logit_lens(lens, text, max_tokens=64)
    assert len(ll.bpc) == lens.n_layers + 1 and len(ll.top1_agreement) == lens.n_layers + 1
    assert ll.bpc[-1] == pytest.approx(own, rel=1e-5) and ll.model_bpc == pytest.approx(
        own, rel=1e-5
    )
    assert ll.top1_agreement[-1] == 1.0
    assert abs(ll.bpc[0] - own) > 1e-3, "layer 0 reads the embeddings, not the output"


@pytest.mark.parametrize("kind", ["scratch", "gpt2"])
def test_loss_by_position_sums_to_the_overall_loss(kind, hf_models):
    models, tok, text = hf_models
    if kind == "scratch":
        ctok = CharTokenizer.from_text(text)
        model = tiny_gpt(ctok.vocab_size, 32, n_layer=1, n_embd=16)
        lens = make_lens(model, ctok)
    else:
        lens = make_lens(models["gpt2"], tok)
    pos = loss_by_position(lens, text, max_tokens=1000, batch=4)
    total = sum(b * c for b, c in zip(pos.bpc, pos.chars) if b is not None)
    assert total / sum(pos.chars) == pytest.approx(pos.overall_bpc, rel=1e-6)
    assert pos.bpc[0] is None and pos.windows > 1
    if kind == "scratch":  # a character model: the curve is per-position loss / ln 2
        x = torch.tensor(ctok.encode(text)[: pos.windows * 32]).view(-1, 32)
        nll = F.cross_entropy(model(x).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        assert pos.bpc[5] == pytest.approx(nll[:, 4].mean().item() / math.log(2), rel=1e-5)
        assert pos.overall_bpc == pytest.approx(nll.mean().item() / math.log(2), rel=1e-5)
    else:
        assert len(pos.bpc) > pos.window_tokens, "BPE tokens cover several characters"


def test_a_token_inside_a_split_character_keeps_its_loss():
    """Byte-level BPE can split one character over two tokens; the second covers 0 characters."""
    nll = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)  # tokens 1..4
    per_char = _spread(nll, torch.tensor([2, 2, 0, 1, 3]), first=2)  # token 0 covers offsets 0, 1
    assert per_char.tolist() == pytest.approx([0, 0, 0.5, 0.5 + 2.0, 3.0, 4 / 3, 4 / 3, 4 / 3])
    assert per_char.sum().item() == pytest.approx(nll.sum().item())


def test_hf_induction_runs_on_sdpa_models_and_restores_them(hf_models):
    models, tok, _ = hf_models
    for model in models.values():
        before = model.config._attn_implementation
        r = induction_test(make_lens(model, tok), seq_len=16, batch=2)
        assert (
            len(r.induction) == 2 and len(r.induction[0]) == 4 and r.token_range == [100, len(tok)]
        )
        assert all(0.0 <= v <= 1.0 for row in r.previous_token for v in row)
        assert model.config._attn_implementation == before


def test_results_round_trip_and_findings():
    results = [
        InductionResult("m", 4, 2, [0, 9], [[0.1, 0.9]], [[0.8, 0.1]], 2.0, 0.1),
        AblationResult("m", "mean", [0, 1], [[0.01, 0.3], [-0.02, 0.05]], 1.5, 256, 900, 1.0),
        LogitLensResult(
            "m", [0, 1, 2, 3], [5.0, 3.0, 1.8, 1.6], [0.1, 0.4, 0.9, 1.0], 1.6, 256, 900
        ),
        PositionLoss("m", [None, 4.0, 3.0] + [2.0] * 70, [0, 10, 10] + [10] * 70, 2.1, 10, 64),
    ]
    for r in results:
        assert type(r).from_dict(json.loads(json.dumps(r.to_dict()))) == r
    ind, abl, ll, pos = circuit_findings(
        **dict(zip(("induction", "ablation", "lens", "positions"), results))
    )
    assert "L0H1 (score 0.90)" in ind and "copies" in ind
    assert "L0H1 costs +0.30 bits/char" in abl and "of the 4 heads" in abl and "2 of them" in abl
    assert "at layer 2 of 3" in ll
    assert "4.00 at character 1" in pos and "2.00 at character 64" in pos


@pytest.mark.parametrize("big", [False, True])
def test_analyse_runs_everything_within_its_settings(big, hf_models):
    models, tok, text = hf_models
    ctok = CharTokenizer.from_text(text)
    lens = make_lens(models["gpt2"], tok, "tiny-gpt2")
    a = analyse(lens, text, vocab_chars=ctok.chars, big=big, slice_chars=600)
    assert set(a.seconds) == {"induction", "ablation", "lens", "positions"} and len(a.findings) == 4
    assert a.lens.layers == [0, 1, 2] and a.ablation.layers == [0, 1]
    # the slice has 192+
    assert (a.ablation.tokens == 128) == big and a.lens.tokens == a.ablation.tokens
    assert Analysis.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_big_models_ablate_a_spread_of_layers_and_those_of_the_strongest_heads():
    ind = InductionResult(
        "m",
        4,
        2,
        [0, 9],
        [[0.0] * 2] * 17 + [[0.1, 0.9]] + [[0.0] * 2] * 12,
        [[0.0] * 2] * 3 + [[0.0, 0.8]] + [[0.0] * 2] * 26,
        2.0,
        0.1,
    )
    settings = _settings(SimpleNamespace(n_layers=30), ind, big=True)
    assert settings["ablation"]["layers"] == [0, 3, 6, 12, 17, 18, 24]


def test_make_lens_rejects_unknown_models():
    with pytest.raises(LensError, match="cannot open"):
        make_lens(torch.nn.Linear(2, 2))
    with pytest.raises(LensError, match="tokenizer"):
        make_lens(planted_gpt(1)).encode("ab")
