"""jax_tensorf.training: the official learning rates (decay, reset and a new Adam at every upsample),
one train step lowers the loss, compiles counted per grid size, bit-identical resume (before an upsample and exactly at one), and a non-finite loss that stops with
the last good checkpoint on disk.

Train steps are compiled ahead of time once per Trainer and grid size (seconds each on 2 cores), so
the tests here use the cheapest model (CP with the RGB decoder) and share one run through a
module-scoped fixture. The smoke training whose PSNR must rise (the smoke preset's VM/MLP_Fea field
on the procedural scene) is the `tensorf-bench train --preset smoke` run of tests/test_cli_train.py."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import SMALL_CP_RGB, experiment, host_copy, replace_train, trees_bit_identical
from clock_helpers import FakeClock
from jax_tensorf.checkpoint import read_npz
from jax_tensorf.step import RegFlags, group_labels, make_optimizer, train_step
from jax_tensorf.training import Trainer
from tensorf_common.schedule import learning_rates, lr_factor
from tensorf_common.config import ExperimentConfig, RenderConfig, TrainConfig
from tensorf_common.errors import TrainingError
from tensorf_common.geometry import n_to_reso, train_n_samples

# ------------------------------------------------------------------ learning rates


def test_lr_factor_and_learning_rates_official_values():
    tc = TrainConfig()  # lr_init 0.02, lr_basis 1e-3, ratio 0.1, n_iters 30000
    f = lr_factor(tc, 30000)
    assert f == pytest.approx(0.1 ** (1 / 30000), rel=1e-15)
    assert learning_rates(tc, 0, 30000) == (pytest.approx(0.02), pytest.approx(1e-3))
    g, b = learning_rates(tc, 30000, 30000)
    assert g == pytest.approx(0.002, rel=1e-9) and b == pytest.approx(1e-4, rel=1e-9)
    # official: after the last upsample at 7000 the rates decay for 23000 iterations from the reset
    g, _ = learning_rates(tc, 30000 - 7000, 30000)
    assert g == pytest.approx(0.02 * 0.1 ** (23000 / 30000), rel=1e-9)
    assert g == pytest.approx(0.0034, abs=5e-5)  # "ending near 0.0034 for the grids, not 0.002"
    tc2 = TrainConfig(lr_init=0.1, lr_basis=0.01, lr_decay_target_ratio=0.5)
    assert learning_rates(tc2, 10, 20) == (pytest.approx(0.1 * 0.5**0.5), pytest.approx(0.01 * 0.5**0.5))


def test_group_labels_split_grids_from_basis_and_mlp():
    params = {
        "density": {"planes": [1, 2], "lines": [3]},
        "app": {"lines": [4]},
        "basis_mat": {"kernel": 5},
        "render": {"mlp_0": {"kernel": 6, "bias": 7}},
    }
    labels = group_labels(params)
    assert jax.tree.leaves(labels["density"]) == ["grid"] * 3 and jax.tree.leaves(labels["app"]) == ["grid"]
    assert jax.tree.leaves(labels["basis_mat"]) == ["basis"] and jax.tree.leaves(labels["render"]) == ["basis"] * 2


# ------------------------------------------------------------------ one step


def test_train_step_lowers_the_loss_on_a_fixed_batch(small_dataset):
    from jax_helpers import numpy_model

    field = dataclasses.replace(SMALL_CP_RGB, density_shift=-2.0)
    m = numpy_model(field, [10, 10, 10], aabb=small_dataset.aabb)
    split = small_dataset["train"]
    idx = np.random.default_rng(0).choice(split.n_rays, 256, replace=False)
    o, d, rgb = map(jnp.asarray, split.batch(idx))
    tc = TrainConfig()
    adam = make_optimizer(tc)
    opts = m.render_options(train_n_samples(m.grid_size, 0.5), train=True)
    hyper = {k: jnp.float32(v) for k, v in dict(lr_grid=0.1, lr_basis=0.01, l1=8e-5, tv_density=0, tv_app=0, ortho=0).items()}
    key = jax.random.PRNGKey(0)
    params, opt = m.params, adam.init(m.params)
    losses = []
    for _ in range(4):  # the same batch and key every time: the loss must go down
        params, opt, metrics = train_step(
            params, opt, m.state, o, d, rgb, key, hyper, cfg=field, opts=opts, variant="flat", reg=RegFlags(), adam=adam
        )
        losses.append(float(metrics["total"]))
        assert bool(metrics["finite"])
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.99 * losses[0], losses
    assert set(metrics) >= {"mse", "l1", "total", "finite", "sample_overflow", "app_overflow", "valid_samples", "app_samples"}


# ------------------------------------------------------------------ a run with an upsample (shared)

N_ITERS, UPSAMPLE_AT, MASK_AT = 8, 4, 1
"""Events happen after the optimizer step of their iteration: the alpha mask (empty on a fresh model:
keeps the box, switches the L1 weight) after step index 1, the upsample after step index 4, i.e. when
5 steps are done."""


def _run_cfg() -> ExperimentConfig:
    return experiment(
        SMALL_CP_RGB,
        RenderConfig(),
        n_iters=N_ITERS,
        upsample_at=(UPSAMPLE_AT,),
        alpha_mask_at=(MASK_AT,),
        n_voxel_init=10**3,
        n_voxel_final=13**3,
        lr_init=0.05,
        lr_basis=5e-3,
        lr_decay_iters=4,  # fast decay: a missing reset is obvious
        batch_size=128,
        log_every=1,
    )


EARLY = 2
"""Resume point before the upsample."""
AT_UPSAMPLE = UPSAMPLE_AT + 1
"""Resume point exactly at the upsample step (the step after which the grid was upsampled)."""


@pytest.fixture(scope="module")
def reference_run(small_dataset, tmp_path_factory):
    """One uninterrupted run of N_ITERS steps that records parameters and Adam state at every log
    point and writes a checkpoint after every step (checkpoint_every=1). The checkpoints of steps
    EARLY and AT_UPSAMPLE are kept: at a log point the file on disk is the previous step's one (the
    trainer logs, then checkpoints; the tests check the step stored in each copy)."""
    out = tmp_path_factory.mktemp("reference")
    cfg = replace_train(_run_cfg(), checkpoint_every=1)
    trainer = Trainer(cfg, small_dataset, out_dir=out, log=lambda s: None)
    snaps, kept = {}, {}

    def on_log(point):
        snaps[point.step] = (host_copy(trainer.model.params), point, host_copy(trainer.opt_state))
        if point.step - 1 in (EARLY, AT_UPSAMPLE):
            kept[point.step - 1] = Path(shutil.copy(out / "checkpoint.npz", out / f"step{point.step - 1}.npz"))

    trainer.run(on_log=on_log)
    return trainer, snaps, kept


def test_upsample_recompiles_once_per_grid_size(reference_run):
    trainer = reference_run[0]
    reso0 = n_to_reso(10**3, trainer.dataset.aabb)
    reso1 = n_to_reso(13**3, trainer.dataset.aabb)
    assert trainer.model.grid_size == reso1 != reso0
    assert [c["grid_size"] for c in trainer.compiles] == [reso0, reso1]
    assert [c["n_samples"] for c in trainer.compiles] == [train_n_samples(reso0, 0.5), train_n_samples(reso1, 0.5)]
    assert trainer.compiles[1]["step"] == UPSAMPLE_AT + 1
    assert all(c["seconds"] > 0 for c in trainer.compiles)
    # more steps at the same shapes reuse the compiled step
    more = replace_train(trainer.cfg, n_iters=N_ITERS + 2)
    trainer.cfg, trainer.tc = more, more.train
    trainer.run()
    assert trainer.pos.step == N_ITERS + 2 and len(trainer.compiles) == 2


def test_learning_rates_reset_and_adam_recreated_at_upsample(reference_run):
    """After the upsample the next step uses the initial rates with a fresh Adam: its first update of
    every parameter is lr * g / (|g| + eps), i.e. at most (and, for the largest gradients, almost
    exactly) the learning rate itself. Without the reset it would be lr * factor^5 (~0.06 lr)."""
    trainer, snaps, _ = reference_run
    tc = trainer.tc
    u = UPSAMPLE_AT + 1
    before, point, opt = snaps[u]  # logged after the upsample: the parameters the next step starts from
    # Adam was re-created (official): no step count, zero moments, shaped like the new grid
    assert int(opt.count) == 0
    assert all(not np.any(x) for x in jax.tree.leaves((opt.mu, opt.nu)))
    assert jax.tree.map(np.shape, opt.mu) == jax.tree.map(np.shape, before)
    after = snaps[u + 1][0]
    assert point.grid_size == trainer.compiles[1]["grid_size"]
    assert point.lr_grid == pytest.approx(tc.lr_init, rel=1e-6)  # the rate of the next step
    assert snaps[u - 1][1].lr_grid == pytest.approx(tc.lr_init * lr_factor(tc, 4) ** (u - 1), rel=1e-5)
    for group, lr in (("density", tc.lr_init), ("app", tc.lr_init), ("basis_mat", tc.lr_basis)):
        delta = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(after[group]), jax.tree.leaves(before[group])))
        assert delta <= lr * (1 + 1e-5), group
        assert delta >= lr * 0.9, (group, delta / lr)  # (0.98 measured: the largest |g| >> eps)


def test_mask_event_on_a_fresh_model_keeps_the_box_and_switches_l1(reference_run):
    trainer = reference_run[0]
    ev = [e for e in trainer.events if e["event"] == "alpha_mask"]
    assert len(ev) == 1 and ev[0].get("empty") is True and ev[0]["step"] == MASK_AT + 1
    assert trainer.pos.l1_weight == trainer.tc.l1_weight_rest
    np.testing.assert_array_equal(trainer.model.aabb, trainer.dataset.aabb)


# ------------------------------------------------------------------ resume


def test_resume_before_an_upsample_is_bit_identical(reference_run, small_dataset):
    _, snaps, kept = reference_run
    assert read_npz(kept[EARLY])[1]["schedule"]["step"] == EARLY
    trainer = Trainer.resume(kept[EARLY], small_dataset, out_dir=kept[EARLY].parent / "resumed_early")
    assert trainer.pos.step == EARLY and trainer.pos.upsample_done == 0
    assert trees_bit_identical(host_copy(trainer.model.params), snaps[EARLY][0])
    trainer.run(max_steps=N_ITERS - EARLY)
    assert trainer.pos.upsample_done == 1  # the upsample happened after the resume point
    # the compiles recorded so far (from the file) plus this process's own two, one per grid size
    assert [c["grid_size"] for c in trainer.compiles[-2:]] == [c["grid_size"] for c in reference_run[0].compiles]
    _assert_same_run_at(trainer, snaps)


def test_resume_from_a_checkpoint_taken_at_the_upsample_step(reference_run, small_dataset):
    """The seed's bug #4: a checkpoint taken at an upsample step must hold the upsampled grid, the new
    Adam and the reset rates, and the resumed run must neither skip nor repeat the upsample."""
    ref, snaps, kept = reference_run
    assert read_npz(kept[AT_UPSAMPLE])[1]["schedule"]["step"] == AT_UPSAMPLE
    trainer = Trainer.resume(kept[AT_UPSAMPLE], small_dataset, out_dir=kept[AT_UPSAMPLE].parent / "resumed_at")
    assert trainer.pos.step == AT_UPSAMPLE and trainer.pos.upsample_done == 1
    assert trainer.model.grid_size == ref.compiles[1]["grid_size"]
    assert trees_bit_identical(host_copy(trainer.model.params), snaps[AT_UPSAMPLE][0])
    assert trees_bit_identical(host_copy(trainer.opt_state), snaps[AT_UPSAMPLE][2])
    trainer.run(max_steps=N_ITERS - AT_UPSAMPLE)
    assert trainer.pos.upsample_done == 1
    assert [e["event"] for e in trainer.events].count("upsample") == 1
    _assert_same_run_at(trainer, snaps)


def _assert_same_run_at(resumed, snaps):
    """Compare with the reference run's snapshot at the resumed run's step (the reference trainer
    itself may have been run further by another test)."""
    step = resumed.pos.step
    assert step == N_ITERS
    ref_params, ref_point, ref_opt = snaps[step]
    assert resumed.model.grid_size == ref_point.grid_size
    assert trees_bit_identical(host_copy(resumed.model.params), ref_params)
    assert trees_bit_identical(host_copy(resumed.opt_state), ref_opt)
    got_curve = [p.mse for p in resumed.history]
    want_curve = [snaps[s][1].mse for s in sorted(snaps) if s <= step]
    assert got_curve == want_curve


# ------------------------------------------------------------------ non-finite loss


def test_non_finite_loss_raises_and_keeps_the_last_good_checkpoint(reference_run):
    """A huge learning rate blows the grids up within two steps; the non-finite step is not applied,
    the run stops with TrainingError, and the checkpoint on disk holds finite parameters.

    (It continues the shared reference run, whose step is already compiled: the learning rate is a
    runtime input of the step. Keep this test last in the module.)"""
    trainer = reference_run[0]
    out = trainer.out_dir
    start = trainer.pos.step
    cfg = replace_train(trainer.cfg, lr_init=1e30, n_iters=start + 5)
    trainer.cfg, trainer.tc = cfg, cfg.train
    n_compiles = len(trainer.compiles)
    with pytest.raises(TrainingError, match="non-finite") as info:
        trainer.run()
    assert str(out) in str(info.value)
    assert start + 1 <= trainer.pos.step <= start + 3 and len(trainer.compiles) == n_compiles
    arrays, meta = read_npz(out / "checkpoint.npz")
    assert meta["schedule"]["step"] == trainer.pos.step
    params = {k: v for k, v in arrays.items() if k.startswith("params/")}
    assert params and all(np.all(np.isfinite(v)) for v in params.values())
    assert max(float(np.abs(v).max()) for v in params.values()) > 1e20  # the (finite) blown-up step was kept
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(trainer.model.params))


# ------------------------------------------------------------------ time-fraction schedule


def _time_cfg(**kw) -> ExperimentConfig:
    base = dict(minutes=1.0, n_iters=10_000, schedule_unit="fraction", alpha_mask_at=(0.5,), upsample_at=(0.55,),
                lr_decay_iters=-1)
    return replace_train(_run_cfg(), **{**base, **kw})


def test_time_fractions_count_training_seconds_only(small_dataset, monkeypatch):
    """Set-up and the first compilation that take most of a short budget do not make every event fall
    due at the first step: the schedule runs on seconds of training."""
    import jax_tensorf.training as training

    trainer = Trainer(_time_cfg(), small_dataset, log=lambda s: None)
    monkeypatch.setattr(training, "time", FakeClock(tick=0.05))
    trainer.pos.elapsed = 40.0  # as if loading and carving had taken 40 of the 60 s
    points = []
    trainer.run(max_steps=3, on_log=points.append)
    assert trainer.pos.elapsed >= 40.0 and trainer.pos.train_seconds < 20.0
    assert not [e for e in trainer.events if e["event"] in ("alpha_mask", "upsample")]
    # the rates decay from the first step on, over the ~20 s left: three steps cost a fraction of that
    assert all(p.lr_grid > 0.8 * trainer.tc.lr_init for p in points)


class StallingClock(FakeClock):
    """A clock for the trainer whose steps take ``tick`` seconds, and whose compilations (after the
    first) and mask updates each stall it by ``stall`` seconds."""

    def __init__(self, tick: float, stall: float):
        super().__init__(tick)
        self.stall = stall

    def add_stall(self) -> None:
        self.t += self.stall


def test_a_stall_at_an_event_cannot_bunch_the_upsamples(small_dataset, monkeypatch):
    """On the H200 the first upsample's mask update and compilation took 20 s of a 36 s budget and
    the other two upsamples fell due at the next two steps. Here every event stalls the clock by 12
    of the 60 s: the upsamples stay at least min_upsample_gap of the budget apart on both clocks, and
    the first lands at its fraction of the seconds of training the run then expects."""
    import jax_tensorf.training as training

    cfg = _time_cfg(alpha_mask_at=(0.1,), upsample_at=(0.1, 0.2, 0.35), n_voxel_final=12**3)
    trainer = Trainer(cfg, small_dataset, log=lambda s: None)
    trainer.pos.elapsed = 10.0
    clock = StallingClock(tick=0.05, stall=12.0)
    monkeypatch.setattr(training, "time", clock)
    for name in ("_mask_update", "_upsample"):
        real = getattr(trainer, name)

        def stalled(real=real):
            real()
            clock.add_stall()

        monkeypatch.setattr(trainer, name, stalled)
    trainer.run()
    ups = [e for e in trainer.events if e["event"] == "upsample"]
    assert len(ups) == 3, trainer.events
    gap = cfg.train.min_upsample_gap * 60.0
    for a, b in zip(ups, ups[1:]):
        assert b["train_seconds"] - a["train_seconds"] >= gap - 0.06
        assert b["elapsed"] - a["elapsed"] >= gap
    # the first upsample: 10% of the ~50 s of training the run expected before any stall
    assert ups[0]["train_seconds"] == pytest.approx(0.1 * 50.0, abs=0.5)
    assert trainer.pos.elapsed >= 60.0


# ------------------------------------------------------------------ interruption and periodic checkpoints


@pytest.fixture(scope="module")
def plain_trainer(small_dataset, tmp_path_factory):
    """A trainer of the test run without events (one compilation for the tests below), logging at
    every step, checkpointing every half minute into its own folder."""
    cfg = replace_train(_run_cfg(), upsample_at=(), alpha_mask_at=(), n_iters=100, checkpoint_minutes=0.5)
    return Trainer(cfg, small_dataset, out_dir=tmp_path_factory.mktemp("plain"), log=lambda s: None)


def test_ctrl_c_stops_the_loop_between_steps(plain_trainer, sigint_default):
    """Within tensorf_common.interrupt.stop_on_interrupt a SIGINT raises nothing (before, the
    KeyboardInterrupt surfaced inside JAX's dispatch); the loop finishes the step it is in and stops
    before the next one, leaving the run to its caller to save."""
    import os
    import signal

    from tensorf_common.interrupt import stop_on_interrupt, stop_requested

    trainer = plain_trainer
    start = trainer.pos.step

    def on_log(point):
        if point.step == start + 3:
            os.kill(os.getpid(), signal.SIGINT)

    with stop_on_interrupt():
        trainer.run(on_log=on_log)
        assert stop_requested()
    assert trainer.pos.step == start + 3 and [p.step - start for p in trainer.history[-3:]] == [1, 2, 3]


def test_a_checkpoint_is_written_every_checkpoint_minutes(plain_trainer, monkeypatch):
    """Default runs keep a resumable checkpoint by wall-clock time (a killed run loses at most that
    much), counted on the trainer's clock (a fake one here: 5 s per reading)."""
    import jax_tensorf.training as training
    from tensorf_common.config import PRESETS, preset

    assert TrainConfig().checkpoint_minutes > 0
    assert all(preset(name).train.checkpoint_minutes > 0 for name in PRESETS)
    trainer = plain_trainer
    assert trainer.tc.checkpoint_minutes == 0.5
    clock = FakeClock(tick=5.0)
    monkeypatch.setattr(training, "time", clock)
    saved = []
    real = trainer.save_checkpoint

    def save(path=None):
        saved.append((trainer.pos.step, clock.t))
        return real(path)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    start = clock.t
    trainer.run(max_steps=20)
    assert len(saved) >= 2, saved
    times = [start] + [t for _, t in saved]
    assert all(b - a >= 30.0 for a, b in zip(times, times[1:])), times
    assert all(b - a <= 30.0 + 4 * clock.tick for a, b in zip(times, times[1:])), times  # not much later either
    assert read_npz(trainer.out_dir / "checkpoint.npz")[1]["schedule"]["step"] == saved[-1][0]
    n = len(saved)
    trainer.cfg = replace_train(trainer.cfg, checkpoint_minutes=0.0)
    trainer.tc = trainer.cfg.train
    trainer.run(max_steps=10)
    assert len(saved) == n  # 0: only at the end and on Ctrl-C (by the caller)


# ------------------------------------------------------------------ capacity growth near the budget's end


def test_a_capacity_grows_only_while_the_budget_pays_for_the_compilation(small_dataset):
    """An overflowing capacity with the budget nearly spent keeps the compiled step (on a 2-core
    CPU a recompilation of the quick report's threshold run started 10 s before the end and took
    20 s); with the budget ahead it grows and compiles again."""
    cfg = replace_train(dataclasses.replace(_run_cfg(), render=RenderConfig(sample_capacity=0.05)),
                        upsample_at=(), alpha_mask_at=(), minutes=1.0, n_iters=1000)
    trainer = Trainer(cfg, small_dataset, log=lambda s: None)
    trainer.shape.sample_capacity = 256  # far below the valid samples of a batch
    trainer._step_fn()  # compiled before the budget is nearly spent (run() finds it)
    trainer.pos.elapsed = 60.0 - 0.2
    trainer.run(max_steps=1)
    assert trainer.history[-1].sample_overflow > 0
    assert len(trainer.compiles) == 1 and trainer.shape.sample_capacity == 256
    assert [e["event"] for e in trainer.events if e["event"].startswith("capacity")] == ["capacity_kept"]
    trainer.pos.elapsed = 0.0
    trainer.run(max_steps=1)
    assert len(trainer.compiles) == 2 and trainer.shape.sample_capacity > 256
    assert trainer.events[-1]["event"] == "capacity" and trainer.compiles[-1]["sample_capacity"] > 256
