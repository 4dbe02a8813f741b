"""The measured lessons on tiny sizes: structure, the lesson each one teaches, and their figures.
Nothing is downloaded: the "pretrained" model is a tiny GPT-2 built locally."""

import json
import math

import pytest
import torch

from nanobard.config import ModelConfig, TrainConfig
from nanobard.data.corpus import CorpusError, split_text
from nanobard.hf.finetune import FinetuneConfig, finetune
from nanobard.lessons import scratch as lessons
from nanobard.lessons import transfer
from nanobard.lessons.figures import (
    plot_attention_on_characters,
    plot_crossover,
    plot_encoder_vs_decoder,
    plot_forgetting,
    plot_lr_sweep,
    plot_overfit,
)
from nanobard.lessons.scratch import (
    CharAttention,
    MaskLesson,
    OverfitResult,
    SweepResult,
    attention_on_characters,
    encoder_vs_decoder,
    lr_sweep,
    overfit_one_batch,
)
from nanobard.lessons.transfer import (
    CrossoverResult,
    ForgettingResult,
    crossover,
    forgetting,
    general_english_text,
)
from nanobard.rundir import RunDir
from tests.fixtures import build_tiny_hf_model

MODEL = ModelConfig(block_size=32, n_layer=1, n_head=4, n_embd=32)
TRAIN = TrainConfig(
    batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_iters=2, dtype="float32", device="cpu"
)
# Original prose (no third-party text), standing in for the general-English text in tests.
ENGLISH = (
    "The morning train was late again, so the commuters stood on the platform with their coffee "
    "and talked about the weather. A woman in a green coat read a newspaper while her dog watched "
    "the pigeons. When the train finally arrived, everyone hurried aboard and found a seat by the "
    "window.\n"
) * 8


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, tiny_text):
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_gpt2"), tiny_text)


@pytest.fixture(scope="module")
def split(tiny_text):
    return split_text(tiny_text)


def _png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_general_english_text_reads_a_local_file_or_the_environment(tmp_path, monkeypatch):
    p = tmp_path / "english.txt"
    p.write_bytes(b"\r\n        A TITLE\r\n\r\n  First line of a paragraph,\r\nthe second.\r\n")
    assert general_english_text(p) == "A TITLE\n\nFirst line of a paragraph,\nthe second.\n"
    monkeypatch.setenv(transfer.GENERAL_ENGLISH_ENV, str(p))
    assert general_english_text().startswith("A TITLE")


def test_general_english_text_without_a_copy_says_how_to_get_one(monkeypatch):
    def no_network(url, dest, sha256):
        raise CorpusError(f"cannot download {url}")

    monkeypatch.delenv(transfer.GENERAL_ENGLISH_ENV, raising=False)
    monkeypatch.setattr(transfer, "download_verified", no_network)  # tests never download
    with pytest.raises(CorpusError, match=transfer.GENERAL_ENGLISH_ENV):
        general_english_text()


def test_crossover_scores_each_fraction_on_both_tracks(tiny_hf, split, tmp_path):
    res = crossover(
        split,
        fractions=(1.0, 0.25),
        budget_s=1.0,
        pretrained=str(tiny_hf),
        score_chars=1500,
        out_dir=tmp_path,
        scratch_overrides=dict(
            n_layer=1,
            n_head=4,
            n_embd=32,
            block_size=32,
            batch_size=8,
            eval_iters=2,
            warmup_steps=2,
        ),
        finetune_overrides=dict(
            block_size=32,
            batch_size=4,
            eval_interval=5,
            eval_blocks=2,
            precision="float32",
            warmup_steps=1,
            patience=None,
            lr=3e-3,
        ),
    )
    assert [p.fraction for p in res.points] == [0.25, 1.0]
    assert [p.train_chars for p in res.points] == [round(0.25 * len(split.train)), len(split.train)]
    for p in res.points:
        assert (
            0 < p.scratch_bpc < 10
            and 0 < p.finetuned_bpc < 10
            and p.scratch_steps > 0
            and p.finetune_steps > 0
        )
        run = tmp_path / f"finetune_{p.train_chars}"
        before = json.loads((run / RunDir.FINETUNE_RESULT).read_text())["before"]
        assert before["model"].endswith("(zero-shot)")  # scored once, before the loop, not per run
        assert not (run / RunDir.BEFORE).exists()  # handed to finetune(), no file faked for it
    assert 0 < res.zero_shot_bpc < 10 and res.score_chars == 1500
    assert res.points[-1].finetuned_bpc < res.zero_shot_bpc  # fine-tuning on the whole text helps
    assert CrossoverResult.load(tmp_path / RunDir.CROSSOVER) == res
    assert _png(plot_crossover(res, tmp_path / "crossover.png"))


def test_crossover_rejects_a_fraction_outside_0_1(split, tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        crossover(split, fractions=(0.0, 1.0), budget_s=1.0, out_dir=tmp_path)


def test_forgetting_scores_both_texts_before_and_after(tiny_hf, split, tmp_path):
    cfg = FinetuneConfig(
        pretrained=str(tiny_hf),
        block_size=32,
        batch_size=8,
        max_steps=20,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=10,
        eval_blocks=2,
        patience=None,
        score_chars=500,
        prompts=(),
        precision="float32",
        device="cpu",
    )
    finetune(cfg, split, tmp_path / "ft", progress=False)
    res = forgetting(
        str(tiny_hf), tmp_path / "ft" / "model_hf_finetuned", ENGLISH, split.val, score_chars=1500
    )
    for before, after in (
        (res.general_before, res.general_after),
        (res.domain_before, res.domain_after),
    ):
        # the same characters both times
        assert before.chars == after.chars and 1400 < before.chars <= 1500
        assert math.isfinite(before.bits_per_char) and math.isfinite(after.bits_per_char)
    assert res.domain_change_bpc < 0  # it learned the domain it trained on
    assert res.general_change_bpc == pytest.approx(
        res.general_after.bits_per_char - res.general_before.bits_per_char
    )
    assert ForgettingResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert _png(plot_forgetting(res, tmp_path / "forgetting.png"))


def test_lr_sweep_keeps_a_curve_per_rate_and_finds_the_middle_one(split, tmp_path):
    res = lr_sweep(MODEL, TRAIN, split, (1e-4, 3e-3, 10.0), steps=40)
    assert [r.lr for r in res.runs] == [1e-4, 3e-3, 10.0]
    for r in res.runs:
        assert r.steps == list(range(0, 41, 4)) and len(r.val_loss) == len(r.train_loss) == 11
        assert r.best_val_loss == min(r.val_loss)
    assert res.best_lr == 3e-3  # too small barely moves in 40 steps; too large blows up
    assert res.runs[2].val_loss[-1] > res.runs[2].val_loss[0]
    assert SweepResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert _png(plot_lr_sweep(res, tmp_path / "sweep.png"))


def test_lr_sweep_records_a_run_that_diverges(split, monkeypatch):
    from nanobard.train.loop import NonFiniteLossError

    def boom(model_cfg, cfg, data, out, progress):
        raise NonFiniteLossError("loss became nan")

    monkeypatch.setattr(lessons, "train", boom)
    res = lr_sweep(MODEL, TRAIN, split, (1.0,), steps=10)
    assert res.runs[0].diverged and res.runs[0].best_val_loss is None and res.best_lr is None


def test_without_the_causal_mask_the_training_loss_collapses_but_generation_fails(split, tmp_path):
    # wide enough to find the copy in ~100 steps
    model = ModelConfig(block_size=32, n_layer=1, n_head=4, n_embd=128)
    res = encoder_vs_decoder(split, steps=150, model_cfg=model, sample_chars=30, blanks=64)
    causal, no_mask = res.causal, res.no_mask
    assert causal.causal and not no_mask.causal
    # the lesson: it peeks at the answer, so its loss collapses,
    # on training and validation batches alike ...
    assert (
        no_mask.train_loss < 0.25 * causal.train_loss and no_mask.val_loss < 0.25 * causal.val_loss
    )
    # ... but predicting from the past only, as generation must,
    # it is far worse than the causal model
    assert no_mask.left_to_right_loss > causal.left_to_right_loss + 1.0
    # for a causal model the two agree
    assert abs(causal.left_to_right_loss - causal.val_loss) < 0.3
    assert len(causal.losses) == len(no_mask.losses) == 150
    assert causal.sample and no_mask.sample and res.prompt == split.val[:16]
    c = res.cloze
    assert c.blanks == 64 and c.text.count("[_]") == 1 and len(c.answer) == 1
    # it copies whatever is in the blank
    assert c.no_mask_copy_rate > 0.5 and c.no_mask_accuracy < 0.1
    assert c.both_sides_accuracy > c.left_accuracy  # context on both sides fills a blank better
    assert MaskLesson.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert _png(plot_encoder_vs_decoder(res, tmp_path / "mask.png"))


def test_overfitting_one_batch_drives_its_loss_down(split, tmp_path):
    res = overfit_one_batch(MODEL, TRAIN, split, steps=100)
    assert len(res.losses) == len(res.grad_norms) == 100
    # a working model and loop memorise one batch
    assert res.reduction > 10 and res.losses[-1] < 0.5
    assert {
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
    } <= res.first_grad_norms.keys()
    assert all(v > 0 for v in res.first_grad_norms.values())  # every parameter gets a gradient
    assert OverfitResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert _png(plot_overfit(res, tmp_path / "overfit.png"))


def test_attention_on_characters_compares_the_same_predictions(tiny_hf, split, tmp_path):
    from nanobard.data.tokens import tokens_from_split
    from nanobard.hf.pretrained import load_pretrained
    from nanobard.model.gpt import GPT

    tok = tokens_from_split(split).tokenizer
    torch.manual_seed(0)
    char_model = GPT(
        ModelConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=4, n_embd=32)
    )
    pre = load_pretrained(str(tiny_hf), attn="eager")
    text = split.val[:100]
    res = attention_on_characters(char_model, tok, pre.model, pre.tokenizer, text)
    assert res.text == text[:48]
    assert res.token_starts[0] == 0 and res.token_starts == sorted(res.token_starts)
    assert res.targets and set(res.targets) <= set(res.token_starts[2:])
    for target, p, q, o in zip(res.targets, res.scratch, res.pretrained, res.overlap):
        assert len(p) == len(q) == target - res.context_start  # the characters both models see
        assert sum(p) == pytest.approx(1, abs=1e-5) and sum(q) == pytest.approx(1, abs=1e-5)
        assert 0 <= o <= 1 + 1e-6
    assert 0 < res.mean_overlap <= 1 and 0 < res.mean_uniform_overlap <= 1
    assert CharAttention.from_dict(json.loads(json.dumps(res.to_dict()))) == res
    assert _png(plot_attention_on_characters(res, tmp_path / "attention.png"))
