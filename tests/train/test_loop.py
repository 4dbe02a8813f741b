import json
import logging
import os
import pickle
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from nanobard.config import ConfigError, ModelConfig, TrainConfig
from nanobard.data.corpus import CorpusChanged, split_text
from nanobard.files import WriteFailed
from nanobard.hardware import OutOfMemory
from nanobard.model import checkpoint
from nanobard.model.checkpoint import CheckpointError, load_model, read_checkpoint
from nanobard.train.loop import EVAL_LINE, train
from nanobard.train.schedule import lr_at
from tests.fixtures import CPU_OOM, TINY_MODEL, disk_full, tcfg


def test_without_a_bar_each_evaluation_is_one_log_line(tmp_path, tiny_text, caplog):
    """What a log (and the time-to-loss benchmark) reads in place of the progress bar."""
    import re

    caplog.set_level("INFO", logger="nanobard.train.loop")
    train(TINY_MODEL, tcfg(max_steps=20), split_text(tiny_text), tmp_path, progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    got = [EVAL_LINE.match(ln) for ln in lines]  # the benchmark's pattern
    assert all(got) and len(got) == len(rows) == 3
    whole = re.compile(r"step \d+/20: val loss [\d.]+, train loss [\d.]+, lr [\d.e+-]+, [\d.]+ s$")
    assert all(whole.match(ln) for ln in lines)
    logged = [(int(m[1]), float(m[2])) for m in got]
    assert logged == [(r["step"], round(r["val_loss"], 4)) for r in rows]
    caplog.clear()
    train(TINY_MODEL, tcfg(max_steps=20), split_text(tiny_text), tmp_path / "bar", progress=True)
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]  # the bar shows it


def test_training_lowers_loss_and_writes_the_run_folder(tmp_path, tiny_text):
    res = train(TINY_MODEL, tcfg(max_steps=60), split_text(tiny_text), tmp_path, progress=False)
    assert res.steps == 60 and res.best_val_loss < res.first_val_loss - 0.5
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 40, 50, 60]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "elapsed_s"} <= rows[-1].keys()
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model"]["n_embd"] == 32 and cfg["train"]["max_steps"] == 60
    best = torch.load(tmp_path / "model_scratch_best.pt", weights_only=True)
    assert json.loads(best["metrics"])["val_loss"] == pytest.approx(res.best_val_loss, abs=1e-9)
    from nanobard.train.loop import TrainResult

    # the result, reloadable as a record
    assert TrainResult.load(tmp_path / "train_result.json") == res
    assert all(r.heads is None for r in res.history)  # plain training runs no analysis


def test_on_eval_callbacks_fill_the_recorded_rows(tmp_path, tiny_text):
    from nanobard.interp.circuits import record_head_scores

    seen = []

    def spy(model, row):
        seen.append((row.step, model.training))
        return row

    res = train(
        TINY_MODEL,
        tcfg(max_steps=20, eval_interval=10),
        split_text(tiny_text),
        tmp_path,
        progress=False,
        on_eval=[spy, record_head_scores],
    )
    assert seen == [
        (0, True),
        (10, True),
        (20, True),
    ]  # every evaluation, the model in training mode
    assert all(len(r.heads["induction"]) == TINY_MODEL.n_layer for r in res.history)
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["heads"]["previous_token"][0]) for r in rows] == [
        TINY_MODEL.n_head
    ] * 3  # recorded as returned


STEP_S = 1 / 16  # fake seconds per optimizer step (a power of two: exact sums)


@pytest.fixture
def fake_clock(monkeypatch):
    """The loop's and the TimeBudget's ``time.perf_counter`` on a fake clock that moves only by
    ``STEP_S`` per optimizer step and by what a test adds (e.g. in an on_eval callback): a time
    budget runs to the same step on any machine, with no real waiting."""
    from nanobard.train import loop, schedule

    now = [0.0]
    fake = SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(schedule, "time", fake)
    monkeypatch.setattr(loop, "time", fake)
    # TimeBudget's t0 defaults to the real perf_counter (bound when the class was defined)
    monkeypatch.setattr(
        loop, "TimeBudget", lambda *a, **kw: schedule.TimeBudget(*a, **kw, t0=now[0])
    )
    real_step = loop.train_step

    def step(*a, **kw):
        now[0] += STEP_S
        return real_step(*a, **kw)

    monkeypatch.setattr(loop, "train_step", step)
    return now


def test_a_time_only_budget_stops_at_the_horizon_the_clock_sizes(
    tmp_path, tiny_text, fake_clock, monkeypatch
):
    from nanobard.train.schedule import TimeBudget

    sized, refits = [], []
    observe, refine = TimeBudget.observe, TimeBudget.refine

    def spy_size(self, step):
        h = observe(self, step)
        if h is not None:
            sized.append((step, h))
        return h

    def spy_refine(self, step, *a):
        refits.append((step, refine(self, step, *a)))
        return refits[-1][1]

    def slow_eval(model, row):  # every evaluation costs 0.25 fake seconds
        fake_clock[0] += 0.25
        return row

    monkeypatch.setattr(TimeBudget, "observe", spy_size)
    monkeypatch.setattr(TimeBudget, "refine", spy_refine)
    res = train(
        TINY_MODEL,
        tcfg(max_steps=None, max_time=3.0, eval_interval=10),
        split_text(tiny_text),
        tmp_path,
        progress=False,
        on_eval=[slow_eval],
    )
    counters = json.loads(
        torch.load(tmp_path / "ckpt_last.pt", weights_only=True)["train_state"]["counters"]
    )
    # sized once, as soon as the steps after the first warm-up step are timed (MIN_TIMED of them,
    # covering 1% of the budget); re-fitted at every later evaluation but the final one
    assert [s for s, _ in sized] == [TimeBudget.WARMUP_STEPS + TimeBudget.MIN_TIMED]
    horizon = refits[-1][1]
    assert [s for s, _ in refits] == list(range(10, horizon, 10)) == [10, 20]
    # the first estimate counted the step-0 evaluation's 0.25 s as every evaluation's cost: 0.0625 s
    # steps + 0.025 s of evaluation each fill the 2.5625 s left after step 3, less the final
    # evaluation's 0.25 s, with 26 more steps
    assert sized[0][1] == 3 + int((3.0 - 0.25 - 3 * STEP_S - 0.25) / (STEP_S + 0.25 / 10))
    # it stopped at that horizon, one step before the clock itself ran out, and recorded it
    assert res.stopped == "time" and res.steps == horizon and res.elapsed_s < 3.0
    assert counters["horizon"] == horizon and counters["horizon_refined"]
    assert [r.step for r in res.history] == [0, 10, 20, horizon]  # the final one, once
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["budget"] == "time" and cfg["step_budget"] is None and res.time_budget_s == 3.0


def test_resolve_budget_overrides():
    from nanobard.config import resolve

    base = TrainConfig(max_steps=100, max_time=60.0)
    assert resolve(base, {"max_time": 30.0}).max_steps is None  # time alone: time is the budget
    # steps, time still caps
    assert resolve(base, {"max_steps": 7}) == TrainConfig(max_steps=7, max_time=60.0)
    assert resolve(base, {"epochs": 2.0}).max_steps is None
    assert resolve(base, {"lr": None}) == base  # unset flags change nothing


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact(tmp_path, tiny_text, optimizer):
    split = split_text(tiny_text)
    # dropout: the RNG state must resume too
    m = ModelConfig(**{**TINY_MODEL.__dict__, "dropout": 0.1})
    kw = dict(lr_decay_steps=40, optimizer=optimizer)  # Muon's momentum buffers must resume too
    train(m, tcfg(max_steps=40, **kw), split, tmp_path / "straight", progress=False)
    train(m, tcfg(max_steps=20, **kw), split, tmp_path / "split", progress=False)
    res = train(m, tcfg(max_steps=40, **kw), split, tmp_path / "split", resume=True, progress=False)
    assert res.steps == 40
    a = torch.load(tmp_path / "straight" / "ckpt_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "ckpt_last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [0, 10, 20, 30, 40]


def test_early_stopping(tmp_path, tiny_text):
    # a learning rate so small that validation loss cannot improve by the float32 resolution
    res = train(
        TINY_MODEL,
        tcfg(max_steps=500, lr=1e-12, min_lr=0, warmup_steps=0, patience=2),
        split_text(tiny_text),
        tmp_path,
        progress=False,
    )
    assert res.stopped == "early_stopping" and res.steps < 500


def test_a_time_budget_spent_before_the_speed_is_measured_stops_on_the_clock(
    tmp_path, tiny_text, fake_clock
):
    res = train(
        TINY_MODEL,
        # 2 fake steps (0.125 s) spend it: the horizon is sized after 3 (a warm-up and 2 timed)
        tcfg(max_steps=None, max_time=0.1),
        split_text(tiny_text),
        tmp_path,
        progress=False,
    )
    assert res.stopped == "time" and res.steps == 2 and res.elapsed_s == 2 * STEP_S
    assert [r.step for r in res.history] == [0, 2]  # the final evaluation at the last step
    counters = json.loads(
        torch.load(tmp_path / "ckpt_last.pt", weights_only=True)["train_state"]["counters"]
    )
    assert counters["horizon"] is None and not counters["horizon_refined"]


def test_epoch_budget(tmp_path, tiny_text):
    split = split_text(tiny_text)
    res = train(TINY_MODEL, tcfg(max_steps=None, epochs=0.5), split, tmp_path, progress=False)
    assert res.steps == -(-int(0.5 * len(split.train)) // (8 * 16))


def test_lr_schedule_warmup_then_cosine():
    cfg = tcfg(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg, 110, 0) == pytest.approx(1 / 11)
    assert lr_at(10, cfg, 110, 0) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110, 0) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110, 0) == pytest.approx(0.1)
    assert lr_at(50, cfg, None, 0.5) == pytest.approx(0.55)  # time-only budget follows time


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, tiny_text, monkeypatch):
    train(TINY_MODEL, tcfg(max_steps=10), split_text(tiny_text), tmp_path, progress=False)
    path = tmp_path / "model_scratch_best.pt"
    before = path.read_bytes()
    disk_full(monkeypatch, after=1000)
    model, tok, _ = load_model(path)
    with pytest.raises(WriteFailed, match="no space left on the device .*previous model_scratch"):
        checkpoint.save_checkpoint(path, model, tok)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_a_run_whose_disk_fills_up_ends_in_one_line_with_what_was_kept(
    tmp_path, tiny_text, monkeypatch
):
    """The disk fills while the second evaluation's checkpoints are written: the run stops with
    the step-10 checkpoints kept and says how to go on; --resume then continues from them."""
    real_save = checkpoint.files.write_bytes
    calls = []

    def fill_at_the_fifth(path, data):  # best, last at steps 0 and 10; best at 20 fills the disk
        calls.append(path.name)
        if len([c for c in calls if c.endswith(".pt")]) == 5:
            disk_full(monkeypatch, after=100)
        return real_save(path, data)

    monkeypatch.setattr(checkpoint.files, "write_bytes", fill_at_the_fifth)
    cfg = tcfg(max_steps=30, eval_interval=10)
    with pytest.raises(WriteFailed) as e:
        train(TINY_MODEL, cfg, split_text(tiny_text), tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no space left on the device")
    assert msg.endswith(
        "the previous model_scratch_best.pt is kept; kept: ckpt_last.pt (step 10), "
        "model_scratch_best.pt (step 10); free some space, then run the same command with --resume"
    )
    monkeypatch.undo()
    res = train(TINY_MODEL, cfg, split_text(tiny_text), tmp_path, resume=True, progress=False)
    assert [r.step for r in res.history] == [0, 10, 20, 30]


def test_damaged_and_foreign_checkpoints(tmp_path, tiny_text):
    train(TINY_MODEL, tcfg(max_steps=10), split_text(tiny_text), tmp_path, progress=False)
    good = (tmp_path / "model_scratch_best.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    for name in ("trunc.pt", "random.pt"):
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    other = ModelConfig(**{**TINY_MODEL.__dict__, "vocab_size": 65, "n_embd": 64})
    with pytest.raises(CheckpointError, match="different model"):
        load_model(tmp_path / "model_scratch_best.pt", expect=other)
    # attn_dropout unset acts as the dropout it follows: naming that value still matches
    saved = load_model(tmp_path / "model_scratch_best.pt")[0].config
    assert saved.attn_dropout is None
    load_model(
        tmp_path / "model_scratch_best.pt", expect=replace(saved, attn_dropout=saved.dropout)
    )
    with pytest.raises(CheckpointError, match="attn_dropout"):
        load_model(tmp_path / "model_scratch_best.pt", expect=replace(saved, attn_dropout=0.3))


def test_a_checkpoint_from_before_qk_norm_type_loads_as_rms(tmp_path):
    from nanobard.data.tokenizer import CharTokenizer
    from nanobard.model.gpt import GPT

    path = tmp_path / "old.pt"
    qk = replace(TINY_MODEL, qk_norm=True, pos_encoding="rotary")
    checkpoint.save_checkpoint(path, GPT(qk), CharTokenizer.from_text("abcdefgh"))
    obj = read_checkpoint(path)
    old = json.loads(obj["model_config"])
    del old["qk_norm_type"]  # written before the option existed
    obj["model_config"] = json.dumps(old)
    checkpoint.atomic_save(obj, path)
    assert load_model(path, expect=qk)[0].config.qk_norm_type == "rms"
    with pytest.raises(CheckpointError, match="qk_norm_type"):  # e.g. fast's LayerNorm now
        load_model(path, expect=replace(qk, qk_norm_type="layer"))
    # without QK-norm the kind does nothing, so it is not compared
    plain = replace(TINY_MODEL, pos_encoding="rotary")
    checkpoint.save_checkpoint(path, GPT(plain), CharTokenizer.from_text("abcdefgh"))
    load_model(path, expect=replace(plain, qk_norm_type="layer"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_that_runs_code_on_load_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "nanobard-scratch-v1", "model": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0},
        {"lr": -1e-3},
        {"batch_size": 0},
        {"max_steps": None},
        {"patience": 0},
        {"optimizer": "sgd"},
    ],
)
def test_invalid_train_configs(kw):
    with pytest.raises(ConfigError):
        tcfg(**kw)


def test_a_resumed_time_budget_fills_what_the_first_session_left(tmp_path, tiny_text, fake_clock):
    """Interrupted at step 20 of a 3 s budget, then resumed: the second session calibrates on its
    own steps but sizes the run's horizon (a global step), so the two sessions together end when
    the budget is spent, not after a second session's worth of steps counted from 0."""
    import os
    import signal

    from nanobard.train.loop import TrainingInterrupted

    def interrupt_at_20(model, row):
        if row.step == 20:
            os.kill(os.getpid(), signal.SIGINT)  # the loop stops after the step, resumably
        return row

    cfg = tcfg(max_steps=None, max_time=3.0, eval_interval=10)
    split = split_text(tiny_text)
    with pytest.raises(TrainingInterrupted):
        train(TINY_MODEL, cfg, split, tmp_path, progress=False, on_eval=[interrupt_at_20])
    first = json.loads(
        torch.load(tmp_path / "ckpt_last.pt", weights_only=True)["train_state"]["counters"]
    )
    assert first["step"] == 21
    res = train(TINY_MODEL, cfg, split, tmp_path, resume=True, progress=False)
    assert res.stopped == "time"
    # every fake step is 1/16 s and evaluations are free: 3 s hold 48 steps in all
    assert res.steps == pytest.approx(48, abs=1) and res.elapsed_s == pytest.approx(3.0, abs=STEP_S)


def test_resume_refuses_a_changed_corpus_unless_asked(tmp_path, tiny_text):
    """The checkpoint knows its text: the same characters with the lines reordered is another
    text (and another validation split), refused in one line; --allow-new-corpus goes on."""
    split = split_text(tiny_text)
    train(TINY_MODEL, tcfg(max_steps=10), split, tmp_path, progress=False)
    ckpt = read_checkpoint(tmp_path / "ckpt_last.pt")
    assert json.loads(ckpt["corpus"]) == {"name": "text", "sha256": split.sha256,
                                          "train_chars": len(split.train),
                                          "val_chars": len(split.val)}  # fmt: skip
    lines = tiny_text.splitlines(keepends=True)
    changed = split_text("".join(lines[1::2] + lines[::2]))
    assert sorted(changed.train + changed.val) == sorted(tiny_text)  # same characters
    with pytest.raises(CorpusChanged) as e:
        train(TINY_MODEL, tcfg(max_steps=20), changed, tmp_path, resume=True, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("the corpus changed since this run began: ")
    assert f"ckpt_last.pt was made on text (SHA-256 {split.sha256[:12]}, 18,000 training" in msg
    assert f"the text given now is text (SHA-256 {changed.sha256[:12]}," in msg
    assert "start afresh with another --out, or pass --allow-new-corpus with --resume" in msg
    res = train(TINY_MODEL, tcfg(max_steps=20), changed, tmp_path, resume=True, progress=False,
                allow_new_corpus=True)  # fmt: skip
    assert res.steps == 20
    assert json.loads(read_checkpoint(tmp_path / "ckpt_last.pt")["corpus"])["sha256"] == (
        changed.sha256
    )
    # other characters cannot continue at all: the ids would mean other characters
    with pytest.raises(CorpusChanged, match="other characters"):
        train(TINY_MODEL, tcfg(max_steps=30), split_text(tiny_text.upper()), tmp_path,
              resume=True, progress=False, allow_new_corpus=True)  # fmt: skip


@pytest.mark.parametrize(
    "error, asked",
    [
        (RuntimeError(CPU_OOM), "64.0 GiB"),
        (
            MemoryError("Unable to allocate 8.00 GiB for an array with shape (1073741824,)"),
            "8.0 GiB",
        ),
        (
            torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a "
                "total capacity of 79.15 GiB"
            ),
            "2.5 GiB",
        ),  # fmt: skip
    ],
)
def test_out_of_memory_is_one_line_with_the_flags_that_lower_it(
    tmp_path, tiny_text, monkeypatch, error, asked
):
    from nanobard.train import loop

    def refuse(*a, **k):
        raise error

    monkeypatch.setattr(loop, "train_step", refuse)
    with pytest.raises(OutOfMemory) as e:
        train(TINY_MODEL, tcfg(max_steps=10), split_text(tiny_text), tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"out of memory: an allocation of {asked} on ")
    assert msg.endswith(
        f"lower --batch-size (now 8; raise --grad-accum, now 1, to keep the tokens per step), "
        f"--block-size (now {TINY_MODEL.block_size}), --n-embd (now 32) or --n-layer (now 2)"
    )
    assert not (tmp_path / ".nanobard.lock").read_text()  # the folder is free again


def test_an_interrupted_run_says_how_its_caller_continues():
    from nanobard.train.loop import TrainingInterrupted

    e = TrainingInterrupted("stopped by signal SIGINT at step 648; checkpoint written to x.pt")
    assert str(e).endswith("x.pt; continue with the same command plus --resume")
    study = e.resumed_by("run the same nanobard run command again to continue")
    assert str(study) == (
        "stopped by signal SIGINT at step 648; checkpoint written to x.pt; run the same "
        "nanobard run command again to continue"
    )
    assert study.exit_code == 130


def test_compile_trains_through_the_compiled_module(tmp_path, tiny_text, monkeypatch):
    """`--compile` wraps the model in torch's OptimizedModule, which refuses ``len()`` (and so
    ``bool()``): the step must take it as given. Dynamo's eager backend keeps the test quick;
    the wrapper and the tracing are the same as with inductor."""
    compiled = []
    real = torch.compile

    def eager_compile(model, **kw):
        compiled.append(model)
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    res = train(TINY_MODEL, tcfg(max_steps=20, compile=True), split_text(tiny_text), tmp_path)
    assert len(compiled) == 1 and res.steps == 20
    assert res.best_val_loss < res.first_val_loss


def test_a_resume_with_other_settings_says_which_in_one_warning(tmp_path, tiny_text, caplog):
    """--resume takes its settings from the command line: a flag left out (here the schedule)
    is named, with what the run had before."""
    split = split_text(tiny_text)
    train(TINY_MODEL, tcfg(max_steps=10, lr_schedule="wsd"), split, tmp_path, progress=False)
    with caplog.at_level(logging.WARNING, logger="nanobard"):
        train(TINY_MODEL, tcfg(max_steps=20), split, tmp_path, resume=True, progress=False)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "\n" not in said[0], said
    assert "--lr-schedule wsd -> cosine" in said[0] and "--max-steps 10 -> 20" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nanobard"):  # the same again: nothing to say
        train(TINY_MODEL, tcfg(max_steps=20), split, tmp_path, resume=True, progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
