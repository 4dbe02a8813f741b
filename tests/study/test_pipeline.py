"""The whole study end to end on a tiny corpus, a tiny scratch model and a tiny local GPT-2."""

import json
import re
import shutil

from nanobard.rundir import RunDir
from nanobard.study.pipeline import run_study
from nanobard.study.records import Headline, StudyState
from tests.fixtures import EVIL, study_kwargs

FILES = (
    "training_progress_scratch.png",
    "finetuning_progress_hf.png",
    "model_comparison.png",
    "attention_weights_scratch.png",
    "attention_weights_hf.png",
    "model_scratch_best.pt",
    "model_hf_finetuned",
    "metrics.json",
    "samples.md",
    "attention_analysis.json",
    "config.json",
    "interpretability.json",
    "train_result.json",
    "finetune_result.json",
    "report.html",
    "induction_heads_scratch.png",
    "induction_heads_pretrained.png",
    "head_ablation_scratch.png",
    "head_ablation_pretrained.png",
    "logit_lens.png",
    "loss_by_position.png",
    "head_formation_scratch.png",
)


def test_study_writes_every_file_and_its_records_reload(study):
    out, res, _ = study
    for name in FILES:
        assert (out / name).exists(), name
    head = Headline.load(out / RunDir.HEADLINE)
    assert head == res.headline and head.score_chars == 1500
    assert set(head.bpc) == {
        "from scratch",
        f"{head.pretrained.name} before",
        f"{head.pretrained.name} after",
    }
    state = StudyState.load(out / RunDir.STAGES)
    assert state == res.state  # every stage round-trips through JSON as a record
    assert state.attention.scratch.causality.passed and state.attention.pretrained.causality.passed
    a = state.attention.scratch
    assert len(a.heads_stats) == a.layers * a.heads
    assert all(state.seconds[s] >= 0 for s in ("scratch", "finetune", "interpret", "report"))
    assert not (out / RunDir.HF_CHECKPOINTS).exists()


def test_interpretability_is_recorded_for_both_models(study):
    out, res, _ = study
    data = json.loads((out / RunDir.INTERPRET).read_text())
    for part in ("scratch", "pretrained"):
        keys = " ".join(data[part])
        for what in ("induction", "ablation", "lens", "positions"):
            assert what in keys, (part, what)
    heads = res.state.scratch.history[-1].heads  # head formation: scores at each evaluation
    assert len(heads["induction"]) == 2 and len(heads["previous_token"][0]) == 4


def test_report_is_self_contained_and_escapes_model_text(study):
    out, _, _ = study
    html = (out / RunDir.REPORT).read_text()
    assert EVIL not in html  # neither from the corpus (samples) nor from the prompt
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    assert html.count("data:image/png;base64,") >= 12
    for section in (
        "What was run",
        "Comparison",
        "Figures",
        "Samples",
        "Attention findings",
        "Attention explorer",
        "Causality check",
        "Induction",
        "ablation",
        "Logit lens",
        "Loss by position",
        "formation",
    ):
        assert section in html, section


def test_rerun_skips_finished_stages(study):
    out, res, kw = study
    before = (out / RunDir.STAGES).read_text()
    again = run_study(out, "quick", **kw)
    assert (out / RunDir.STAGES).read_text() == before  # nothing re-ran
    assert again.headline == res.headline


def test_interrupted_study_continues(study, tmp_path):
    out, _, kw = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = StudyState.load(copy / RunDir.STAGES)
    state.samples = state.figures = state.report = None
    state.save(copy / RunDir.STAGES)
    (copy / RunDir.REPORT).unlink()
    run_study(copy, "quick", **kw)
    assert (copy / RunDir.REPORT).exists()
    assert StudyState.load(copy / RunDir.STAGES).scratch == state.scratch


def test_a_corpus_without_romeo_gets_prompts_from_itself(tmp_path, tiny_text):
    """No sample may read '[cannot encode': prompts and attention text come from the corpus."""
    text = "".join(
        c for c in tiny_text.lower() if c not in "romeo"
    )  # none of R, O, M, E in any case
    kw = study_kwargs(tmp_path, text, evil=False)
    kw["prompts"] = None
    kw["scratch_overrides"]["max_steps"] = 4
    kw["finetune_overrides"]["max_steps"] = 1
    res = run_study(tmp_path / "out", "quick", **kw)
    assert all("cannot encode" not in s.text for s in res.state.samples)
    assert not set("ROMEOromeo") & set(
        "".join(res.state.corpus.prompts) + res.state.corpus.attention_text
    )


def test_every_study_preset_names_a_scratch_preset():
    from nanobard.config import PRESETS, STUDY_PRESETS

    assert {"quick", "cpu-10min", "seed", "gpu"} <= set(STUDY_PRESETS)
    for name, p in STUDY_PRESETS.items():
        assert p.name == name and p.scratch in PRESETS
    assert STUDY_PRESETS["cpu-10min"].scratch == "cpu-10min"
    assert (
        STUDY_PRESETS["quick"].scratch_time and STUDY_PRESETS["quick"].finetune.max_time
    )  # budgeted by time
