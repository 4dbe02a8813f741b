from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from nanobard.config import ConfigError, ModelConfig
from nanobard.model.gpt import GPT, Dropout, rotary_table, rotate
from nanobard.model.sampling import SamplingConfig, ScratchDecoder, generate_ids

CFG = ModelConfig(vocab_size=17, block_size=16, n_layer=2, n_head=4, n_embd=32)


def make(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


# the speed-run options, one at a time and all together (zero_init only changes the start, so the
# models below get random projections back for the equivalence tests)
OPTIONS = {
    "rotary": {"pos_encoding": "rotary"},
    "qk_norm": {"qk_norm": True},
    "qk_layer_norm": {"pos_encoding": "rotary", "qk_norm": True, "qk_norm_type": "layer"},
    "relu2": {"activation": "relu2"},
    "all": {"pos_encoding": "rotary", "qk_norm": True, "activation": "relu2", "zero_init": True},
}
VARIANTS = {"gpt2": {}, **OPTIONS}


def variant(name: str, seed: int = 0) -> GPT:
    model = make(replace(CFG, **VARIANTS[name]), seed)
    with torch.no_grad():  # nonzero projections and norm gains, so every part shows in the logits
        for n, p in model.named_parameters():
            if n.endswith(("c_proj.weight", "_gain")):
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_shapes_loss_and_attention(pos):
    model = make(ModelConfig(**{**CFG.__dict__, "pos_encoding": pos}))
    idx = torch.randint(0, 17, (3, 10))
    out = model(idx, targets=idx, return_attention=True)
    assert out.logits.shape == (3, 10, 17)
    assert out.loss.ndim == 0 and 2.0 < out.loss.item() < 4.0  # ~ln(17) = 2.83 at init
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 10, 10)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(3, 4, 10))


@pytest.mark.parametrize("name", VARIANTS)
def test_readable_and_fast_attention_paths_agree(name):
    model = variant(name)
    idx = torch.randint(0, 17, (2, 16))
    fast = model(idx).logits
    readable = model(idx, return_attention=True).logits
    torch.testing.assert_close(fast, readable, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_causal_masking_future_tokens_never_change_earlier_logits(name):
    model = variant(name)
    idx = torch.randint(0, 17, (1, 16))
    base = model(idx).logits
    for t in range(15):
        changed = idx.clone()
        changed[0, t + 1 :] = (changed[0, t + 1 :] + 5) % 17
        out = model(changed).logits
        assert torch.equal(out[0, : t + 1], base[0, : t + 1]), f"position {t} saw the future"
        assert not torch.equal(out[0, t + 1 :], base[0, t + 1 :])
    att = model(idx, return_attention=True).attentions
    for a in att:
        assert torch.count_nonzero(torch.triu(a[0], diagonal=1)) == 0


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_matches_full_forward_and_uncached_generation(name):
    model = variant(name)
    idx = torch.randint(0, 17, (1, 12))
    cache = model.new_cache(1)
    step_logits = [model(idx[:, :5], kv_cache=cache).logits[:, -1]]
    for t in range(5, 12):
        step_logits.append(model(idx[:, t : t + 1], kv_cache=cache).logits[:, -1])
    full = model(idx).logits
    torch.testing.assert_close(torch.cat(step_logits), full[0, 4:], atol=1e-5, rtol=1e-5)

    for cfg in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, top_k=5, seed=3)):
        cached = list(generate_ids(ScratchDecoder(model, use_cache=True), [1, 2, 3], 13, cfg))
        uncached = list(generate_ids(ScratchDecoder(model, use_cache=False), [1, 2, 3], 13, cfg))
        assert cached == uncached and len(cached) == 13


def _last_logits(model, ids: list[int], dtype: torch.dtype):
    """(the float32 model's last logits, a decoder in ``dtype``, its logits after feeding ``ids``
    three at the start and then one at a time)."""
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0, -1]
        dec = ScratchDecoder(model, dtype=dtype)
        dec.start(ids[:3])
        for t in ids[3:-1]:
            dec.advance(t)
        return ref, dec, dec.advance(ids[-1])


def test_bfloat16_decoder_tracks_float32_and_leaves_the_model_alone():
    model = make()
    ref, dec, got = _last_logits(model, [1, 2, 3, 4, 5, 6], torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # the decoder ran a copy
    assert (
        next(dec.model.parameters()).dtype == torch.bfloat16
        and dec.cache[0].k.dtype == torch.float32
    )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=0.05, rtol=0.05)
    assert not torch.equal(got.float(), ref)  # it really ran in bfloat16


class _Recording:
    """A decoder that keeps every logits vector it hands to the sampler."""

    def __init__(self, decoder):
        self.decoder, self.logits = decoder, []

    def start(self, prompt_ids):
        self.logits.append(self.decoder.start(prompt_ids))
        return self.logits[-1]

    def advance(self, token):
        self.logits.append(self.decoder.advance(token))
        return self.logits[-1]


def _contexts(ids: list[int], n_prompt: int, block: int, use_cache: bool) -> list[list[int]]:
    """The context each next-token prediction over ``ids`` sees, as ScratchDecoder documents it:
    uncached, the last ``block`` tokens; cached, everything since the cache was last (re)filled,
    and a full cache refills from the last ``block // 2`` tokens."""
    out, start = [], 0
    for n in range(n_prompt, len(ids)):  # predicting ids[n] from ids[:n]
        if not use_cache:
            start = max(0, n - block)
        elif n - 1 - start >= block:  # the cache holds ids[start : n - 1]: full
            start = n - block // 2
        out.append(ids[start:n])
    return out


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_beyond_context_keeps_going(use_cache):
    """40 tokens from a 16-token context: every prediction is the full forward pass over the
    context the decoder promises (the cached one refills three times)."""
    model = make()
    rec = _Recording(ScratchDecoder(model, use_cache=use_cache))
    out = list(generate_ids(rec, [1], 40, SamplingConfig(seed=1)))
    assert len(out) == 40 and all(0 <= t < 17 for t in out)
    contexts = _contexts([1, *out], 1, CFG.block_size, use_cache)
    assert len(contexts) == 40 and len(rec.logits) >= 40  # the logits each token was drawn from
    with torch.inference_mode():
        for i, (got, ctx) in enumerate(zip(rec.logits[:40], contexts)):
            want = model(torch.tensor([ctx])).logits[0, -1]
            torch.testing.assert_close(
                got, want, atol=1e-5, rtol=1e-5, msg=lambda m, i=i: f"token {i}: {m}"
            )


def test_context_overflow_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the context length"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_hf_gpt2_weights_give_identical_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=50,
            n_positions=24,
            n_embd=32,
            n_layer=2,
            n_head=4,
            activation_function="gelu",
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
        )
    ).eval()
    ours = GPT.from_hf_gpt2(hf).eval()
    idx = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, hf(idx).logits, atol=1e-5, rtol=1e-4)
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize(
    "kw",
    [
        {"n_embd": 30, "n_head": 4},
        {"n_layer": 0},
        {"dropout": 1.5},
        {"attn_dropout": -0.1},
        {"activation": "swish"},
        {"pos_encoding": "alibi"},
        {"pos_encoding": "rotary", "n_embd": 36, "n_head": 4},  # head size 9: odd
    ],
)
def test_invalid_model_configs(kw):
    with pytest.raises(ConfigError):
        ModelConfig(**kw)


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_step_equals_the_cached_forward_pass(name):
    model = variant(name)
    idx = torch.randint(0, 17, (1, 12))
    cache_a, cache_b, cache_c = model.new_cache(1), model.new_cache(1), model.new_cache(1)
    for cache in (cache_a, cache_b, cache_c):
        model(idx[:, :4], kv_cache=cache)
    plan = model.decode_plan()  # taken once, as a generation does
    with torch.no_grad():
        for t in range(4, 12):
            ref = model(idx[:, t : t + 1], kv_cache=cache_a).logits[0, -1]
            torch.testing.assert_close(
                model.decode_step(int(idx[0, t]), cache_b), ref, atol=1e-6, rtol=1e-6
            )
            torch.testing.assert_close(
                model.decode_step(int(idx[0, t]), cache_c, plan), ref, atol=1e-6, rtol=1e-6
            )


def test_int8_weights_track_float32_and_generate():
    from nanobard.model.quantize import Int8Linear

    model = make()
    ref, dec, got = _last_logits(model, [1, 2, 3, 4, 5, 6, 7, 8], torch.int8)
    assert isinstance(dec.model.transformer.h[0].mlp.c_fc, Int8Linear)
    assert dec.model.transformer.h[0].mlp.c_fc.weight_int8.dtype == torch.int8
    # the decoder quantized a copy
    assert isinstance(model.transformer.h[0].mlp.c_fc, torch.nn.Linear)
    torch.testing.assert_close(got.float(), ref, atol=0.08, rtol=0.08)
    assert not torch.equal(got.float(), ref)
    out = list(
        generate_ids(ScratchDecoder(model, dtype=torch.int8), [1], 40, SamplingConfig(seed=1))
    )
    assert len(out) == 40
    # the decode path's plain functions (Int8Linear.direct) do the int8 layers' own math, biases
    # included
    from nanobard.model.quantize import quantize_int8

    biased = make(replace(CFG, bias=True))
    for m in biased.modules():  # biases start at zero: give them values that show
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            torch.nn.init.normal_(m.bias, std=0.5)
    q = quantize_int8(biased)
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    cache_a, cache_b = q.new_cache(1, dtype=torch.float32), q.new_cache(1, dtype=torch.float32)
    with torch.inference_mode():
        q(idx[:, :4], kv_cache=cache_a)
        q(idx[:, :4], kv_cache=cache_b)
        ref = q(idx[:, 4:], kv_cache=cache_a).logits[0, -1]
        torch.testing.assert_close(q.decode_step(5, cache_b, q.decode_plan()), ref)


def test_rotary_scores_depend_on_distance_only():
    table = rotary_table(32, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = [
        (rotate(q, table, p + 3) * rotate(k, table, p)).sum().item() for p in (0, 5, 20)
    ]  # a query 3 positions after its key, at three places in the sequence
    assert score == pytest.approx([score[0]] * 3, abs=1e-5)
    assert (q * k).sum().item() != pytest.approx(score[0], abs=1e-3)  # the rotation did something
    torch.testing.assert_close(rotate(q, table, 0), q)  # position 0: angle 0
    assert torch.linalg.norm(rotate(q, table, 7)) == pytest.approx(torch.linalg.norm(q).item())


def test_rotary_model_has_no_position_table_and_sees_order():
    model = variant("rotary")
    assert "transformer.wpe.weight" not in model.state_dict()
    assert not hasattr(model, "pe") and model.num_params() == variant("gpt2").num_params() - 16 * 32
    # without positions a causal model could still count, but the same two tokens in the other
    # order must give a different last prediction
    a, b = model(torch.tensor([[3, 5]])).logits[0, -1], model(torch.tensor([[5, 3]])).logits[0, -1]
    assert not torch.allclose(a, b)


def test_rotary_attention_with_trained_gains_still_sees_distance_only():
    attn = variant("all").transformer.h[0].attn  # random q/k gains, rotary positions
    x = torch.randn(1, 2, 32)  # a query token and a key token
    scores = []
    for start in (0, 4, 11):  # the same pair, one position apart, at three places
        q, k, _ = attn.heads(x, start)
        scores.append((q[0, :, 1] * k[0, :, 0]).sum(-1))  # per head
    torch.testing.assert_close(scores[1], scores[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[2], scores[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_qk_norm_gives_unit_rms_queries_and_keys(kind):
    model = make(replace(CFG, qk_norm=True, qk_norm_type=kind))
    attn = model.transformer.h[0].attn
    x = 5 * torch.randn(2, 7, 32) + 3  # every channel off zero: a mean for LayerNorm to remove
    q, k, v = attn.heads(x, 0)
    assert q.shape == (2, 4, 7, 8)
    for t in (q, k):  # gains start at 1
        torch.testing.assert_close(t.pow(2).mean(-1), torch.ones(2, 4, 7), atol=1e-3, rtol=1e-3)
        centred = torch.allclose(t.mean(-1), torch.zeros(2, 4, 7), atol=1e-4)
        assert centred == (kind == "layer")  # LayerNorm also removes each vector's mean
    assert not torch.allclose(v.pow(2).mean(-1), torch.ones(2, 4, 7), atol=0.1)  # values are not
    assert attn.q_gain.shape == (8,) and make().transformer.h[0].attn.q_gain is None


def test_layer_norm_gains_scale_queries_and_keys_per_channel():
    model = make(replace(CFG, qk_norm=True, qk_norm_type="layer"))
    attn = model.transformer.h[0].attn
    x = torch.randn(1, 5, 32)
    q0, k0, _ = attn.heads(x, 0)
    with torch.no_grad():
        attn.q_gain.copy_(torch.arange(1.0, 9.0))
    q1, k1, _ = attn.heads(x, 0)
    torch.testing.assert_close(q1, q0 * torch.arange(1.0, 9.0))
    torch.testing.assert_close(k1, k0)  # the keys have their own gain


def test_an_unknown_qk_norm_type_is_refused():
    with pytest.raises(ConfigError, match="qk_norm_type"):
        replace(CFG, qk_norm=True, qk_norm_type="batch")


def test_relu2_mlp_is_relu_squared():
    mlp = make(replace(CFG, activation="relu2")).transformer.h[0].mlp
    x = torch.randn(3, 32)
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    assert not torch.allclose(mlp(x), mlp.c_proj(F.gelu(mlp.c_fc(x))))


def test_zero_init_starts_every_block_as_the_identity():
    model = make(replace(CFG, zero_init=True))
    idx = torch.randint(0, 17, (2, 9))
    t = model.transformer
    direct = model.lm_head(t.ln_f(t.wte(idx) + t.wpe(torch.arange(9))))  # no block did anything
    torch.testing.assert_close(model(idx).logits, direct)
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 4 and all(torch.count_nonzero(p) == 0 for p in projections)
    assert torch.count_nonzero(make().transformer.h[0].mlp.c_proj.weight) > 0


@pytest.mark.parametrize("attn_dropout, attention_drops", [(None, True), (0.0, False)])
def test_attn_dropout_sets_the_attention_weights_dropout_alone(attn_dropout, attention_drops):
    """--attn-dropout 0 with --dropout 0.5: the residual and MLP outputs still drop, the
    attention weights do not (so a CPU keeps the fused kernel); unset, it follows --dropout."""
    model = GPT(replace(CFG, dropout=0.5, attn_dropout=attn_dropout)).train()
    attn = model.transformer.h[0].attn
    seen = []  # what reaches the attention's output projection: attention weights @ values
    attn.c_proj.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    x = torch.randn(2, 8, CFG.n_embd)
    out = [attn(x)[0] for _ in range(2)]
    assert not torch.equal(out[0], out[1])  # the residual dropout acts either way
    assert (not torch.equal(seen[0], seen[1])) == attention_drops
    assert model.transformer.h[0].mlp.dropout.p == 0.5
    assert attn.attn_dropout.p == (0.5 if attention_drops else 0.0)  # the readable path's


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_zeroes_p_of_the_elements_scales_the_rest_and_its_gradient(dtype):
    drop = Dropout(0.1)
    x = (torch.rand(200, 1000) + 0.5).to(dtype).requires_grad_()  # no element is zero
    torch.manual_seed(3)
    y = drop(x)
    assert y.dtype == dtype and abs((y == 0).float().mean().item() - 0.1) < 0.005
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.9, rtol=1e-2, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (kept / 0.9).to(dtype))  # the same mask backward
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # the torch seed decides the mask
    drop.eval()
    assert drop(x) is x and Dropout(0.0)(x) is x  # nothing at inference or with p = 0
