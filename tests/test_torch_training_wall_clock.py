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


def test_time_fractions_schedule_events_and_learning_rates():
    tc = _tc(minutes=1.0, n_iters=4, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55, 0.99),
             n_voxel_init=8**3, n_voxel_final=12**3, lr_decay_target_ratio=0.1, log_every=1)
    # the clock starts 40 s in the past: the mask update (30 s) and the first upsample (33 s) are
    # due after the first step, the second upsample (59.4 s) never is
    start = time.perf_counter() - 40.0
    res = train(FIELD, RenderConfig(), tc, _rays(), aabb=AABB, near_far=NEAR_FAR, wall_clock=True, clock_start=start)
    kinds = [e["event"] for e in res.events if e["event"] in ("alpha_mask", "upsample")]
    assert kinds == ["alpha_mask", "upsample"]
    assert all(e["step"] == 0 for e in res.events if e["event"] in ("alpha_mask", "upsample"))
    assert all(39.0 <= e["elapsed"] < 59.4 for e in res.events if "elapsed" in e)
    lrs = [h["lr_grid"] for h in res.history]
    # step 1 ran at t ~ 40 s: lr = lr_init * 0.1 ** (40 / 60); after the upsample the rate restarts
    assert math.isclose(lrs[0], tc.lr_init * 0.1 ** (res.history[0]["elapsed"] / 60.0), rel_tol=0.03)
    assert lrs[0] < 0.3 * tc.lr_init
    assert all(math.isclose(lr, tc.lr_init, rel_tol=0.03) for lr in lrs[1:])
    assert [h["step"] for h in res.history] == [1, 2, 3, 4]


def test_iteration_schedule_is_unchanged_by_the_clock():
    """With schedule_unit='iter' the budget only stops training; events stay at their iterations."""
    tc = _tc(minutes=10.0, n_iters=6, alpha_mask_at=(2,), upsample_at=(3,), n_voxel_final=12**3)
    res = train(FIELD, RenderConfig(), tc, _rays(), aabb=AABB, near_far=NEAR_FAR, wall_clock=True)
    steps = {e["event"]: e["step"] for e in res.events if e["event"] in ("alpha_mask", "upsample")}
    assert steps == {"alpha_mask": 2, "upsample": 3}
    assert res.history[-1]["step"] == 6
