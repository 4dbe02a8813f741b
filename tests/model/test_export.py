"""Export to a Hugging Face GPT-2 folder:
same logits, same ids, same greedy text, no nanobard needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanobard.config import ModelConfig, TrainConfig
from nanobard.data.corpus import split_text
from nanobard.data.tokenizer import CharTokenizer
from nanobard.hf.pretrained import scratch_generator
from nanobard.model.checkpoint import CheckpointError, save_checkpoint
from nanobard.model.export import GGUF_NAME, ExportError, export_hf
from nanobard.model.gpt import GPT
from nanobard.model.sampling import STRATEGIES
from nanobard.train.loop import train

SHAPE = dict(block_size=32, n_layer=2, n_head=2, n_embd=32)
PROMPTS = ["ROMEO:\n", "But soft, what "]  # characters of both tiny corpora (see conftest)


def random_checkpoint(path: Path, tok: CharTokenizer, seed: int = 0, **kw) -> Path:
    """A randomly initialised GPT with every parameter ~ N(0, 0.3): biases and LayerNorm weights
    are far from their 0 / 1 init, so a tensor mapped wrongly changes the logits."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, **{**SHAPE, **kw}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    save_checkpoint(path, model, tok)
    return path


def our_logits(ckpt: Path, idx: torch.Tensor) -> torch.Tensor:
    from nanobard.model.checkpoint import load_model

    model, _, _ = load_model(ckpt)
    with torch.no_grad():
        return model.eval()(idx).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_text) -> tuple[Path, Path]:
    """(checkpoint, exported folder) of a random GPT whose greedy text is varied, not one repeated
    character (a model trained for a few CPU seconds only repeats newlines and spaces)."""
    folder = tmp_path_factory.mktemp("exported")
    ckpt = random_checkpoint(folder / "m.pt", CharTokenizer.from_text(tiny_text))
    export_hf(ckpt, folder / "hf")
    return ckpt, folder / "hf"


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
@pytest.mark.parametrize("bias", [False, True])
def test_exported_logits_equal_ours(tmp_path, tiny_text, pos, bias):
    from transformers import GPT2LMHeadModel

    tok = CharTokenizer.from_text(tiny_text)
    ckpt = random_checkpoint(tmp_path / "m.pt", tok, pos_encoding=pos, bias=bias)
    export_hf(ckpt, tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.activation_function == "gelu" and hf.config.n_positions == 32
    idx = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, our_logits(ckpt, idx), atol=1e-5, rtol=1e-5)


def test_untied_lm_head_is_exported(tmp_path, tiny_text):
    from transformers import GPT2LMHeadModel

    tok = CharTokenizer.from_text(tiny_text)
    ckpt = random_checkpoint(tmp_path / "m.pt", tok, tie_weights=False)
    export_hf(ckpt, tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    idx = torch.randint(0, tok.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, our_logits(ckpt, idx), atol=1e-5, rtol=1e-5)


def test_tokenizer_has_our_ids_and_round_trips_exactly(tmp_path, tiny_text):
    from transformers import AutoTokenizer

    tok = CharTokenizer.from_text(tiny_text)
    export_hf(random_checkpoint(tmp_path / "m.pt", tok), tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    odd = "  two spaces , a spaced comma ; don't !\n\n\nthree newlines ?  \n "
    text = tiny_text[:2000] + "".join(ch for ch in odd if ch in tok.stoi)
    ids = hf_tok(text)["input_ids"]  # add_special_tokens defaults to True: there are none to add
    assert ids == tok.encode(text)
    assert hf_tok.decode(ids) == text
    assert len(hf_tok) == tok.vocab_size and hf_tok.all_special_tokens == []
    assert [hf_tok.convert_ids_to_tokens(i) for i in range(tok.vocab_size)] == tok.chars


def test_pipeline_greedy_text_equals_nanobard(exported):
    from transformers import pipeline

    ckpt, out = exported
    pipe = pipeline("text-generation", model=str(out), device="cpu")
    ours = scratch_generator(ckpt)
    for prompt in PROMPTS:
        n = 32 - len(prompt)  # prompt + generation fill the context exactly
        expected = ours.complete(prompt, n, STRATEGIES["greedy"])
        assert len(set(expected)) >= 8, (
            f"degenerate model, the comparison would prove little: {expected!r}"
        )
        got = pipe(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"]
        assert got == prompt + expected
    # the generation config alone makes it greedy and stops when the context is full
    n = 32 - len(PROMPTS[0])
    assert pipe(PROMPTS[0])[0]["generated_text"] == PROMPTS[0] + ours.complete(
        PROMPTS[0], n, STRATEGIES["greedy"]
    )


def test_folder_loads_with_plain_transformers(exported):
    ckpt, out = exported
    script = f"""
import json, sys
sys.modules["nanobard"] = None  # any import of nanobard now fails
from transformers import pipeline
pipe = pipeline("text-generation", model={str(out)!r}, device="cpu")
print(json.dumps(pipe({PROMPTS[1]!r}, max_new_tokens=12, do_sample=False, return_full_text=False)))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])[0]["generated_text"]
    assert got == scratch_generator(ckpt).complete(PROMPTS[1], 12, STRATEGIES["greedy"])


def test_run_folder_export_and_model_card(tmp_path, tiny_text):
    cfg = TrainConfig(
        batch_size=8,
        max_steps=30,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        eval_interval=10,
        eval_iters=2,
        seed=7,
    )
    train(ModelConfig(**SHAPE), cfg, split_text(tiny_text), tmp_path / "run", progress=False)
    res = export_hf(tmp_path / "run", tmp_path / "hf")  # a run folder means its best checkpoint
    assert res.checkpoint == tmp_path / "run" / "model_scratch_best.pt"
    on_disk = {p.name: p.stat().st_size for p in (tmp_path / "hf").iterdir()}
    assert res.files == on_disk and res.size_bytes == sum(on_disk.values())
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= on_disk.keys()
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert f"{res.num_params:,}" in card and "pipeline(" in card and "nats per character" in card
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen.get("do_sample") is False and gen.get("max_length") == 32


@pytest.mark.parametrize(
    "chars, span",
    [("abc", "`abc`"), ("a`b", "``a`b``"), ("`x", "`` `x ``"), ("a|b", "`a\\|b`"),
     ("a``b", "```a``b```")],
)  # fmt: skip
def test_the_cards_vocabulary_survives_backticks_and_pipes(chars, span):
    """A corpus of code has backticks and pipes: the card's table row stays one code span."""
    from nanobard.model.export import code_span

    assert code_span(chars) == span


def test_gguf_loads_back_with_the_same_logits_and_tokens(tmp_path, tiny_text):
    from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

    tok = CharTokenizer.from_text(tiny_text)
    ckpt = random_checkpoint(tmp_path / "m.pt", tok, pos_encoding="sinusoidal")
    res = export_hf(ckpt, tmp_path / "hf", gguf=True)
    assert res.gguf_file == tmp_path / "hf" / GGUF_NAME and GGUF_NAME in res.files
    folder = tmp_path / "hf"
    hf = GPT2LMHeadModel.from_pretrained(
        folder, gguf_file=GGUF_NAME, config=AutoConfig.from_pretrained(folder)
    ).eval()
    idx = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, our_logits(ckpt, idx), atol=1e-5, rtol=1e-5)
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    text = tiny_text[:1000]
    assert gguf_tok(text)["input_ids"] == tok.encode(text)
    assert gguf_tok.decode(gguf_tok(text)["input_ids"]) == text
    export_hf(ckpt, folder)  # re-export without GGUF: the stale file goes
    assert not (folder / GGUF_NAME).exists()


def test_user_errors_are_clear(tmp_path, tiny_text):
    tok = CharTokenizer.from_text(tiny_text)
    ckpt = random_checkpoint(tmp_path / "run" / "m.pt", tok)
    with pytest.raises(CheckpointError, match="not found"):
        export_hf(tmp_path / "missing.pt", tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_hf(ckpt, tmp_path / "busy")
    with pytest.raises(ExportError, match="holds the checkpoint"):
        export_hf(ckpt, tmp_path / "run")
    wide = random_checkpoint(tmp_path / "wide.pt", CharTokenizer(list("ab é\n")))
    with pytest.raises(ExportError, match="ASCII"):
        export_hf(wide, tmp_path / "wide", gguf=True)
    assert not (tmp_path / "wide").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"pos_encoding": "rotary"}, "rotary positions"),
        ({"qk_norm": True}, "normalised queries"),
        ({"activation": "relu2", "zero_init": True}, "ReLU"),
        ({"causal": False}, "without the causal mask"),  # GPT-2 always masks the future
    ],
)
def test_speed_run_options_gpt2_cannot_hold_are_refused(tmp_path, tiny_text, kw, named):
    ckpt = random_checkpoint(tmp_path / "m.pt", CharTokenizer.from_text(tiny_text), **kw)
    with pytest.raises(ExportError, match=named):
        export_hf(ckpt, tmp_path / "out", gguf=True)
    assert not (tmp_path / "out").exists()
    # zero_init changes only where training starts: such a model exports
    ok = random_checkpoint(tmp_path / "ok.pt", CharTokenizer.from_text(tiny_text), zero_init=True)
    assert export_hf(ok, tmp_path / "ok").out_dir.is_dir()
