import json
import subprocess
import sys

import pytest

from nanobard.data import split_text
from nanobard.finetune import FinetuneConfig, finetune
from tests.hf_tiny import build_tiny_hf_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.conftest import SHARED_TINY

    text = SHARED_TINY.read_text()[:20_000] if SHARED_TINY.exists() else "ROMEO:\nBut soft, what light.\n\n" * 700
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_gpt2"), text), text


def cfg(path, **kw):
    base = dict(pretrained=str(path), block_size=32, batch_size=8, max_steps=40, lr=3e-3, warmup_steps=2,
                eval_interval=10, eval_blocks=4, patience=None, score_chars=3000, sample_tokens=10,
                precision="float32", device="cpu")
    return FinetuneConfig(**{**base, **kw})


def test_finetune_end_to_end_loss_falls_and_folder_reloads(tiny_model, tmp_path):
    path, text = tiny_model
    res = finetune(cfg(path), split_text(text), tmp_path, progress=False)
    assert res.steps == 40
    assert res.after.bits_per_char < res.before.bits_per_char - 0.5
    assert res.before.chars == res.after.chars  # the same text for both
    rows = [json.loads(ln) for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "elapsed_s"} <= rows[-1].keys()
    assert {(s["model"], s["strategy"]) for s in res.samples} >= {("before", "greedy"), ("after", "top_k"),
                                                                  ("after", "temperature")}
    folder = tmp_path / "model_hf_finetuned"
    assert (folder / "model.safetensors").exists() and (folder / "generation_config.json").exists()
    # a user loads it with plain transformers, in a fresh process, without nanobard
    code = (
        "import sys; sys.modules['nanobard'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}); t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        "ids = t('ROMEO:', return_tensors='pt').input_ids\n"
        "out = m.generate(ids, max_new_tokens=5, do_sample=False)\n"
        "print(out.shape[1] - ids.shape[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in {"5", "1", "2", "3", "4"}


def test_finetune_resume_continues_from_checkpoint(tiny_model, tmp_path):
    path, text = tiny_model
    split = split_text(text)
    finetune(cfg(path, max_steps=20), split, tmp_path, progress=False)
    res = finetune(cfg(path, max_steps=40), split, tmp_path, resume=True, progress=False)
    assert res.steps == 40
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics_hf.jsonl").read_text().splitlines()]
    assert steps[-1] == 40 and 20 in steps and steps.count(0) == 1


def test_lora_is_merged_before_saving(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    path, text = tiny_model
    res = finetune(cfg(path, lora_r=4, max_steps=10, lr=1e-2), split_text(text), tmp_path, progress=False)
    assert res.trainable_params < res.num_params / 4
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model_hf_finetuned")
    assert not any("lora" in k for k in reloaded.state_dict())
    base = AutoModelForCausalLM.from_pretrained(path)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert not (reloaded.state_dict()[w] == base.state_dict()[w]).all()
