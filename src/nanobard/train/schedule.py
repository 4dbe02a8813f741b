"""How long a from-scratch run trains and at what learning rate: the step budget a config allows,
the wall-time clock that sizes a time-only budget from the speed of the first steps (and refines it
at every evaluation after), and the warmup + cosine schedule over that horizon."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from nanobard.config import TrainConfig

logger = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig, horizon: int | None, time_fraction: float) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr`` over ``horizon`` steps.

    With only a time budget (no step horizon), the cosine follows the fraction of time used.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if horizon is not None:
        span = max(1, horizon - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
    else:
        progress = min(1.0, time_fraction)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def step_budget(cfg: TrainConfig, n_train_tokens: int, block_size: int) -> tuple[int | None, str]:
    """The step count the budget allows (None when only time limits it) and what sets it."""
    options = []
    if cfg.max_steps is not None:
        options.append((cfg.max_steps, "steps"))
    if cfg.epochs is not None:
        per_step = cfg.batch_size * cfg.grad_accum * block_size
        options.append((max(1, math.ceil(cfg.epochs * n_train_tokens / per_step)), "epochs"))
    if not options:
        return None, "time"
    return min(options)


# why a run stops at the top of a step: a budget step_budget names, the clock, or a signal
STOP_REASONS = (None, "steps", "epochs", "time", "interrupted")
CALIBRATION_STEPS = (3, 13)  # time steps 3..13 of a session (the first ones are slower)


@dataclass
class Clock:
    """Wall time of the run across sessions, and the step timings that size a time-only budget."""

    before_s: float = 0.0  # elapsed in earlier sessions (resume)
    t0: float = field(default_factory=time.perf_counter)
    stamps: list[float] = field(default_factory=list)
    eval_s: float = 0.0  # the last evaluation's duration
    sized_at: tuple[int, float] = (0, 0.0)  # (step, elapsed) when the horizon was first sized
    evals_since_sized_s: float = 0.0  # time spent evaluating since then

    def elapsed(self) -> float:
        return self.before_s + time.perf_counter() - self.t0

    def size_steps(self, step: int, cfg: TrainConfig) -> int | None:
        """With only a time budget: once a few steps are timed, the step count that fills the
        budget, evaluations included (None until then). The LR schedule stays a function of the
        step (the horizon is saved in RunState), so a resumed run follows the same schedule."""
        self.stamps.append(time.perf_counter())
        first, last = CALIBRATION_STEPS
        if len(self.stamps) != last + 1:
            return None
        per_step = (self.stamps[last] - self.stamps[first]) / (last - first)
        self.sized_at = (step, self.elapsed())
        return self._fit(step, per_step, cfg, "measured")

    def refine(self, step: int, cfg: TrainConfig, eval_s: float) -> int:
        """At each evaluation after sizing: the horizon again, from the mean step time since sizing
        and the last evaluation's real cost. The first steps and the step-0 evaluation run slower,
        so the first estimate leaves time unused; and a machine that is busy with something else for
        a while (a learner's browser, a second job) slows some steps, so a horizon fitted once to
        that stretch would stop the run minutes early (measured: 395 s of a 570 s budget) -- or,
        after a fast stretch, overrun it. Re-fitting at every evaluation keeps both in check."""
        sized_step, sized_elapsed = self.sized_at
        self.evals_since_sized_s += eval_s
        per_step = (self.elapsed() - self.evals_since_sized_s - sized_elapsed) / max(
            1, step - sized_step
        )
        self.eval_s = eval_s
        return self._fit(step, per_step, cfg, "refined")

    def _fit(self, step: int, per_step: float, cfg: TrainConfig, how: str) -> int:
        left = max(0.0, cfg.max_time - self.elapsed())
        horizon = step + int(left / (per_step + self.eval_s / cfg.eval_interval))
        logger.info(
            "%s %.1f ms/step: %d steps fit the %.0f s budget",
            how,
            per_step * 1e3,
            horizon,
            cfg.max_time,
        )
        return horizon
