"""The wall-time budget both tracks use (calibrate, size, refine) and the cosine, on a fake clock
(no real waiting)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from nanobard.config import ConfigError, TrainConfig
from nanobard.hf.trainer import lr_factor
from nanobard.train import schedule
from nanobard.train.schedule import TimeBudget, cosine, lr_at


@pytest.fixture
def fake_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(schedule, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def _sized(
    fake_time, budget_s: float, eval_interval: int, step_s: float
) -> tuple[TimeBudget, int, int]:
    """Run steps of ``step_s`` until the budget sizes itself: (budget, horizon, steps done)."""
    # (its default reads the real clock)
    budget = TimeBudget(budget_s, eval_interval, t0=fake_time[0])
    step = 0
    while True:
        fake_time[0] += step_s
        step += 1
        if (horizon := budget.observe(step)) is not None:
            return budget, horizon, step


def test_calibration_times_enough_steps_and_enough_of_the_budget(fake_time):
    # fast steps (10 ms): at least MIN_FRACTION of the budget (1 s of 100 s) is timed,
    # not just 2 steps
    budget, horizon, steps = _sized(fake_time, 100.0, 1000, 0.01)
    timed_s = (steps - TimeBudget.WARMUP_STEPS) * 0.01
    assert timed_s >= TimeBudget.MIN_FRACTION * 100.0 and steps == pytest.approx(102, abs=1)
    assert horizon == pytest.approx(10_000, abs=2)  # 100 s at 10 ms a step
    # slow steps (4 s, a 135M model fine-tuned on a CPU): sized after the first two timed steps
    budget, horizon, steps = _sized(fake_time, 75.0, 20, 4.0)
    assert steps == TimeBudget.WARMUP_STEPS + TimeBudget.MIN_TIMED
    assert horizon == int(75.0 / 4.0)


def test_sizing_counts_the_evaluations_cost(fake_time):
    budget = TimeBudget(100.0, 10, t0=fake_time[0])
    # the evaluation before the first step took 1 s: 0.1 s per step over 10 steps
    budget.eval_s = 1.0
    fake_time[0] += 1.0
    horizon = None
    for step in range(1, 200):
        fake_time[0] += 0.1
        horizon = budget.observe(step) or horizon
    sized_step, sized_elapsed = budget.sized_at
    per_step = 0.1 + 1.0 / 10  # each step's own 0.1 s and its share of an evaluation every 10 steps
    # the final evaluation (1 s) is kept out of what is left
    assert horizon == sized_step + int((100.0 - sized_elapsed - 1.0) / per_step)
    # without the evaluations: 2x as many
    assert horizon < sized_step + (100.0 - sized_elapsed) / 0.1 * 0.6


def test_the_horizon_follows_the_speed_at_every_evaluation(fake_time):
    budget, horizon, step = _sized(fake_time, 100.0, 100, 0.1)  # 10 steps/s, nothing evaluated yet
    assert horizon == pytest.approx(1000, abs=2)
    # a busy stretch: the next steps at 0.3 s, then an evaluation of 1 s
    n = 100 - step
    fake_time[0] += n * 0.3 + 1.0
    step += n
    slow = budget.refine(step, eval_s=1.0)
    assert slow < horizon - 300  # fitted to the slow stretch
    # the machine is free again: 200 steps at 0.1 s and two more evaluations
    for _ in range(2):
        fake_time[0] += 100 * 0.1 + 1.0
        step += 100
        later = budget.refine(step, eval_s=1.0)
    assert later > slow + 100  # re-fitted: the time the slow stretch would have left unused is used
    # what the new horizon promises fits the budget:
    # its remaining steps and evaluations at the mean speed
    mean_step = (fake_time[0] - budget.sized_at[1] - 3.0) / (step - budget.sized_at[0])
    left = 100.0 - fake_time[0] - 1.0  # less the final evaluation
    assert (later - step) * (mean_step + 1.0 / 100) == pytest.approx(left, abs=mean_step + 0.01)


def test_slow_steps_are_followed_at_every_step_so_the_budget_is_used(fake_time, caplog):
    """Fine-tuning's steps take seconds and a run has one or two evaluations: the first timed
    steps (slower) size the horizon, and following each step's end re-fits it, so the run fills
    the budget and its final evaluation ends within a step of it."""
    caplog.set_level(logging.DEBUG, logger="nanobard.train.schedule")
    budget = TimeBudget(100.0, 20, t0=fake_time[0])
    budget.eval_s = 5.0  # the evaluation before the first step
    fake_time[0] += 5.0
    step, first, horizon = 0, None, None
    while horizon is None or step < horizon:
        fake_time[0] += 5.0 if step < 3 else 4.0  # the first three steps slower
        step += 1
        if (sized := budget.observe(step)) is not None:
            first = horizon = sized
            assert budget.follow(step) is None  # nothing to follow at the sizing step
        elif horizon is not None:
            horizon = budget.follow(step)
    # sized on the slow steps: 75 s left after 20 s and the final evaluation's 5 s
    assert first == 3 + int((100.0 - 20.0 - 5.0) / (5.0 + 5.0 / 20))
    assert horizon > first  # followed: the faster steps fit more
    end = fake_time[0] + 5.0  # the final evaluation
    assert 100.0 - 4.0 - 5.0 / 20 * step <= end <= 100.0  # within a step (and evaluations' share)
    followed = [r for r in caplog.records if r.getMessage().startswith("followed")]
    assert followed and all(r.levelno == logging.DEBUG for r in followed)  # not an INFO per step


def test_a_refined_horizon_never_ends_before_the_current_step(fake_time):
    budget, _, _ = _sized(fake_time, 10.0, 50, 0.1)
    fake_time[0] += 20.0  # far past the budget
    assert budget.refine(64, eval_s=0.5) == 64


def test_wsd_holds_the_peak_then_decays_linearly_over_the_cooldown():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, lr_schedule="wsd")
    assert cfg.cooldown_frac == 0.4  # decays over the last 40 of the 100 steps after warmup
    assert [lr_at(s, cfg, 110, 0.0) for s in (10, 40, 70)] == [1.0, 1.0, 1.0]
    assert lr_at(90, cfg, 110, 0.0) == pytest.approx(0.55)  # halfway down the cooldown
    assert lr_at(110, cfg, 110, 0.0) == lr_at(500, cfg, 110, 0.0) == pytest.approx(0.1)
    assert lr_at(5, cfg, 110, 0.0) == pytest.approx(1.0 * 6 / 11)  # warmup as the cosine's
    timed = TrainConfig(lr=1.0, min_lr=0.0, max_steps=None, max_time=60.0, lr_schedule="wsd",
                        cooldown_frac=0.5, warmup_steps=0)  # fmt: skip
    assert lr_at(0, timed, None, 0.75) == pytest.approx(0.5)  # by the fraction of time used
    with pytest.raises(ConfigError, match="cooldown_frac"):
        TrainConfig(lr_schedule="wsd", cooldown_frac=0.0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")  # type: ignore[arg-type]


def test_both_tracks_decay_along_the_same_cosine():
    assert cosine(0.0) == 1.0 and cosine(0.5) == pytest.approx(0.5) and cosine(1.0) == 0.0
    assert cosine(2.0) == 0.0 and cosine(-1.0) == 1.0  # clamped
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110)
    for step in (10, 35, 60, 85, 110, 200):  # after warmup the two schedules are the same curve
        assert lr_at(step, cfg, 110, 0.0) == pytest.approx(lr_factor(step, 10, 110))
    assert lr_factor(5, 10, 110) == 0.5  # the Trainer's warmup starts from 0


def test_the_trainers_callback_sizes_a_resumed_run_in_global_steps(
    fake_time, monkeypatch, tmp_path
):
    """The fine-tuning track's budget on a run resumed at global step 100: it calibrates on the
    session's own steps, and its horizon (what the Trainer stops at and the cosine runs to) is a
    global step that fills what is left of the budget."""
    from nanobard.hf import trainer as ht

    monkeypatch.setattr(ht, "time", schedule.time)  # the same fake clock
    budget = TimeBudget(10.0, 1000)
    cb = ht.metrics_callback(tmp_path / "m.jsonl", 1, fake_time[0], None, budget)
    state = SimpleNamespace(global_step=100, is_world_process_zero=True)
    control = SimpleNamespace(should_training_stop=False, should_evaluate=False, should_save=False)
    cb.on_train_begin(None, state, control)
    while not control.should_training_stop:
        cb.on_step_begin(None, state, control)
        fake_time[0] += 1.0  # one second a step
        state.global_step += 1
        cb.on_step_end(None, state, control)
    assert budget.horizon == state.global_step == 110  # 10 steps of 1 s after the resume


def test_the_trainers_callback_follows_steps_that_speed_up_after_sizing(
    fake_time, monkeypatch, tmp_path
):
    """Fine-tuning on a CPU: the first steps run slower (2 s) than the rest (1 s). The callback
    re-fits the horizon at every step end, so the run fills its 20 s budget (17 steps) instead of
    stopping at the 10 steps the slow start sized."""
    from nanobard.hf import trainer as ht

    monkeypatch.setattr(ht, "time", schedule.time)
    budget = TimeBudget(20.0, 1000)
    cb = ht.metrics_callback(tmp_path / "m.jsonl", 1, fake_time[0], None, budget)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    control = SimpleNamespace(should_training_stop=False, should_evaluate=False, should_save=False)
    cb.on_train_begin(None, state, control)
    start, sizes = fake_time[0], []
    while not control.should_training_stop:
        cb.on_step_begin(None, state, control)
        fake_time[0] += 2.0 if state.global_step < 3 else 1.0
        state.global_step += 1
        cb.on_step_end(None, state, control)
        sizes.append(budget.horizon)
    assert sizes[2] == 10  # sized on the slow steps: 3 + 14 s left / 2 s
    assert budget.horizon == state.global_step == 17
    assert fake_time[0] - start == pytest.approx(20.0)


class _Ranks:
    """Two torchrun ranks' broadcasts, one after the other: rank 0 records what it sends, the
    other rank gets those values back in the same order."""

    enabled = True

    def __init__(self, replay: list[tuple[int, ...]] | None = None):
        self.sent: list[tuple[int, ...]] = []
        self.replay = None if replay is None else iter(replay)

    def ints_from_main(self, *values: int) -> tuple[int, ...]:
        if self.replay is not None:
            return next(self.replay)
        self.sent.append(values)
        return values


def _finetune_rank(fake_time, tmp_path, ranks, step_s: float) -> tuple[int, list[int | None]]:
    """One rank's Trainer steps of ``step_s`` under a 20 s budget: (steps run, horizon after
    each step)."""
    from nanobard.hf import trainer as ht

    fake_time[0] = 0.0
    budget = TimeBudget(20.0, 1000)
    cb = ht.metrics_callback(tmp_path / "m.jsonl", 1, fake_time[0], None, budget, ranks=ranks)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    control = SimpleNamespace(should_training_stop=False, should_evaluate=False, should_save=False)
    cb.on_train_begin(None, state, control)
    horizons = []
    while not control.should_training_stop:
        cb.on_step_begin(None, state, control)
        fake_time[0] += step_s
        state.global_step += 1
        cb.on_step_end(None, state, control)
        horizons.append(budget.horizon)
    return state.global_step, horizons


def test_fine_tuning_ranks_take_rank_zeros_horizon_and_stop_together(
    fake_time, monkeypatch, tmp_path
):
    """Under torchrun each rank's budget fits its own clock: a rank whose clock ran twice as slow
    would stop at half the steps and leave the other waiting for it forever. The callback takes
    rank 0's horizon (the learning rate's too) and its decision to stop on every rank."""
    from nanobard.hf import trainer as ht

    monkeypatch.setattr(ht, "time", schedule.time)
    main = _Ranks()
    steps0, horizons0 = _finetune_rank(fake_time, tmp_path, main, 1.0)
    steps1, horizons1 = _finetune_rank(fake_time, tmp_path, _Ranks(main.sent), 2.0)
    assert steps0 == 20
    alone = SimpleNamespace(enabled=False)
    assert _finetune_rank(fake_time, tmp_path, alone, 2.0)[0] == 10  # the slower rank's own
    assert (steps1, horizons1) == (steps0, horizons0)
