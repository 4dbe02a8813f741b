"""nanobard's analyses against TransformerLens's on the same weights: a from-scratch GPT trained
for a few steps, exported (nanobard export) and booted in TransformerLens's TransformerBridge, and
a tiny Llama (the SmolLM2 architecture) booted from its Hugging Face folder. A difference is a bug
in one of the two; the tolerances are float32 round-off on models this small."""

from __future__ import annotations

import pytest
import torch

from nanobard.config import ModelConfig
from nanobard.data.corpus import split_text
from nanobard.interp.circuits import induction_scores
from nanobard.interp.lens import make_lens
from nanobard.interp.patching import activation_patching, direct_logit_attribution
from nanobard.model.checkpoint import load_model
from nanobard.model.export import export_hf
from nanobard.train.loop import train
from tests.fixtures import build_tiny_hf_model, tcfg

tl = pytest.importorskip("transformer_lens")
from transformer_lens import patching as tl_patching  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

CLEAN = "ROMEO: O, she doth teach the torches to burn bright! ROMEO: O, she"


def _worst(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b).float()
    assert a.shape == b.shape, (a.shape, b.shape)  # no broadcasting hides a missing axis
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, tiny_text):
    """(our Lens, TransformerLens's bridge, the token ids of CLEAN and CORRUPT)."""
    out = tmp_path_factory.mktemp("tl")
    shape = ModelConfig(block_size=96, n_layer=2, n_head=4, n_embd=32, bias=True)
    cfg = tcfg(max_steps=400, eval_interval=400, lr=1e-2, min_lr=1e-3)  # it uses the context
    train(shape, cfg, split_text(tiny_text), out / "run", progress=False)
    model, tok, _ = load_model(out / "run" / "model_scratch_best.pt")
    export_hf(out / "run" / "model_scratch_best.pt", out / "hf")
    clean = tok.encode(CLEAN)
    ids = (clean, _corrupt_near_the_end(clean, tok.vocab_size))
    return make_lens(model.eval(), tok, "scratch"), _boot(out / "hf"), ids, out / "hf"


def _corrupt_near_the_end(ids: list[int], vocab: int) -> list[int]:
    """``ids`` with the token before the last changed: close enough to move the prediction of
    a model trained for seconds, far enough for attention to have to carry it."""
    out = list(ids)
    out[-2] = (out[-2] + 7) % vocab
    return out


def _boot(folder):
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    bridge.eval()
    return bridge


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_text):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = build_tiny_hf_model(tmp_path_factory.mktemp("bpe"), tiny_text)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    ))  # fmt: skip
    with torch.no_grad():  # far from the init, so that heads and norms matter
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    llama_dir = tmp_path_factory.mktemp("llama")
    model.save_pretrained(llama_dir)
    tok.save_pretrained(llama_dir)
    ours = LlamaForCausalLM.from_pretrained(llama_dir, attn_implementation="eager").eval()
    clean = tok.encode(CLEAN, add_special_tokens=False)
    corrupt = _corrupt_near_the_end(clean, len(tok))
    return make_lens(ours, tok, "llama"), _boot(llama_dir), (clean, corrupt), llama_dir


MODELS = ["scratch", "llama"]


def _target(lens, clean: list[int], corrupt: list[int] | None = None) -> int:
    """The clean run's top prediction; with ``corrupt``, the token whose logit the corruption
    moves the most (the clearest signal to patch back)."""
    with torch.no_grad():
        logits = lens.trace(torch.tensor([clean] + ([corrupt] if corrupt else []))).logits[:, -1]
    return int(logits[0].argmax() if corrupt is None else (logits[0] - logits[1]).abs().argmax())


@pytest.mark.parametrize("which", MODELS)
def test_logits_and_attention_patterns_equal(which, request):
    lens, bridge, (clean, _), _ = request.getfixturevalue(which)
    ids = torch.tensor([clean])
    with torch.no_grad():
        ours = lens.trace(ids, attention=True)
        theirs, cache = bridge.run_with_cache(ids)
    assert _worst(ours.logits, theirs) <= 1e-4
    for layer in range(lens.n_layers):
        assert _worst(ours.attentions[layer], cache[f"blocks.{layer}.attn.hook_pattern"]) <= 1e-5
        assert _worst(ours.resid[layer], cache[f"blocks.{layer}.hook_resid_pre"]) <= 1e-4


def test_previous_token_and_induction_scores_equal(scratch):
    lens, bridge, _, _ = scratch
    n = 20
    g = torch.Generator().manual_seed(0)
    half = torch.randint(0, lens.vocab_size, (4, n), generator=g)
    ids = torch.cat([half, half], dim=1)  # random tokens repeated twice
    with torch.no_grad():
        ours = lens.trace(ids, attention=True)
        _, cache = bridge.run_with_cache(ids)
    mine = torch.stack([a.mean(0) for a in ours.attentions])  # [layer, head, T, T]
    theirs = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"].mean(0)
                          for i in range(lens.n_layers)])  # fmt: skip
    ind_a, prev_a = induction_scores(mine, n)
    ind_b, prev_b = induction_scores(theirs, n)
    assert _worst(ind_a, ind_b) <= 1e-5 and _worst(prev_a, prev_b) <= 1e-5


@pytest.mark.parametrize("which", MODELS)
def test_activation_patching_equals_transformer_lens(which, request):
    lens, bridge, (clean, corrupt), _ = request.getfixturevalue(which)
    target = _target(lens, clean, corrupt)
    ours = activation_patching(lens, clean, corrupt, target, attribution=False)
    c, x = torch.tensor([clean]), torch.tensor([corrupt])
    with torch.no_grad():
        clean_logits, clean_cache = bridge.run_with_cache(c)
        corrupt_logits = bridge(x)
    lc, lx = clean_logits[0, -1, target].item(), corrupt_logits[0, -1, target].item()
    assert ours.logit_clean == pytest.approx(lc, abs=1e-4)
    assert ours.logit_corrupt == pytest.approx(lx, abs=1e-4)
    assert abs(lc - lx) > 0.02  # a difference to recover, far above round-off (1e-6)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[0, -1, target] - lx) / (lc - lx)

    for ours_sites, fn in (
        (ours.resid_pre, tl_patching.get_act_patch_resid_pre),
        (ours.attn_out, tl_patching.get_act_patch_attn_out),
        (ours.mlp_out, tl_patching.get_act_patch_mlp_out),
        (ours.heads, tl_patching.get_act_patch_attn_head_out_all_pos),
    ):
        with torch.no_grad():
            theirs = fn(bridge, x, clean_cache, metric)
        assert _worst(ours_sites, theirs) <= 1e-3, fn
        assert float(theirs.abs().max()) > 0.05, fn  # some site matters


@pytest.mark.parametrize("which", MODELS)
def test_direct_logit_attribution_equals_transformer_lens(which, request):
    lens, _, (clean, _), folder = request.getfixturevalue(which)
    bridge = _boot(folder)  # a bridge of its own: compatibility mode changes its weights
    target = _target(lens, clean)
    ours = direct_logit_attribution(lens, clean, target)
    total = ours.embed + sum(map(sum, ours.heads)) + sum(ours.attn_bias) + sum(ours.mlp) + ours.rest
    assert total == pytest.approx(ours.logit, abs=1e-4)  # the parts add up to the logit
    # TransformerLens folds the final norm's weight into the unembedding for logit attribution;
    # left uncentred, its coordinates are ours
    bridge.enable_compatibility_mode(
        disable_warnings=True, fold_ln=True, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )  # fmt: skip
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(torch.tensor([clean]))
        heads, _ = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        theirs = cache.logit_attrs(heads, tokens=torch.tensor([target]), pos_slice=-1)
        mlp_stack = torch.stack([cache[f"blocks.{i}.hook_mlp_out"][:, -1]
                                 for i in range(lens.n_layers)])  # fmt: skip
        mlp = cache.logit_attrs(mlp_stack, tokens=torch.tensor([target]), pos_slice=-1)
    assert logits[0, -1, target].item() == pytest.approx(ours.logit, abs=1e-4)
    assert _worst(ours.heads, theirs.reshape(lens.n_layers, lens.n_heads)) <= 1e-4
    assert _worst(ours.mlp, mlp.reshape(-1)) <= 1e-4
    embed = cache.logit_attrs(cache["blocks.0.hook_resid_pre"][:, -1][None],
                              tokens=torch.tensor([target]), pos_slice=-1)  # fmt: skip
    assert ours.embed == pytest.approx(float(embed.reshape(-1)[0]), abs=1e-4)
    assert max(abs(v) for row in ours.heads for v in row) > 0.05  # heads that matter
