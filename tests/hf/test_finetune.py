import contextlib
import json
import re
import subprocess
import sys

import pytest
import torch

from nanobard.data.corpus import CorpusChanged, split_text
from nanobard.files import WriteFailed
from nanobard.hardware import OutOfMemory
from nanobard.hf.finetune import FinetuneConfig, finetune
from nanobard.model.sampling import STRATEGIES
from nanobard.records import EvalRow
from nanobard.train.tracking import Tracker, row_scalars
from tests.fixtures import CPU_OOM, build_tiny_hf_model


class Recording(Tracker):
    def __init__(self):
        super().__init__("finetune")
        self.seen = []

    def _log(self, scalars, step):
        self.seen.append((step, scalars))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.conftest import SHARED_TINY

    text = (
        SHARED_TINY.read_text()[:20_000]
        if SHARED_TINY.exists()
        else "ROMEO:\nBut soft, what light.\n\n" * 700
    )
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_gpt2"), text), text


def cfg(path, **kw):
    base = dict(
        pretrained=str(path),
        block_size=32,
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=10,
        eval_blocks=4,
        patience=None,
        score_chars=3000,
        sample_tokens=10,
        precision="float32",
        device="cpu",
    )
    return FinetuneConfig(**{**base, **kw})


def test_finetune_end_to_end_loss_falls_and_folder_reloads(tiny_model, tmp_path):
    path, text = tiny_model
    tracker = Recording()
    res = finetune(cfg(path), split_text(text), tmp_path, progress=False, tracker=tracker)
    assert res.steps == 40
    assert res.after.bits_per_char < res.before.bits_per_char - 0.5
    assert res.before.chars == res.after.chars  # the same text for both
    rows = [json.loads(ln) for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "elapsed_s"} <= rows[-1].keys()
    # --report-to: the tracker got every row of the metrics file, and the Trainer's own logs
    rows_logged = [(step, s) for step, s in tracker.seen if "finetune/val_loss" in s]
    assert rows_logged == [
        (r["step"], {f"finetune/{k}": v for k, v in row_scalars(EvalRow.from_dict(r)).items()})
        for r in rows
    ]
    trainer_logged = [step for step, s in tracker.seen if "finetune/trainer/loss" in s]
    assert trainer_logged == list(range(10, 41, 10)), tracker.seen
    assert {(s.model, s.strategy) for s in res.samples} >= {
        ("before", "greedy"),
        ("after", "top_k"),
        ("after", "temperature"),
    }
    folder = tmp_path / "model_hf_finetuned"
    assert (folder / "model.safetensors").exists() and (folder / "generation_config.json").exists()
    # a model card like the Hub's: the scores before and after, how it was made
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert f"| bits per character before | {res.before.bits_per_char:.4f} " in card
    assert f"| bits per character after | {res.after.bits_per_char:.4f} " in card
    assert "| training | 40 steps, " in card and "(Python)" in card  # no command line: Python
    # a user loads it with plain transformers' pipeline, offline, in a fresh process, without
    # nanobard
    code = (
        "import sys; sys.modules['nanobard'] = None\n"
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(folder)!r})\n"
        "out = pipe('ROMEO:', max_new_tokens=5, min_new_tokens=5, do_sample=False)\n"
        "print(len(pipe.tokenizer(out[0]['generated_text']).input_ids) > 5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"
    # the whole result, reloadable
    saved = json.loads((tmp_path / "finetune_result.json").read_text())
    assert saved["after"]["bits_per_char"] == pytest.approx(res.after.bits_per_char)
    from nanobard.hf.finetune import FinetuneResult

    assert FinetuneResult.load(tmp_path / "finetune_result.json") == res
    # the run folder opens as its fine-tuned model, as a from-scratch run folder does
    from nanobard.hf.pretrained import is_scratch, open_for_generation, open_model

    assert not is_scratch(tmp_path) and open_model(tmp_path).kind == "hf"
    assert open_for_generation(tmp_path).complete("ROMEO:", 3, STRATEGIES["greedy"])


def test_finetune_resume_continues_from_checkpoint(tiny_model, tmp_path):
    path, text = tiny_model
    split = split_text(text)
    finetune(cfg(path, max_steps=20), split, tmp_path, progress=False)
    res = finetune(cfg(path, max_steps=40), split, tmp_path, resume=True, progress=False)
    assert res.steps == 40
    steps = [
        json.loads(ln)["step"] for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 40 and 20 in steps and steps.count(0) == 1
    # the same characters, lines reordered: another text, refused before anything runs
    lines = text.splitlines(keepends=True)
    changed = split_text("".join(lines[1::2] + lines[::2]))
    with pytest.raises(CorpusChanged) as e:
        finetune(cfg(path, max_steps=50), changed, tmp_path, resume=True, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint-40 was made on text (SHA-256 " in msg
    assert f"{split.sha256[:12]}" in msg and f"{changed.sha256[:12]}" in msg
    assert msg.endswith(
        "pass --allow-new-corpus with --resume to continue fine-tuning on the new text"
    )
    res = finetune(cfg(path, max_steps=50), changed, tmp_path, resume=True, progress=False,
                   allow_new_corpus=True)  # fmt: skip
    assert res.steps == 50  # and the model before fine-tuning was scored again, on the new text
    assert json.loads((tmp_path / "finetune_before.json").read_text())["corpus"]["sha256"] == (
        changed.sha256
    )
    info = json.loads((tmp_path / "model_hf_finetuned" / "nanobard.json").read_text())
    assert info["corpus"]["sha256"] == changed.sha256


def test_a_full_disk_while_the_trainer_saves_keeps_the_last_whole_checkpoint(
    tiny_model, tmp_path, monkeypatch
):
    """The disk fills while checkpoint-20 is written: the half folder goes, checkpoint-10 stays,
    one line says so; --resume continues from checkpoint-10."""
    path, text = tiny_model
    from nanobard import files

    real_save = torch.save

    def full_at_20(obj, f, *a, **k):  # what torch.save(obj, path) says when the disk is full
        if "checkpoint-20" in str(f):
            monkeypatch.setattr(files, "free_bytes", lambda where: 0)
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_at_20)
    with pytest.raises(WriteFailed) as e:
        finetune(cfg(path, max_steps=30), split_text(text), tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no space left on the device")
    assert "checkpoint-20; nothing was written there; kept: checkpoint-10 (the last " in msg
    assert sorted(p.name for p in (tmp_path / "hf_checkpoints").iterdir()) == ["checkpoint-10"]
    monkeypatch.undo()
    (tmp_path / "hf_checkpoints" / "checkpoint-25").mkdir()  # cut short by a crash: skipped
    res = finetune(cfg(path, max_steps=30), split_text(text), tmp_path, resume=True,
                   progress=False)  # fmt: skip
    assert res.steps == 30
    rows = [
        json.loads(ln)["step"] for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()
    ]
    assert rows == [0, 10, 20, 30]  # step 20, evaluated before its save failed, is not doubled
    assert (
        json.loads((tmp_path / "hf_checkpoints" / "checkpoint-30" / "corpus.json").read_text())[
            "sha256"
        ]
        == split_text(text).sha256
    )


def test_out_of_memory_names_the_flags_that_lower_it(tiny_model, tmp_path, monkeypatch):
    from nanobard.hf import finetune as ft

    def refuse(*a, **k):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(ft, "load_pretrained", refuse)
    with pytest.raises(OutOfMemory) as e:
        finetune(cfg(tiny_model[0]), split_text(tiny_model[1]), tmp_path, progress=False)
    msg = str(e.value)
    assert msg.startswith("out of memory: an allocation of 64.0 GiB on the CPU failed (it has ")
    assert msg.endswith("lower --batch-size (now 8; raise --grad-accum, now 1, to keep the tokens "
                        "per step) or --block-size (now 32), or train LoRA adapters only "
                        "(--lora-r 8)")  # fmt: skip


def test_lora_is_merged_before_saving(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    path, text = tiny_model
    res = finetune(
        cfg(path, lora_r=4, max_steps=10, lr=1e-2), split_text(text), tmp_path, progress=False
    )
    assert res.trainable_params < res.num_params / 4
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model_hf_finetuned")
    assert not any("lora" in k for k in reloaded.state_dict())
    base = AutoModelForCausalLM.from_pretrained(path)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert not (reloaded.state_dict()[w] == base.state_dict()[w]).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_layers_adapts_only_the_top_blocks(arch):
    """--lora-layers N: adapters on every linear layer of the top N blocks (GPT-2's Conv1D and
    Llama's Linear alike) and nowhere else, so no gradient flows below them."""
    from nanobard.hf.finetune import _with_lora

    model = next(m for m in _tiny_causal_lms() if (arch == "gpt2") == hasattr(m, "transformer"))
    all_blocks, n_all = _with_lora(model, FinetuneConfig(lora_r=4, lora_layers=None))
    per_block = {k.split(".lora_")[0] for k, _ in all_blocks.named_parameters() if ".lora_" in k}
    model = next(m for m in _tiny_causal_lms() if (arch == "gpt2") == hasattr(m, "transformer"))
    top, n_top = _with_lora(model, FinetuneConfig(lora_r=4, lora_layers=1))
    adapted = {k.split(".lora_")[0] for k, p in top.named_parameters() if p.requires_grad}
    block = ".h.1." if arch == "gpt2" else ".layers.1."
    assert adapted == {k for k in per_block if block in k} and len(adapted) >= 4
    assert n_top * 2 == n_all  # two blocks of equal shape, one adapted
    ids = torch.randint(0, 500, (2, 16))
    top(input_ids=ids, labels=ids).loss.backward()
    assert {
        k.split(".lora_")[0] for k, p in top.named_parameters() if p.grad is not None
    } == adapted


def _tiny_causal_lms():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    yield GPT2LMHeadModel(
        GPT2Config(vocab_size=500, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    )
    yield LlamaForCausalLM(
        LlamaConfig(
            vocab_size=500,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_loss_equals_the_models_own_loss_and_gradients(lora):
    from nanobard.hf.trainer import chunked_lm_loss

    for model in _tiny_causal_lms():
        model.eval()  # GPT-2's dropout would make two forward passes differ
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
            )
        ids = torch.randint(0, 500, (3, 40))
        labels = ids.clone()
        labels[0, :7] = -100  # ignored positions count in neither
        ref = model(input_ids=ids, labels=labels).loss
        ref_grads = torch.autograd.grad(ref, [p for p in model.parameters() if p.requires_grad])
        # 117 positions: 7 full chunks and a partial one
        got = chunked_lm_loss(model, ids, labels, chunk=16)
        grads = torch.autograd.grad(got, [p for p in model.parameters() if p.requires_grad])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        n = (labels[:, 1:] != -100).sum()
        torch.testing.assert_close(chunked_lm_loss(model, ids, labels, num_items=2 * n), ref / 2)


def test_trainer_takes_the_chunked_loss(tiny_model, tmp_path, monkeypatch):
    import nanobard.hf.trainer as ht

    calls = []
    real = ht.chunked_lm_loss
    monkeypatch.setattr(ht, "chunked_lm_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    path, text = tiny_model
    finetune(cfg(path, max_steps=3, eval_interval=3), split_text(text), tmp_path, progress=False)
    assert len(calls) == 3  # one per training step; evaluation keeps the Trainer's own loss


def test_time_budget_sizes_the_steps_and_ends_on_time(tiny_model, tmp_path, capsys):
    path, text = tiny_model
    res = finetune(
        cfg(path, max_steps=None, max_time=10.0, eval_interval=1000),
        split_text(text),
        tmp_path,
        progress=True,
    )
    out, err = capsys.readouterr()
    # one bar, sized to the steps the budget fits (not the 1,000,000-step bound it starts from),
    # and no dict of the Trainer's logs printed per log line
    assert "'eval_loss'" not in out + err and "/1000000" not in err, out[-800:]
    done, total = map(int, re.findall(r"fine-tune:[^|\r\n]*\|[^|\r\n]*\| (\d+)/(\d+)", err)[-1])
    assert done == res.steps and total < 2 * res.steps, err[-600:]  # the budget's own count
    rows = [json.loads(ln) for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()]
    assert res.steps > 5 and res.train_seconds < 10.0 * 1.5
    assert rows[-1]["step"] == res.steps  # a final evaluation at the step the budget allowed
    # the schedule was sized to the budget: the cosine had (nearly) decayed
    assert rows[-1]["lr"] < 3e-3 * 0.3
    # the budget is the whole command's: every part timed, training given what the rest leave
    assert list(res.phases) == ["load", "score_before", "samples_before", "data", "train", "save",
                                "score_after", "samples_after"]  # fmt: skip
    assert res.time_budget_s == 10.0 and res.wall_seconds > res.phases["train"] > 0


def test_the_time_budget_is_split_between_training_and_the_parts_around_it(caplog):
    """--max-time bounds the whole command: training gets the budget less what was spent and
    what scoring, samples and saving will take after it; never less than a tenth, with a
    warning that says what to lower."""
    import logging

    from nanobard.hf.finetune import Phases, _training_time

    class Clock(Phases):
        def spent(self):
            return 30.0

    c = cfg("unused", max_steps=None, max_time=100.0)
    assert _training_time(c, Clock(), after_s=20.0) == 50.0
    assert _training_time(cfg("unused", max_steps=40), Clock(), after_s=20.0) is None
    with caplog.at_level(logging.WARNING):
        assert _training_time(c, Clock(), after_s=65.0) == 10.0
    assert "the 100 s budget leaves 5 s for training" in caplog.text
    assert "raise --max-time or lower --score-chars / --sample-tokens" in caplog.text
    clock = Phases()
    clock.mark("load")
    clock.split("score_before", 1e9, "samples_before")  # never more than the part itself
    assert list(clock.phases) == ["load", "score_before", "samples_before"]
    assert clock.phases["samples_before"] == 0.0


def test_the_report_says_what_the_stage_spent_around_training():
    from pathlib import Path

    from nanobard.hf.finetune import FinetuneResult
    from nanobard.model.evaluate import Score
    from nanobard.study.report import _around_training

    score = Score("m", 100, 50, 60.0, 257, 128, 1.0, "bfloat16")
    f = FinetuneResult(Path("run"), "m", "", 1, 1, 1, 1, 1.0, 1.0, score, score)
    assert _around_training(f) == " (scoring and samples before and after included in the time)"
    f.phases = {"load": 2.2, "score_before": 5.1, "train": 120.0, "save": 3.0}
    assert _around_training(f) == (
        "; 120 s training and 10 s around it (load 2.2 s, score before 5.1 s, save 3.0 s; "
        "scored in bfloat16)"
    )


def test_the_bar_ends_full_when_the_budget_shrinks_below_the_steps_done():
    from types import SimpleNamespace

    from nanobard.hf.trainer import quiet_progress

    added = []
    trainer = SimpleNamespace(remove_callback=lambda cb: None, add_callback=added.append)
    budget = SimpleNamespace(sized=True, horizon=1071)
    quiet_progress(trainer, budget, progress=True)
    (bar_cb,) = added
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10**6)
    bar_cb.on_train_begin(None, state, None)
    for step, horizon in ((999, 1071), (1000, 1000), (1001, 1000)):  # re-sized after step 1000
        budget.horizon, state.global_step = horizon, step
        bar_cb.on_step_end(None, state, None)
    assert (bar_cb.training_bar.n, bar_cb.training_bar.total) == (1001, 1001)
    bar_cb.training_bar.close()


def test_cpu_bfloat16_training_casts_frozen_weights_once_and_runs_attention_in_float32(
    monkeypatch,
):
    """Inside ``cpu_bfloat16_training`` LoRA's frozen weights are bfloat16 (without gradients the
    forward pass is autocast's, to the bit), attention takes float32 queries, keys and values
    with autocast off where gradients flow, and a padded batch's mask with them; where no
    gradients flow it is left to autocast. On leaving, the float32 weights and SDPA are back."""
    from peft import LoraConfig, get_peft_model

    from nanobard.hf.trainer import CPU_TRAINING_ATTENTION, cpu_bfloat16_training

    seen: list[tuple[torch.dtype, torch.dtype, bool, bool]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):  # Llama's rotary leaves q, k float32 and v bfloat16
        masked = kw.get("attn_mask") is not None
        seen.append((q.dtype, v.dtype, torch.is_autocast_enabled("cpu"), masked))
        return sdpa(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    ids = torch.randint(0, 500, (2, 24))
    pads = torch.ones_like(ids)
    pads[1, :6] = 0  # left padding: the row's later tokens must not see these
    kept = pads.bool()
    for model in _tiny_causal_lms():
        model.eval()
        assert model.config._attn_implementation == "sdpa"
        lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
        frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if "base_layer" in n}
        with torch.no_grad(), autocast:
            ref = lora(input_ids=ids).logits
            ref_padded = lora(input_ids=ids, attention_mask=pads).logits.float()
        seen.clear()
        with cpu_bfloat16_training(lora):
            params = dict(lora.named_parameters())
            assert all(params[n].dtype == torch.bfloat16 for n in frozen)
            assert model.config._attn_implementation == CPU_TRAINING_ATTENTION
            with autocast:
                logits = lora(input_ids=ids, attention_mask=pads).logits.float()
                logits.sum().backward()
            assert seen == [(torch.float32, torch.float32, False, True)] * 2  # two layers
            # float32 attention against bfloat16: ~0.004 apart; ignoring the mask: 0.1-0.2
            torch.testing.assert_close(logits[kept], ref_padded[kept], atol=2e-2, rtol=0)
            with torch.no_grad(), autocast:
                got = lora(input_ids=ids).logits
            assert len(seen) == 4 and all(s[2] for s in seen[2:])  # autocast's bfloat16
            torch.testing.assert_close(got, ref, atol=0, rtol=0)  # no gradients: plain SDPA
        params = dict(lora.named_parameters())
        assert all(
            torch.equal(params[n], w) and params[n].dtype == w.dtype for n, w in frozen.items()
        )
        assert model.config._attn_implementation == "sdpa"
        assert all(p.grad is not None for p in lora.parameters() if p.requires_grad)


def test_cpu_bfloat16_training_leaves_a_shared_weight_in_float32():
    """LoRA on a tied output layer: its weight is the embedding's too, which must stay float32
    (casting it would turn the embedding lookup, and so the residual stream, to bfloat16)."""
    from peft import LoraConfig, get_peft_model

    from nanobard.hf.trainer import cpu_bfloat16_training

    model = list(_tiny_causal_lms())[1]  # Llama, tied embeddings
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    embedding = model.get_input_embeddings().weight
    assert embedding is model.lm_head.get_base_layer().weight
    with cpu_bfloat16_training(lora):
        assert embedding.dtype == torch.float32
        assert model.model.layers[0].self_attn.q_proj.get_base_layer().weight.dtype == (
            torch.bfloat16
        )


def test_cpu_bfloat16_training_disabled_changes_nothing():
    from peft import LoraConfig, get_peft_model

    from nanobard.hf.trainer import cpu_bfloat16_training

    model = next(_tiny_causal_lms())
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with cpu_bfloat16_training(lora, enabled=False):
        assert all(p.dtype == torch.float32 for p in lora.parameters())
        assert model.config._attn_implementation == "sdpa"


def test_bfloat16_fine_tuning_on_a_cpu_trains_in_the_context_and_saves_float32(
    tiny_model, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from nanobard.hf import finetune as ft
    from nanobard.hf.trainer import CPU_TRAINING_ATTENTION

    entered = []
    real = ft.cpu_bfloat16_training

    @contextlib.contextmanager
    def spy(model, enabled=True):
        with real(model, enabled):
            entered.append((enabled, model.get_base_model().config._attn_implementation))
            yield

    monkeypatch.setattr(ft, "cpu_bfloat16_training", spy)
    path, text = tiny_model
    kw = dict(lora_r=4, max_steps=4, eval_interval=2, precision="bfloat16")
    ft.finetune(cfg(path, **kw), split_text(text), tmp_path, progress=False)
    assert entered == [(True, CPU_TRAINING_ATTENTION)]
    saved = tmp_path / "model_hf_finetuned"
    assert CPU_TRAINING_ATTENTION not in (saved / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    merged = reloaded.state_dict()["transformer.h.0.attn.c_attn.weight"]
    # merged into the float32 weights, not into their bfloat16 copies: few values round-trip
    assert (merged.bfloat16().float() == merged).float().mean() < 0.1


@pytest.mark.parametrize("ratio", [1.0, 8.0])
def test_lora_plus_gives_the_b_matrices_a_larger_learning_rate(tiny_model, tmp_path, ratio):
    """--lora-plus R: the adapters' B matrices step at R x lr, A (and all else) at lr; at 1 the
    Trainer's own optimizer, one learning rate for every adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from nanobard.hf.trainer import trainer_class

    model = next(_tiny_causal_lms())
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    args = TrainingArguments(
        tmp_path, learning_rate=1e-3, weight_decay=0.1, use_cpu=True, report_to=[]
    )
    trainer = trainer_class(lora_plus=ratio)(model=lora, args=args)
    opt = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
    assert len(lr_of) == len(named) and any("lora_B" in n for n, _ in named)
    for n, p in named:
        assert lr_of[id(p)] == pytest.approx(1e-3 * (ratio if "lora_B" in n else 1.0)), n
