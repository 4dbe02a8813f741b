"""The wall-time clock that sizes a time-only budget, on a fake clock (no real waiting)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nanobard.config import TrainConfig
from nanobard.train import schedule
from nanobard.train.schedule import CALIBRATION_STEPS, Clock


@pytest.fixture
def fake_time(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(schedule, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def _sized(fake_time, cfg: TrainConfig, step_s: float) -> tuple[Clock, int]:
    clock = Clock(t0=fake_time[0])  # (its default reads the real clock)
    horizon = None
    for step in range(1, CALIBRATION_STEPS[1] + 2):
        fake_time[0] += step_s
        horizon = clock.size_steps(step, cfg) or horizon
    return clock, horizon


def test_the_horizon_follows_the_speed_at_every_evaluation(fake_time):
    cfg = TrainConfig(max_steps=None, max_time=100.0, eval_interval=100)
    clock, horizon = _sized(fake_time, cfg, 0.1)  # 10 steps/s, nothing else evaluated yet
    assert horizon == pytest.approx(1000, abs=2)
    step = 14
    # a busy stretch: the next 86 steps at 0.3 s, then an evaluation of 1 s
    fake_time[0] += 86 * 0.3 + 1.0
    step += 86
    slow = clock.refine(step, cfg, eval_s=1.0)
    assert slow < horizon - 300  # fitted to the slow stretch
    # the machine is free again: 200 steps at 0.1 s and two more evaluations
    for _ in range(2):
        fake_time[0] += 100 * 0.1 + 1.0
        step += 100
        later = clock.refine(step, cfg, eval_s=1.0)
    assert later > slow + 100  # re-fitted: the time the slow stretch would have left unused is used
    # what the new horizon promises fits the budget: its remaining steps and evaluations at the mean speed
    mean_step = (fake_time[0] - clock.sized_at[1] - 3.0) / (step - clock.sized_at[0])
    left = cfg.max_time - fake_time[0]
    assert (later - step) * (mean_step + 1.0 / cfg.eval_interval) == pytest.approx(
        left, abs=mean_step + 0.01
    )


def test_a_refined_horizon_never_ends_before_the_current_step(fake_time):
    cfg = TrainConfig(max_steps=None, max_time=10.0, eval_interval=50)
    clock, _ = _sized(fake_time, cfg, 0.1)
    fake_time[0] += 20.0  # far past the budget
    assert clock.refine(64, cfg, eval_s=0.5) == 64
