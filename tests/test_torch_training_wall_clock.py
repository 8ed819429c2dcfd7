"""torch_reference.training.Trainer with a wall-clock budget, as the JAX trainer: stop at the budget,
events at fractions of the training seconds the run will have (set-up and events excluded), learning
rates decaying on that clock and reset at an upsample, upsamples never bunched up.

No timed assertions: the budget clock is moved by hand (``trainer.pos.elapsed``) or the trainer's
``time`` is a fake clock that advances a fixed tick per reading.
"""

from __future__ import annotations

import math

from tensorf_common.schedule import Schedule

from clock_helpers import FakeClock
from test_torch_training import _cfg, _trainer, sphere_data


def _events(t, *kinds):
    return [e for e in t.events if e["event"] in kinds]


def test_training_stops_at_the_budget():
    # a budget already spent when training starts: no step runs, whatever n_iters says
    t = _trainer(_cfg(minutes=0.5, n_iters=100_000))
    t.pos.elapsed = 31.0
    t.run()
    assert t.pos.step == 0 and t.history == []
    # a small budget stops a run that n_iters alone would keep going for a very long time
    t = _trainer(_cfg(minutes=0.01, n_iters=1_000_000, log_every=5), sphere_data(2048)).run()
    assert 0 < t.pos.step < 1_000_000 and t.history[-1].step == t.pos.step
    assert t.pos.elapsed >= 0.6 and t.pos.train_seconds <= t.pos.elapsed


def test_set_up_does_not_bunch_the_events():
    """A set-up that took 40 of the 60 s does not make the events fall due at once: the fractions are
    of the training seconds the run will have (about the 20 s left), as in the JAX trainer."""
    cfg = _cfg(minutes=1.0, n_iters=4, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55, 0.99),
               n_voxel_init=8**3, n_voxel_final=12**3, lr_decay_target_ratio=0.1, log_every=1)
    t = _trainer(cfg, sphere_data(2048))
    t.pos.elapsed = 40.0
    t.run()
    assert not _events(t, "alpha_mask", "upsample")
    assert [h.step for h in t.history] == [1, 2, 3, 4]
    # the rates decay from the first step on, over the ~20 s left (four small steps take far less)
    assert all(h.lr_grid > 0.8 * cfg.train.lr_init for h in t.history)


def test_time_fraction_events_and_learning_rates_follow_the_training_clock(monkeypatch):
    import torch_reference.training as training

    cfg = _cfg(minutes=1.0, n_iters=100_000, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55, 0.99),
               n_voxel_init=8**3, n_voxel_final=12**3, lr_decay_target_ratio=0.1, log_every=1)
    clock = FakeClock(tick=0.25)
    monkeypatch.setattr(training, "time", clock)
    t = _trainer(cfg, sphere_data(2048))
    t.pos.elapsed = 30.0  # set-up took 30 s: the schedule spans the training seconds left
    t.run()
    events = _events(t, "alpha_mask", "upsample")
    assert [e["event"] for e in events] == ["alpha_mask", "upsample", "upsample"]
    for e, frac in zip(events, (0.5, 0.55, 0.99)):
        # due once the training seconds reach the fraction of (training seconds + budget left)
        span = e["train_seconds"] + (60.0 - e["elapsed"])
        assert frac * span <= e["train_seconds"] + 0.01 < frac * span + 1.0, (e, frac * span)
    # events cost budget, not training time: the budget clock ran ahead of the training clock
    assert t.pos.elapsed - t.pos.train_seconds > 30.0
    # the upsamples are at least min_upsample_gap of the budget apart in training seconds
    assert events[2]["train_seconds"] - events[1]["train_seconds"] >= Schedule(cfg.train).min_upsample_gap_seconds
    # before the first upsample the rate decays by 0.1 over the schedule's span; right after it, it restarts
    before = [h for h in t.history if h.step <= events[1]["step"]]
    h = before[-1]
    span = h.train_seconds + (60.0 - h.elapsed)
    assert math.isclose(h.lr_grid, cfg.train.lr_init * 0.1 ** (h.train_seconds / span), rel_tol=0.05)
    after = [h for h in t.history if h.step > events[1]["step"]]
    assert after[0].lr_grid > 0.95 * cfg.train.lr_init


def test_iteration_schedule_is_unchanged_by_the_clock():
    """With schedule_unit='iter' the budget only stops training; events stay at their iterations."""
    t = _trainer(_cfg(minutes=10.0, n_iters=6, alpha_mask_at=(2,), upsample_at=(3,), n_voxel_final=12**3)).run()
    steps = {e["event"]: e["step"] for e in _events(t, "alpha_mask", "upsample")}
    assert steps == {"alpha_mask": 3, "upsample": 4}  # after the steps of iterations 2 and 3
    assert t.history[-1].step == 6
