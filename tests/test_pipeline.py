"""The whole study end to end on a tiny corpus, a tiny scratch model and a tiny local GPT-2."""

import json
import re
import shutil

import pytest

from nanobard.pipeline import run_study
from tests.hf_tiny import build_tiny_hf_model

EVIL = "<script>alert(1)</script>"
FILES = ("training_progress_scratch.png", "finetuning_progress_hf.png", "model_comparison.png",
         "attention_weights_scratch.png", "attention_weights_hf.png", "model_scratch_best.pt",
         "model_hf_finetuned", "metrics.json", "samples.md", "attention_analysis.json", "config.json",
         "report.html")


def study_kwargs(tmp_path, tiny_text):
    text = tiny_text[:12_000] + f"\n\nROMEO:\nWhat is this {EVIL} in my text?\n\n" + tiny_text[12_000:16_000]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    hf = build_tiny_hf_model(tmp_path / "tiny_gpt2", text)
    return dict(
        data_path=str(corpus),
        scratch_overrides=dict(n_layer=2, n_head=4, n_embd=16, block_size=32, batch_size=8, max_steps=20,
                               max_time=None, eval_interval=10, eval_iters=2, warmup_steps=2),
        finetune_overrides=dict(pretrained=str(hf), block_size=32, batch_size=4, max_steps=6, eval_interval=3,
                                eval_blocks=2, score_chars=1500, sample_tokens=8, precision="float32",
                                warmup_steps=1, prompts=("ROMEO:\n", f"{EVIL} ")),
        progress=False,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_text):
    tmp = tmp_path_factory.mktemp("study")
    kw = study_kwargs(tmp, tiny_text)
    res = run_study(tmp / "out", "quick", **kw)
    return tmp / "out", res, kw


def test_study_writes_every_file(study):
    out, res, _ = study
    for name in FILES:
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["bpc"]) == {"from scratch", f"{m['pretrained']['name']} before", f"{m['pretrained']['name']} after"}
    assert m["score_chars"] == 1500
    an = json.loads((out / "attention_analysis.json").read_text())
    for key in ("scratch", "pretrained"):
        assert an[key]["causality"]["attention_check"] == "pass"
        assert an[key]["causality"]["gradient_check"] == "pass"
        assert len(an[key]["heads_stats"]) == an[key]["layers"] * an[key]["heads"]
    assert not (out / "hf_checkpoints").exists()


def test_report_is_self_contained_and_escapes_model_text(study):
    out, _, _ = study
    html = (out / "report.html").read_text()
    assert EVIL not in html  # neither from the corpus (samples) nor from the prompt
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert html.count("data:image/png;base64,") == 5
    for section in ("What was run", "Comparison", "Figures", "Samples", "Attention findings",
                    "Attention explorer", "Causality check"):
        assert section in html


def test_rerun_skips_finished_stages_and_force_redoes(study, tmp_path):
    out, res, kw = study
    before = (out / "stages.json").read_text()
    again = run_study(out, "quick", **kw)
    assert (out / "stages.json").read_text().count("stage_seconds") == before.count("stage_seconds")
    assert again["headline"] == res["headline"]


def test_interrupted_study_continues(study, tmp_path):
    out, _, kw = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = json.loads((copy / "stages.json").read_text())
    for stage in ("samples", "figures", "report"):
        state.pop(stage)
    (copy / "stages.json").write_text(json.dumps(state))
    (copy / "report.html").unlink()
    run_study(copy, "quick", **kw)
    assert (copy / "report.html").exists()
    assert json.loads((copy / "stages.json").read_text())["scratch"] == state["scratch"]


def test_every_study_preset_names_a_scratch_preset():
    from nanobard.config import PRESETS
    from nanobard.pipeline import STUDY_PRESETS

    assert {"quick", "cpu-10min", "seed", "gpu"} <= set(STUDY_PRESETS)
    for name, p in STUDY_PRESETS.items():
        assert p.name == name and p.scratch in PRESETS
    assert STUDY_PRESETS["cpu-10min"].scratch == "cpu-10min"
