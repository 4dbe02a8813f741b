"""How long a run trains and at what learning rate: the step budget a config allows, the wall-time
budget that sizes a time-only run's steps from the speed of its first steps (and refines them at
every evaluation after; fine-tuning, at every step), and the warmup + cosine schedule over that
horizon (or, from scratch, warmup-stable-decay). The from-scratch loop and the fine-tuning Trainer
(hf/trainer.py) share the time budget and the cosine."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from nanobard.config import TrainConfig

logger = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig, horizon: int | None, time_fraction: float) -> float:
    """Linear warmup to ``lr`` then decay to ``min_lr`` over ``horizon`` steps: a cosine, or
    (``lr_schedule="wsd"``) ``lr`` held until the last ``cooldown_frac`` of the run and a linear
    decay over it.

    With only a time budget (no step horizon), the decay follows the fraction of time used.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if horizon is not None:
        span = max(1, horizon - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
    else:
        progress = min(1.0, time_fraction)
    if cfg.lr_schedule == "wsd":
        factor = min(1.0, (1.0 - progress) / cfg.cooldown_frac)
    else:
        factor = cosine(progress)
    return cfg.min_lr + factor * (cfg.lr - cfg.min_lr)


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


def cosine(progress: float) -> float:
    """Half a cosine from 1 (progress 0) down to 0 (progress 1 and after): the decay of both
    tracks' learning rates (the from-scratch one to ``min_lr``, the Trainer's to 0)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


@dataclass
class TimeBudget:
    """A wall-time budget in seconds, one rule for both tracks (the from-scratch loop and the
    Hugging Face Trainer):

    1. **calibrate**: time the steps after the first ``WARMUP_STEPS`` (slower: allocations, lazy
       initialisation) until at least ``MIN_TIMED`` steps are timed and they cover at least
       ``MIN_FRACTION`` of the budget (tiny steps are then timed well, slow ones sized early);
    2. **size** (``observe``): the step count that fills what is left, each evaluation's measured
       cost (``eval_s`` every ``eval_interval`` steps) included;
    3. **refine** at each evaluation after sizing: the same from the mean step time since sizing
       and the evaluations' real cost. The first steps run slower, so a first estimate leaves time
       unused; a machine busy with something else for a while slows some steps, so a horizon fitted
       once to that stretch would stop the run early (measured: 395 s of a 570 s budget) or, after
       a fast stretch, overrun it;
    4. **follow** (``follow``, the fine-tuning track): the same at the end of every step, for
       steps of seconds, where a run has one or two evaluations.

    Each fit keeps the final evaluation (both tracks evaluate and save when the budget ends) out
    of the time left.

    Every ``step`` here is the run's global step count and the horizon a global step: a resumed
    session (``start_step``: the steps done before it, ``before_s``: the time they took) is
    calibrated on its own steps, and its horizon is what the whole run can reach in the budget.
    The cosine schedule runs over that horizon (RunState.horizon keeps it across sessions).
    """

    seconds: float
    eval_interval: int
    before_s: float = 0.0
    start_step: int = 0  # steps done in earlier sessions (resume)
    t0: float = field(default_factory=time.perf_counter)
    stamps: list[float] = field(default_factory=list)  # step ends since calibration began
    eval_s: float = 0.0  # the last evaluation's duration
    horizon: int | None = None  # None until sized
    sized_at: tuple[int, float] = (0, 0.0)  # (step, elapsed) when the horizon was first sized
    evals_since_sized_s: float = 0.0  # time spent evaluating since then
    WARMUP_STEPS = 1
    MIN_TIMED = 2
    MIN_FRACTION = 0.01

    def elapsed(self) -> float:
        return self.before_s + time.perf_counter() - self.t0

    @property
    def sized(self) -> bool:
        return self.horizon is not None

    def observe(self, step: int) -> int | None:
        """Called at the end of every step (``step``: the run's steps so far); returns the horizon
        at the step it is first sized, None otherwise."""
        if self.sized or step - self.start_step < self.WARMUP_STEPS:
            return None
        self.stamps.append(time.perf_counter())
        timed, span = len(self.stamps) - 1, self.stamps[-1] - self.stamps[0]
        if timed < self.MIN_TIMED or span < self.MIN_FRACTION * self.seconds:
            return None
        self.sized_at = (step, self.elapsed())
        return self._fit(step, span / timed, "measured")

    def refine(self, step: int, eval_s: float) -> int:
        """At an evaluation after sizing, ``eval_s`` its duration: the horizon again, from the mean
        step time since sizing and the evaluations' real cost."""
        self.evals_since_sized_s += eval_s
        self.eval_s = eval_s
        return self._fit(step, self._step_s_since_sized(step), "refined")

    def follow(self, step: int) -> int | None:
        """At the end of a step after sizing with no evaluation since the last fit: the horizon
        again from the mean step time since sizing. For steps of seconds (a 135M model
        fine-tuned on a CPU, 20 steps and one evaluation at the end) the first timed steps run
        slower than the rest, so a horizon left to them would leave a sixth of the budget unused.
        Logged at DEBUG when it moves (with short steps that is every few steps; the INFO lines
        stay the sizing and the refits). None before sizing or at the sizing step itself."""
        if not self.sized or step <= self.sized_at[0]:
            return None
        per_step = self._step_s_since_sized(step)
        return self._fit(step, per_step, "followed", unless=self.horizon, level=logging.DEBUG)

    def _step_s_since_sized(self, step: int) -> float:
        sized_step, sized_elapsed = self.sized_at
        spent = self.elapsed() - self.evals_since_sized_s - sized_elapsed
        return spent / max(1, step - sized_step)

    def _fit(
        self,
        step: int,
        per_step: float,
        how: str,
        unless: int | None = -1,
        level: int = logging.INFO,
    ) -> int:
        """The horizon from ``per_step``, logged at ``level`` unless it is ``unless`` (the
        horizon before). The last evaluation (both tracks evaluate and save when the budget
        ends) is kept out of what is left, and the ones before it are spread over the steps."""
        left = max(0.0, self.seconds - self.elapsed() - self.eval_s)
        self.horizon = step + int(left / (per_step + self.eval_s / self.eval_interval))
        if self.horizon != unless:
            logger.log(level, "%s %.1f ms/step: %d steps fit the %.0f s budget", how,
                       per_step * 1e3, self.horizon, self.seconds)  # fmt: skip
        return self.horizon
