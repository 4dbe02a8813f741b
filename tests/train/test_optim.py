import pytest
import torch

from nanobard.config import ConfigError, ModelConfig
from nanobard.data.corpus import split_text
from nanobard.model.gpt import GPT
from nanobard.train.loop import train
from nanobard.train.optim import CombinedOptimizer, Muon, make_optimizer
from tests.fixtures import tcfg

MODEL = ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_adamw_decays_matrices_only():
    opt = make_optimizer(GPT(MODEL), tcfg(), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and all(
        p.dim() < 2 for p in no_decay["params"]
    )
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(MODEL)
    opt = make_optimizer(model, tcfg(optimizer="muon"), torch.device("cpu"))
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    expected = {
        n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")
    }
    assert in_muon == expected and len(expected) == 4 * MODEL.n_layer  # QKV, attn out, fc, fc out
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert "transformer.wte.weight" in in_adamw
    assert len(opt.param_groups) == 3  # the lr schedule reaches every group


def test_qk_norm_gains_train_with_adamw_without_decay():
    from dataclasses import replace

    model = GPT(replace(MODEL, qk_norm=True, pos_encoding="rotary"))
    opt = make_optimizer(model, tcfg(optimizer="muon"), torch.device("cpu"))
    muon, adamw = opt.optimizers
    gains = [p for n, p in model.named_parameters() if n.endswith("_gain")]
    assert len(gains) == 2 * MODEL.n_layer
    assert not {id(p) for g in muon.param_groups for p in g["params"]} & {id(p) for p in gains}
    no_decay = next(g for g in adamw.param_groups if g["weight_decay"] == 0.0)
    assert {id(p) for p in gains} <= {id(p) for p in no_decay["params"]}


def test_combined_state_round_trips_and_refuses_foreign_state():
    model = GPT(MODEL)
    opt = make_optimizer(model, tcfg(optimizer="muon"), torch.device("cpu"))
    x = torch.randint(0, 40, (4, 16))
    model(x, x).loss.backward()
    opt.step()
    state = opt.state_dict()
    again = make_optimizer(model, tcfg(optimizer="muon"), torch.device("cpu"))
    again.load_state_dict(state)
    buf = opt.optimizers[0].state[opt.optimizers[0].param_groups[0]["params"][0]]["momentum_buffer"]
    buf2 = again.optimizers[0].state[again.optimizers[0].param_groups[0]["params"][0]][
        "momentum_buffer"
    ]
    assert torch.equal(buf, buf2) and buf.abs().sum() > 0
    adamw = make_optimizer(model, tcfg(), torch.device("cpu"))
    with pytest.raises(ValueError):
        again.load_state_dict(adamw.state_dict())


def test_muon_update_is_orthogonalised_momentum():
    torch.manual_seed(0)
    model = GPT(MODEL)
    opt = make_optimizer(model, tcfg(optimizer="muon", weight_decay=0.0), torch.device("cpu"))
    w = model.transformer.h[0].mlp.c_fc.weight  # (128, 32)
    x = torch.randint(0, 40, (8, 16))
    model(x, x).loss.backward()
    before = w.detach().clone()
    grad_sv = torch.linalg.svdvals(w.grad)
    opt.step()
    update_sv = torch.linalg.svdvals(w.detach() - before)
    spread = lambda sv: (sv.quantile(0.9) / sv.quantile(0.1)).item()  # noqa: E731
    assert spread(grad_sv) > 4  # the raw gradient is far from orthogonal...
    assert spread(update_sv) < 2  # ...the update is nearly so (its singular values alike)
    lr = 3e-3 * 0.2 * max(w.shape) ** 0.5  # match_rms_adamw scaling of the learning rate
    assert update_sv.mean() == pytest.approx(lr, rel=0.35)


def test_muon_trains(tmp_path, tiny_text):
    res = train(
        MODEL, tcfg(max_steps=60, optimizer="muon"), split_text(tiny_text), tmp_path, progress=False
    )
    assert res.best_val_loss < res.first_val_loss - 0.5


def test_resuming_with_another_optimizer_says_so(tmp_path, tiny_text):
    split = split_text(tiny_text)
    train(MODEL, tcfg(max_steps=10), split, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another --optimizer"):
        train(
            MODEL,
            tcfg(max_steps=20, optimizer="muon"),
            split,
            tmp_path,
            resume=True,
            progress=False,
        )


def test_muon_steps_as_torch_muon_does():
    """torch.optim.Muon's algorithm (its match_rms_adamw scaling, Newton-Schulz in bfloat16), with
    the matrices batched by shape and the tall ones (QKV, fc) transposed into their batch."""
    import copy

    torch.manual_seed(0)
    model = GPT(MODEL)
    twin = copy.deepcopy(model)
    hidden = lambda m: [p for n, p in m.named_parameters() if ".h." in f".{n}" and p.dim() == 2]  # noqa: E731
    assert {p.shape[0] > p.shape[1] for p in hidden(model)} == {True, False}  # both kinds
    ours = Muon(hidden(model), lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon(hidden(twin), lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in hidden(model)]
    for _ in range(3):
        x = torch.randint(0, 40, (8, 16))
        for m, opt in ((model, ours), (twin, ref)):
            m.zero_grad()
            m(x, x).loss.backward()
            opt.step()
    for p, q, p0 in zip(hidden(model), hidden(twin), start):
        moved = (q - p0).abs().max()
        assert moved > 0.01 and (p - q).abs().max() < 0.02 * moved
