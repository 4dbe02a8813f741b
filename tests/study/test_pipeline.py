"""The whole study end to end on a tiny corpus, a tiny scratch model and a tiny local GPT-2."""

import json
import re
import shutil

import pytest

from nanobard.records import EvalRow
from nanobard.rundir import RunDir
from nanobard.study.pipeline import run_study
from nanobard.study.records import Headline, InterpretStudy, StudyState
from nanobard.train.tracking import row_scalars
from tests.fixtures import EVIL, study_kwargs, tensorboard_scalars

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


def test_report_to_logs_both_training_stages_with_the_head_scores(study):
    """--report-to tensorboard: the study's two runs side by side in its folder, each holding
    its metrics file (the from-scratch one with every head's scores)."""
    out, _, _ = study
    for track, metrics in (("scratch", RunDir.METRICS), ("finetune", RunDir.METRICS_HF)):
        logged = tensorboard_scalars(out / "tensorboard" / track)
        lines = (out / metrics).read_text().splitlines()
        rows = [EvalRow.from_dict(json.loads(line)) for line in lines]
        for row in rows:
            for tag, value in row_scalars(row).items():
                points = logged[f"{track}/{tag}"]  # each unit under its own track
                assert (row.step, pytest.approx(value, rel=1e-6)) in points, (track, tag)
    scratch = tensorboard_scalars(out / "tensorboard/scratch")
    heads = [t for t in scratch if t.startswith("scratch/heads/")]
    assert "scratch/heads/induction/L1H3" in heads and len(heads) >= 2 * 4 * 2, heads


def test_interpretability_is_recorded_for_both_models(study):
    out, res, _ = study
    data = json.loads((out / RunDir.INTERPRET).read_text())
    name = res.state.finetune.model_name  # the tiny local GPT-2's folder
    models = {
        "scratch": "from scratch",
        "pretrained": f"{name} fine-tuned",
        "pretrained_before": f"{name} before fine-tuning",
    }
    analyses = ["induction", "ablation", "lens", "positions"]
    patched = ["patching_scratch", "patching_pretrained"]
    assert list(data) == [*models, *patched] and all(data.values())  # before fine-tuning too
    for part, model in zip(patched, ["from scratch", f"{name} fine-tuned"]):
        p = data[part]  # an induction pair from the validation text, every layer patched
        assert p["model"] == model and len(p["tokens_clean"]) == len(p["tokens_corrupt"]) <= 32
        assert p["tokens_clean"] != p["tokens_corrupt"] and p["logit_clean"] > p["logit_corrupt"]
        assert [len(p[k]) for k in ("resid_pre", "attn_out", "mlp_out", "heads")] == [2] * 4
        assert all(v is not None for row in p["heads"] for v in row) and len(p["heads"][0]) == 4
    for part, model in models.items():
        d = data[part]
        assert list(d) == ["model", "settings", "seconds", *analyses, "findings"], part
        assert [d["model"]] + [d[k]["model"] for k in analyses] == [model] * 5, part
        assert list(d["settings"]) == list(d["seconds"]) == analyses, part
        # both models have 2 layers x 4 heads: a score per head, every layer ablated (small models)
        ind, abl = d["induction"], d["ablation"]
        tables = [ind["induction"], ind["previous_token"], abl["delta_bpc"]]
        assert [[len(row) for row in t] for t in tables] == [[4, 4]] * 3, part
        assert abl["layers"] == [0, 1], part
        assert d["lens"]["layers"] == [0, 1, 2], part  # the embeddings, then after each layer
    assert InterpretStudy.load(out / RunDir.INTERPRET) == res.state.interpret  # the stage's record
    # head formation: per-head scores at every evaluation of the from-scratch run
    history = res.state.scratch.history
    assert [r.step for r in history] == [0, 10, 20]
    for r in history:
        assert list(r.heads or {}) == ["previous_token", "induction"], r.step
        assert [[len(row) for row in r.heads[k]] for k in r.heads] == [[4, 4], [4, 4]]


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


def test_a_rerun_on_another_text_is_refused_and_a_torn_record_redone(study, tmp_path, caplog):
    """The study's records know its text: a re-run on the same characters with the lines
    reordered stops in one line before any stage runs (--force redoes it all); a stages.json cut
    short is redone, with a warning, rather than a traceback."""
    from pathlib import Path

    import pytest

    from nanobard import config as C
    from nanobard.data.corpus import CorpusChanged
    from nanobard.study.pipeline import _context, _done_so_far

    out, res, kw = study
    assert res.state.corpus.sha256 and len(res.state.corpus.sha256) == 64
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lines = Path(kw["data_path"]).read_text().splitlines(keepends=True)
    changed = tmp_path / "changed.txt"
    changed.write_text("".join(lines[1::2] + lines[::2]))
    before = (copy / RunDir.STAGES).read_text()
    with pytest.raises(CorpusChanged) as e:
        run_study(copy, "quick", **{**kw, "data_path": str(changed)})
    msg = str(e.value)
    assert "\n" not in msg and f"{copy / RunDir.STAGES} was made on corpus.txt (SHA-256 " in msg
    assert "the text given now is changed.txt (SHA-256 " in msg
    assert msg.endswith("pass --force to redo every stage on the new text, or another --out "
                        "for a new study")  # fmt: skip
    assert (copy / RunDir.STAGES).read_text() == before  # nothing ran
    (copy / RunDir.STAGES).write_text(before[: len(before) // 2])  # a crash mid-write
    preset = C.get_study_preset("quick")
    ctx = _context(copy, preset, "shakespeare", kw["data_path"], kw["scratch_overrides"],
                   kw["finetune_overrides"], False, False, None)  # fmt: skip
    assert _done_so_far(ctx, copy / RunDir.STAGES) == StudyState()
    assert any("stages.json is not complete JSON" in r.getMessage() and "redoing every stage"
               in r.getMessage() for r in caplog.records)  # fmt: skip


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
    # none of R, O, M, E in any case
    text = "".join(c for c in tiny_text.lower() if c not in "romeo")
    kw = study_kwargs(tmp_path, text, evil=False)
    kw["prompts"] = None
    kw["scratch_overrides"]["max_steps"] = 4
    kw["finetune_overrides"]["max_steps"] = 1
    res = run_study(tmp_path / "out", "quick", **kw)
    assert all("cannot encode" not in s.text for s in res.state.samples)
    assert not set("ROMEOromeo") & set(
        "".join(res.state.corpus.prompts) + res.state.corpus.attention_text
    )
    from nanobard.rundir import RunDir
    from nanobard.study.records import StudyConfig

    config = StudyConfig.load(tmp_path / "out" / RunDir.CONFIG)  # the configs as they ran
    assert list(config.finetune.prompts) == config.prompts == res.state.corpus.prompts
    assert config.scratch.model.n_layer == 2 and config.scratch.train.max_steps == 4


def test_the_study_gives_its_scratch_run_the_presets_time_budget_and_overrides_win(study):
    """config.json says what each stage ran with: the scratch preset's settings, with the study
    preset's wall-time budget in place of its step budget, and the caller's overrides on top."""
    from nanobard.config import PRESETS, STUDY_PRESETS

    out, res, kw = study
    preset = STUDY_PRESETS["quick"]
    scratch = PRESETS[preset.scratch].train
    assert preset.scratch_time != scratch.max_time  # (else this proves nothing)
    written = json.loads((out / RunDir.CONFIG).read_text())
    train, ft = written["scratch"]["train"], written["finetune"]
    model = written["scratch"]["model"]
    # every override won (max_steps 20, n_layer 2, ...); the study's time still caps the run
    over = kw["scratch_overrides"]
    assert {k: {**model, **train}[k] for k in over} == over
    assert train["max_time"] == preset.scratch_time and train["epochs"] is None
    assert (train["lr"], train["optimizer"]) == (scratch.lr, scratch.optimizer)  # not overridden
    assert model["pos_encoding"] == PRESETS[preset.scratch].model.pos_encoding
    assert {k: ft[k] for k in kw["finetune_overrides"]} == kw["finetune_overrides"]
    assert ft["max_time"] == preset.finetune.max_time and ft["lora_r"] == preset.finetune.lora_r
    # and the stages ran with them
    ran = json.loads((out / RunDir.CONFIG_SCRATCH).read_text())
    assert ran["train"] == train and (ran["budget"], ran["step_budget"]) == ("steps", 20)
    assert res.state.scratch.steps == 20 and res.state.scratch.time_budget_s == preset.scratch_time
    assert res.state.finetune.steps == 6 and res.state.finetune.time_budget_s == ft["max_time"]


def test_every_study_preset_resolves_its_budgets(tmp_path):
    """A preset with a scratch time makes time the scratch run's only budget (its steps are sized
    from the measured speed); a budget the caller gives wins, and a time still caps it."""
    from dataclasses import replace

    from nanobard.config import PRESETS, STUDY_PRESETS
    from nanobard.study.pipeline import _context

    def study(preset, scratch=None, finetune=None):
        return _context(
            tmp_path, preset, "shakespeare", None, scratch or {}, finetune or {}, False, False, None
        )

    assert any(p.scratch_time for p in STUDY_PRESETS.values())  # both kinds are checked
    for preset in STUDY_PRESETS.values():
        sp = PRESETS[preset.scratch]
        s = study(preset)
        assert s.model_cfg == sp.model and s.ft_cfg == preset.finetune, preset.name
        if preset.scratch_time:
            t = s.train_cfg
            assert (t.max_steps, t.epochs, t.max_time) == (None, None, preset.scratch_time)
            budget = dict(
                max_steps=sp.train.max_steps, epochs=sp.train.epochs, max_time=sp.train.max_time
            )
            assert replace(t, **budget) == sp.train, preset.name  # nothing else changed
        else:
            assert s.train_cfg == sp.train, preset.name
        o = study(preset, {"max_steps": 7, "n_layer": 1, "lr": 0.5}, {"max_steps": 3})
        cap = preset.scratch_time or sp.train.max_time
        assert (o.train_cfg.max_steps, o.train_cfg.max_time, o.train_cfg.lr) == (7, cap, 0.5)
        assert o.train_cfg.epochs is None and o.model_cfg.n_layer == 1, preset.name
        assert (o.ft_cfg.max_steps, o.ft_cfg.epochs, o.ft_cfg.max_time) == (
            3,
            None,
            preset.finetune.max_time,
        ), preset.name


def test_the_stage_table_is_the_study_state_in_order():
    """Each stage's record lands in the StudyState field of its name, in the table's order: the
    table is the one list of stages (the CLI's [i/9] lines, resuming and the report follow it)."""
    from dataclasses import fields

    from nanobard.study.pipeline import STAGES
    from nanobard.study.records import StudyState

    names = [s.name for s in STAGES]
    assert names == [f.name for f in fields(StudyState) if f.name != "seconds"]
    assert len(set(names)) == len(names) and all(callable(s.run) for s in STAGES)


def test_a_stages_one_line_error_says_how_the_study_goes_on(tmp_path):
    """train's and finetune's hints name their own flags (--allow-new-corpus, --resume,
    --batch-size), which nanobard run does not have: the study gives its own."""
    from nanobard.data.corpus import CorpusChanged
    from nanobard.files import WriteFailed
    from nanobard.hardware import OutOfMemory
    from nanobard.study.pipeline import _for_the_study

    changed = CorpusChanged(
        "the corpus changed since this run began: ...", "pass --allow-new-corpus"
    )
    assert str(_for_the_study(changed)) == (
        "the corpus changed since this run began: ...; pass --force to redo every stage on the "
        "new text, or another --out for a new study"
    )
    oom = OutOfMemory(
        "out of memory: an allocation of 64.0 GiB on the CPU failed", "lower --n-embd"
    )
    assert str(_for_the_study(oom)).endswith("; choose a smaller --preset (quick is the smallest), "
                                             "fine-tune LoRA adapters only (--lora-r 8) or a "
                                             "smaller --pretrained model")  # fmt: skip
    full = WriteFailed(
        tmp_path / "ckpt_last.pt",
        "no space left on the device (0 B free)",
        "then run the same command with --resume",
        "model_scratch_best.pt (step 0)",
    )
    assert str(_for_the_study(full)) == (
        f"no space left on the device (0 B free) writing {tmp_path / 'ckpt_last.pt'}; nothing was "
        "written there; kept: model_scratch_best.pt (step 0); free some space, then run the same "
        "nanobard run command again (finished stages are kept)"
    )
