"""The training schedule's arithmetic, shared by the JAX trainer and the torch reference.

The official schedule (``train.py``): learning rates that decay exponentially,
``lr = lr_0 * target_ratio ** (units_since_reset / span)``, reset at every upsample; TV weights that
decay by the same factor and are never reset; alpha-mask updates and upsamples at given points, the
mask before the upsample. This module says *when*; the trainers say *how*.

A schedule runs on one of two axes:

* **iterations** (``schedule_unit="iter"``, or ``"fraction"`` without a budget, then fractions of
  ``n_iters``): an event at iteration ``i`` happens after the optimizer step of iteration ``i``, as
  in the official code.
* **seconds of training** (``schedule_unit="fraction"`` with ``train.minutes``): the position is
  the time spent in training steps only. Set-up, compilation, mask updates, ray filtering,
  checkpoints and logging are *not* on this clock, although they count against the wall-clock
  budget. The fractions are of the training seconds the run will have: the training done so far
  plus the budget left (:meth:`Schedule.span`). An expensive event therefore moves the events after
  it by a share of its cost instead of making them all due at once, and the learning rates still
  reach their target ratio when the budget ends, whatever set-up and compilation cost on the
  machine. Two upsamples are never closer than ``train.min_upsample_gap`` of the budget (seconds of
  training), so a long stall cannot bunch them up either.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Optional, Sequence

from .config import TrainConfig


def lr_factor(tc: TrainConfig, decay_span: float) -> float:
    """Per-unit decay factor ``target_ratio ** (1 / span)`` (official ``lr_factor``)."""
    return tc.lr_decay_target_ratio ** (1.0 / decay_span)


def decay_span_iters(tc: TrainConfig) -> int:
    """``lr_decay_iters``, or ``n_iters`` when it is -1 (official)."""
    return tc.lr_decay_iters if tc.lr_decay_iters > 0 else tc.n_iters


def learning_rates(tc: TrainConfig, units_since_reset: float, span: float) -> tuple[float, float]:
    """(lr_grid, lr_basis) of a step ``units_since_reset`` after the last reset."""
    scale = lr_factor(tc, span) ** units_since_reset
    return tc.lr_init * scale, tc.lr_basis * scale


@dataclasses.dataclass
class SchedulePosition:
    """Where a run stands on its schedule; both trainers save it in their checkpoints."""

    step: int = 0
    """Optimizer steps done."""
    elapsed: float = 0.0
    """The budget clock: wall seconds of the run so far (set-up, compilation and events count)."""
    train_seconds: float = 0.0
    """The schedule clock: seconds spent in training steps only."""
    mask_done: int = 0
    upsample_done: int = 0
    lr_reset_at: float = 0.0
    """Schedule position (iterations or training seconds) of the last learning-rate reset."""
    last_upsample_at: Optional[float] = None
    """Schedule position of the last upsample (None before the first)."""
    l1_weight: float = 0.0
    """Weight of the density L1 term (switched at the first mask update)."""


class Schedule:
    """The schedule of one training config (pure arithmetic over a :class:`SchedulePosition`)."""

    def __init__(self, tc: TrainConfig):
        self.tc = tc

    # ------------------------------------------------------------------ axis
    @property
    def budget_seconds(self) -> Optional[float]:
        return None if self.tc.minutes is None else 60.0 * self.tc.minutes

    def seconds_left(self, p: SchedulePosition) -> Optional[float]:
        """Seconds of the wall-clock budget left (None: no budget)."""
        budget = self.budget_seconds
        return None if budget is None else max(budget - p.elapsed, 0.0)

    @property
    def uses_time(self) -> bool:
        """Whether the schedule runs on seconds of training (else on iterations)."""
        return self.tc.schedule_unit == "fraction" and self.tc.minutes is not None

    def position(self, p: SchedulePosition) -> float:
        """Training seconds (time mode) or iterations done."""
        return p.train_seconds if self.uses_time else float(p.step)

    def span(self, p: SchedulePosition) -> float:
        """The length of the schedule: ``lr_decay_iters`` / ``n_iters`` iterations, or (time mode)
        the training seconds the run will have, ``train_seconds + budget left``."""
        if self.uses_time:
            return max(p.train_seconds + self.seconds_left(p), 1e-3)
        return float(decay_span_iters(self.tc))

    # ------------------------------------------------------------------ learning rates
    def learning_rates(self, p: SchedulePosition) -> tuple[float, float]:
        """(lr_grid, lr_basis) for the next step."""
        return learning_rates(self.tc, self.position(p) - p.lr_reset_at, self.span(p))

    def tv_scale(self, p: SchedulePosition) -> float:
        """Multiplier of the TV weights for the next step: decayed every step before use (official:
        ``factor ** (i + 1)`` at iteration i), never reset."""
        unit = 0.0 if self.uses_time else 1.0
        return lr_factor(self.tc, self.span(p)) ** (self.position(p) + unit)

    def loss_weights(self, p: SchedulePosition) -> dict[str, float]:
        """Weights of the regularisers for the next step: ``l1``, ``tv_density``, ``tv_app``, ``ortho``."""
        tv = self.tv_scale(p)
        tc = self.tc
        return {"l1": p.l1_weight, "tv_density": tc.tv_weight_density * tv, "tv_app": tc.tv_weight_app * tv,
                "ortho": tc.ortho_weight}

    # ------------------------------------------------------------------ events
    def event_position(self, point: float, p: SchedulePosition) -> float:
        """Where an event point (``upsample_at`` / ``alpha_mask_at`` entry) falls on the axis."""
        if self.tc.schedule_unit == "iter":
            return float(point)
        if self.uses_time:
            return point * self.span(p)
        return point * self.tc.n_iters

    def _due(self, points: Sequence[float], done: int, p: SchedulePosition) -> bool:
        if done >= len(points):
            return False
        at = self.event_position(points[done], p)
        if self.uses_time:
            return p.train_seconds >= at
        return p.step - 1 >= int(round(at))  # after the optimizer step of iteration `at`

    def mask_due(self, p: SchedulePosition) -> bool:
        """Whether the next alpha-mask update is due (checked after each step, before upsamples)."""
        return p.step > 0 and self._due(self.tc.alpha_mask_at, p.mask_done, p)

    def upsample_due(self, p: SchedulePosition) -> bool:
        """Whether the next upsample is due; in time mode also at least ``min_upsample_gap`` of
        the budget (in training seconds) after the previous one."""
        n = min(len(self.tc.upsample_at), len(self.tc.voxel_schedule()))
        if p.step == 0 or p.upsample_done >= n or not self._due(self.tc.upsample_at, p.upsample_done, p):
            return False
        if self.uses_time and p.last_upsample_at is not None:
            return p.train_seconds - p.last_upsample_at >= self.min_upsample_gap_seconds
        return True

    @property
    def min_upsample_gap_seconds(self) -> float:
        budget = self.budget_seconds or 0.0
        return self.tc.min_upsample_gap * budget

    def note_upsample(self, p: SchedulePosition) -> None:
        """Record an upsample at the current position (and the learning-rate reset it brings)."""
        pos = self.position(p)
        p.upsample_done += 1
        p.last_upsample_at = pos
        if self.tc.lr_upsample_reset:
            p.lr_reset_at = pos

    def note_mask_update(self, p: SchedulePosition) -> None:
        """Record an alpha-mask update; the first switches the L1 weight (official)."""
        if p.mask_done == 0:
            p.l1_weight = self.tc.l1_weight_rest
        p.mask_done += 1

    def done(self, p: SchedulePosition) -> bool:
        """``n_iters`` steps done, or the wall-clock budget spent."""
        if p.step >= self.tc.n_iters:
            return True
        budget = self.budget_seconds
        return budget is not None and p.elapsed >= budget

    def start(self) -> SchedulePosition:
        """The position of a fresh run."""
        return SchedulePosition(l1_weight=self.tc.l1_weight_initial)


def checkpoint_due(tc: TrainConfig, p: SchedulePosition, since: float) -> bool:
    """Every ``checkpoint_every`` steps, and ``checkpoint_minutes`` after ``since`` (the budget
    clock, ``p.elapsed``, at the last checkpoint or the start of the run)."""
    if tc.checkpoint_every and p.step % tc.checkpoint_every == 0:
        return True
    return bool(tc.checkpoint_minutes) and p.elapsed - since >= 60.0 * tc.checkpoint_minutes


class TrainingClock:
    """Moves a position's two clocks by a timer's readings: the budget clock (``elapsed``) always,
    the schedule clock (``train_seconds``) by the time spent in training steps."""

    def __init__(
        self,
        pos: SchedulePosition,
        timer: Callable[[], float],
        agree: Optional[Callable[[tuple[float, float]], tuple[float, ...]]] = None,
    ):
        self.pos, self.timer, self.agree = pos, timer, agree
        """``agree``: with several processes, maps this process's ``(seconds, train_seconds)`` to the
        values every process moves by (process 0's), so that the schedule's decisions agree."""
        self.last = timer()
        self._unagreed = (0.0, 0.0)

    def tick(self, training: bool, agree: bool = True) -> None:
        """Advance the budget clock to now; the schedule clock too if the time since the last tick
        was spent in training steps. With an ``agree`` function the clocks move only at ticks with
        ``agree`` (host syncs, events: every process reaches the same ones); in between they stand
        still and the time is carried."""
        now = self.timer()
        dt = now - self.last
        self.last = now
        seconds, train_seconds = dt, (dt if training else 0.0)
        if self.agree is not None:
            seconds, train_seconds = self._unagreed[0] + seconds, self._unagreed[1] + train_seconds
            self._unagreed = (seconds, train_seconds)
            if not agree:
                return
            seconds, train_seconds = self.agree((seconds, train_seconds))
            self._unagreed = (0.0, 0.0)
        self.pos.elapsed += seconds
        self.pos.train_seconds += train_seconds

    @contextlib.contextmanager
    def overhead(self, sync: Callable[[], None]) -> Iterator[None]:
        """Work that is not training (events, compilation, checkpoints): ``sync`` (waiting for the
        device) lets the steps queued before it finish and count as training; the work itself, up to
        a second ``sync``, counts against the budget only."""
        sync()
        self.tick(training=True)
        try:
            yield
        finally:
            sync()
            self.tick(training=False)


__all__ = [
    "Schedule",
    "SchedulePosition",
    "TrainingClock",
    "decay_span_iters",
    "learning_rates",
    "lr_factor",
]
