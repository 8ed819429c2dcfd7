"""tensorf_common.schedule: the official learning rates and event iterations, and the time-fraction
schedule on a clock of training seconds (a simulated run, no trainer: stalls are put in by hand)."""

from __future__ import annotations

import pytest

from tensorf_common.config import ConfigError, TrainConfig
from tensorf_common.schedule import Schedule, decay_span_iters, learning_rates, lr_factor


def test_official_learning_rates():
    tc = TrainConfig()  # lr_init 0.02, lr_basis 1e-3, ratio 0.1, n_iters 30000
    assert decay_span_iters(tc) == 30000 and decay_span_iters(TrainConfig(lr_decay_iters=500)) == 500
    assert lr_factor(tc, 30000) == pytest.approx(0.1 ** (1 / 30000), rel=1e-15)
    g, b = learning_rates(tc, 30000, 30000)
    assert g == pytest.approx(0.002, rel=1e-9) and b == pytest.approx(1e-4, rel=1e-9)
    # after the last official upsample (7000) the rates decay from the reset: ~0.0034 at the end
    assert learning_rates(tc, 23000, 30000)[0] == pytest.approx(0.02 * 0.1 ** (23000 / 30000), rel=1e-9)


def _iterate(sched: Schedule, n_steps: int):
    """Run the iteration schedule: events after each step, the mask before the upsample."""
    p, events = sched.start(), []
    for _ in range(n_steps):
        p.step += 1
        while sched.mask_due(p):
            events.append(("mask", p.step - 1))
            sched.note_mask_update(p)
        while sched.upsample_due(p):
            events.append(("upsample", p.step - 1))
            sched.note_upsample(p)
    return p, events


def test_iteration_events_follow_the_official_iterations():
    tc = TrainConfig(n_iters=40, upsample_at=(10, 20, 30), alpha_mask_at=(10, 25), n_voxel_init=8**3)
    p, events = _iterate(Schedule(tc), 40)
    assert events == [("mask", 10), ("upsample", 10), ("upsample", 20), ("mask", 25), ("upsample", 30)]
    assert p.l1_weight == tc.l1_weight_rest and p.lr_reset_at == 31  # reset: the step after iteration 30
    # the rates of the next step restart from the initial ones after a reset
    assert Schedule(tc).learning_rates(p)[0] == pytest.approx(tc.lr_init * lr_factor(tc, 40) ** (40 - 31))


def test_fractions_without_a_budget_are_of_n_iters():
    tc = TrainConfig(n_iters=100, schedule_unit="fraction", upsample_at=(0.25,), alpha_mask_at=(0.5,), n_voxel_init=8**3)
    _, events = _iterate(Schedule(tc), 100)
    assert events == [("upsample", 25), ("mask", 50)]


def test_tv_weights_decay_every_step_before_use():
    tc = TrainConfig(n_iters=10)
    sched, p = Schedule(tc), Schedule(tc).start()
    assert sched.tv_scale(p) == pytest.approx(lr_factor(tc, 10))  # iteration 0 uses factor ** 1
    p.step = 4
    assert sched.tv_scale(p) == pytest.approx(lr_factor(tc, 10) ** 5)


class SimulatedRun:
    """A time-fraction run: steps of ``step_s`` seconds of training, and stalls (set-up, compilation,
    mask updates) that advance only the wall clock."""

    def __init__(self, tc: TrainConfig, step_s: float = 0.1):
        self.sched, self.step_s = Schedule(tc), step_s
        self.p = self.sched.start()
        self.events: list[tuple[str, float, float]] = []  # (kind, training seconds, wall seconds)

    def stall(self, seconds: float) -> None:
        self.p.elapsed += seconds

    def run(self, stall_at_upsample: float = 0.0, stall_at_mask: float = 0.0) -> "SimulatedRun":
        s, p = self.sched, self.p
        while not s.done(p):
            p.step += 1
            p.elapsed += self.step_s
            p.train_seconds += self.step_s
            while s.mask_due(p):
                self.events.append(("mask", p.train_seconds, p.elapsed))
                s.note_mask_update(p)
                self.stall(stall_at_mask)
            while s.upsample_due(p):
                self.events.append(("upsample", p.train_seconds, p.elapsed))
                s.note_upsample(p)
                self.stall(stall_at_upsample)
        return self


def _time_cfg(**kw) -> TrainConfig:
    base = dict(minutes=1.0, n_iters=10**6, schedule_unit="fraction", upsample_at=(0.1, 0.2, 0.35),
                alpha_mask_at=(0.1, 0.35), n_voxel_init=8**3, n_voxel_final=16**3)
    return TrainConfig(**{**base, **kw})


def test_time_events_fall_at_their_share_of_the_training_seconds():
    run = SimulatedRun(_time_cfg())
    run.stall(20.0)  # set-up and the first compilation: 20 of the 60 s
    run.run()
    train_total = run.p.train_seconds
    assert train_total == pytest.approx(40.0, abs=0.2)
    ups = [t for kind, t, _ in run.events if kind == "upsample"]
    assert ups == pytest.approx([0.1 * 40, 0.2 * 40, 0.35 * 40], abs=0.15)


def test_a_stall_at_an_upsample_cannot_bunch_the_next_ones():
    """The H200 case: the first upsample's mask update and compilation took ~20 s of a 36 s budget,
    and the clock of wall seconds made the other two due at the next two steps."""
    tc = _time_cfg(minutes=0.6)
    run = SimulatedRun(tc, step_s=0.02)
    run.stall(4.0)
    run.run(stall_at_upsample=8.0)
    ups = [(t, w) for kind, t, w in run.events if kind == "upsample"]
    assert len(ups) == 3, run.events
    gap_s = tc.min_upsample_gap * 36.0
    for (t0, w0), (t1, w1) in zip(ups, ups[1:]):
        assert t1 - t0 >= gap_s - 1e-9 and w1 - w0 >= gap_s  # apart on both clocks
    # the first falls at its fraction of the 32 s of training the run then expects
    assert ups[0][0] == pytest.approx(0.1 * 32.0, abs=0.03)


def test_learning_rates_reach_the_target_ratio_at_the_end_of_the_budget():
    tc = _time_cfg(upsample_at=(), alpha_mask_at=())
    run = SimulatedRun(tc)
    run.stall(15.0)
    run.run(stall_at_mask=0.0)
    g, _ = run.sched.learning_rates(run.p)
    assert g == pytest.approx(tc.lr_init * tc.lr_decay_target_ratio, rel=0.01)


def test_min_upsample_gap_is_validated():
    with pytest.raises(ConfigError, match="train.min_upsample_gap"):
        TrainConfig(min_upsample_gap=1.5)


def test_training_clock_counts_overhead_against_the_budget_only():
    from tensorf_common.schedule import SchedulePosition, TrainingClock

    readings = iter([10.0, 11.0, 11.5, 14.0, 14.25, 15.0])
    syncs = []
    p = SchedulePosition(elapsed=5.0)
    clock = TrainingClock(p, lambda: next(readings))  # started at 10.0
    clock.tick(training=True)  # 1 s of steps
    assert (p.elapsed, p.train_seconds) == (6.0, 1.0)
    with clock.overhead(lambda: syncs.append(p.elapsed)):  # the queued steps end at 11.5, the event at 14.0
        pass
    assert (p.elapsed, p.train_seconds) == (9.0, 1.5) and len(syncs) == 2
    clock.tick(training=False)  # 0.25 s of something else
    clock.tick(training=True)
    assert (p.elapsed, p.train_seconds) == (10.0, 2.25)


def test_loss_weights_decay_the_tv_weights_and_follow_the_l1_switch():
    tc = TrainConfig(n_iters=40, upsample_at=(10,), alpha_mask_at=(5,), n_voxel_init=8**3, tv_weight_density=0.1,
                     tv_weight_app=0.01, ortho_weight=0.5, l1_weight_initial=8e-5, l1_weight_rest=4e-5)
    sched = Schedule(tc)
    p = sched.start()
    w0 = sched.loss_weights(p)
    assert w0["l1"] == 8e-5 and w0["ortho"] == 0.5
    assert w0["tv_density"] == pytest.approx(0.1 * sched.tv_scale(p)) and w0["tv_app"] == pytest.approx(0.01 * sched.tv_scale(p))
    p, _ = _iterate(sched, 12)
    w = sched.loss_weights(p)
    assert w["l1"] == 4e-5  # switched at the first mask update
    assert w["tv_density"] < w0["tv_density"] and w["tv_density"] == pytest.approx(0.1 * sched.tv_scale(p))


def test_checkpoint_due_by_steps_and_by_budget_minutes():
    from tensorf_common.schedule import SchedulePosition, checkpoint_due

    every = TrainConfig(checkpoint_every=5, checkpoint_minutes=0)
    assert checkpoint_due(every, SchedulePosition(step=10), since=0.0)
    assert not checkpoint_due(every, SchedulePosition(step=11), since=0.0)
    minutes = TrainConfig(checkpoint_every=0, checkpoint_minutes=2)
    assert not checkpoint_due(minutes, SchedulePosition(step=11, elapsed=150.0), since=40.0)
    assert checkpoint_due(minutes, SchedulePosition(step=11, elapsed=161.0), since=40.0)
    assert not checkpoint_due(TrainConfig(checkpoint_every=0, checkpoint_minutes=0), SchedulePosition(step=10, elapsed=1e6), 0.0)
