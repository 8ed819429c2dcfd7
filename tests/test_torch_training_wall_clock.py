"""torch_reference.training.train with a wall-clock budget (``wall_clock=True``), as the JAX trainer:
stop at the budget, events at fractions of it, learning rates decaying with time, reset at an upsample.

No timed assertions: the clock is moved by starting it in the past (``clock_start``), and the only
bounds used are far from what any machine takes.
"""

from __future__ import annotations

import math
import time

import pytest

from tensorf_common.config import ConfigError, RenderConfig
from torch_reference.training import ArrayRays, train

from test_torch_training import AABB, FIELD, NEAR_FAR, _tc, sphere_rays
from clock_helpers import FakeClock


def _rays(n=2048):
    return ArrayRays(*sphere_rays(n))


def test_budget_is_refused_without_opting_in():
    with pytest.raises(ConfigError, match="wall_clock=True"):
        train(FIELD, RenderConfig(), _tc(minutes=1.0), _rays(), aabb=AABB, near_far=NEAR_FAR)


def test_training_stops_at_the_budget():
    # a budget already spent when training starts: no step runs, whatever n_iters says
    res = train(FIELD, RenderConfig(), _tc(minutes=0.5, n_iters=100_000), _rays(), aabb=AABB, near_far=NEAR_FAR,
                wall_clock=True, clock_start=time.perf_counter() - 31.0)
    assert res.history == []
    # a small budget stops a run that n_iters alone would keep going for a very long time
    res = train(FIELD, RenderConfig(), _tc(minutes=0.01, n_iters=1_000_000, log_every=5), _rays(), aabb=AABB,
                near_far=NEAR_FAR, wall_clock=True)
    assert 0 < res.history[-1]["step"] < 1_000_000
    assert res.history[-1]["elapsed"] >= 0.6 * 0.99


def test_time_fractions_count_from_the_first_step():
    """A set-up that took 40 of the 60 s does not make the events fall due at once: the fractions are
    of the 20 s left when the first step starts (as in the JAX trainer)."""
    tc = _tc(minutes=1.0, n_iters=4, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55, 0.99),
             n_voxel_init=8**3, n_voxel_final=12**3, lr_decay_target_ratio=0.1, log_every=1)
    start = time.perf_counter() - 40.0
    res = train(FIELD, RenderConfig(), tc, _rays(), aabb=AABB, near_far=NEAR_FAR, wall_clock=True, clock_start=start)
    assert not [e for e in res.events if e["event"] in ("alpha_mask", "upsample")]
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]
    # the rates decay from the first step on, over the 20 s left (four small steps take far less)
    assert all(h["lr_grid"] > 0.8 * tc.lr_init for h in res.history)


def test_time_fraction_events_and_learning_rates_follow_the_clock(monkeypatch):
    import torch_reference.training as training

    tc = _tc(minutes=1.0, n_iters=100_000, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55, 0.99),
             n_voxel_init=8**3, n_voxel_final=12**3, lr_decay_target_ratio=0.1, log_every=1)
    clock = FakeClock(tick=0.25)
    monkeypatch.setattr(training, "time", clock)
    start = clock.perf_counter() - 30.0  # set-up took 30 s: the schedule spans the 30 s left
    res = train(FIELD, RenderConfig(), tc, _rays(), aabb=AABB, near_far=NEAR_FAR, wall_clock=True, clock_start=start)
    events = [e for e in res.events if e["event"] in ("alpha_mask", "upsample")]
    assert [e["event"] for e in events] == ["alpha_mask", "upsample", "upsample"]
    t0 = 30.0
    for e, frac in zip(events, (0.5, 0.55, 0.99)):
        due = t0 + frac * (60.0 - t0)
        assert due <= e["elapsed"] < due + 3.0, (e, due)
    # before the first upsample the rate decays by 0.1 over the 30 s left; right after it, it restarts
    before = [h for h in res.history if h["elapsed"] < events[1]["elapsed"]]
    h = before[-1]
    assert math.isclose(h["lr_grid"], tc.lr_init * 0.1 ** ((h["elapsed"] - t0) / 30.0), rel_tol=0.1)
    after = [h for h in res.history if h["elapsed"] > events[1]["elapsed"]]
    assert after[0]["lr_grid"] > 0.8 * tc.lr_init


def test_iteration_schedule_is_unchanged_by_the_clock():
    """With schedule_unit='iter' the budget only stops training; events stay at their iterations."""
    tc = _tc(minutes=10.0, n_iters=6, alpha_mask_at=(2,), upsample_at=(3,), n_voxel_final=12**3)
    res = train(FIELD, RenderConfig(), tc, _rays(), aabb=AABB, near_far=NEAR_FAR, wall_clock=True)
    steps = {e["event"]: e["step"] for e in res.events if e["event"] in ("alpha_mask", "upsample")}
    assert steps == {"alpha_mask": 2, "upsample": 3}
    assert res.history[-1]["step"] == 6
