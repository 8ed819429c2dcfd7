"""jax_tensorf.capacities: sizing the compaction capacities of the compiled train step."""

from __future__ import annotations

from tensorf_common.config import RenderConfig
from tensorf_common.training_log import window_point

from jax_tensorf.capacities import (StepShape, compile_pays_off, grow_capacities, per_device, round_cap,
                                    set_capacities)


def _point(sample_overflow=0, app_overflow=0, app=100, n_samples=64):
    return window_point(step=1, elapsed=0, train_seconds=0, seconds=1, batch_size=256, n_samples=n_samples,
                        grid_size=(8, 8, 8), mse=[0.1], valid=[1000], app=[app], lr_grid=0.02,
                        sample_overflow=sample_overflow, app_overflow=app_overflow)


def test_capacities_are_raised_to_what_the_probe_found():
    rc = RenderConfig(appearance="threshold", sample_capacity=0.05, app_capacity=0.02)
    shape = StepShape(n_samples=64)
    set_capacities(shape, rc, 256, lambda: 5000, [], static=False, initial=True)
    assert shape.sample_capacity >= 6000 and shape.sample_capacity == round_cap(6000, 256 * 64)
    assert shape.app_capacity == round_cap(int(0.02 * 256 * 64), shape.sample_capacity)
    set_capacities(shape, RenderConfig(sample_capacity=None), 256, lambda: 5000, [], static=False, initial=True)
    assert shape.sample_capacity is None and shape.app_capacity is None


def test_static_capacities_only_grow():
    rc = RenderConfig(appearance="threshold", sample_capacity=0.01, app_capacity=0.01)
    shape = StepShape(n_samples=64, n_active=32)
    set_capacities(shape, rc, 256, lambda: 4000, [], static=True, initial=True)
    first = shape.sample_capacity
    assert first >= 4000 * 64 / 32 * 1.2  # sized for the finest grid
    set_capacities(shape, rc, 256, lambda: 10, [_point(app=1)], static=True, initial=False)
    assert shape.sample_capacity == first


def test_an_overflowing_capacity_grows_by_half_and_a_full_one_does_not():
    shape = StepShape(n_samples=64, sample_capacity=4096, app_capacity=2048)
    assert not grow_capacities(shape, 256, _point())
    assert grow_capacities(shape, 256, _point(sample_overflow=5))
    assert shape.sample_capacity == round_cap(6144, 256 * 64) and shape.app_capacity == 2048
    assert grow_capacities(shape, 256, _point(app_overflow=1)) and shape.app_capacity == round_cap(3072, shape.sample_capacity)
    full = StepShape(n_samples=64, sample_capacity=256 * 64)
    assert not grow_capacities(full, 256, _point(sample_overflow=5))


def test_a_capacity_far_below_its_need_grows_to_the_need_at_once():
    shape = StepShape(n_samples=64, sample_capacity=8192, app_capacity=1024)
    assert grow_capacities(shape, 256, _point(app_overflow=3000))  # needed 4024
    assert shape.app_capacity == round_cap(int(1.25 * 4024), 8192) and shape.app_capacity >= 4024
    assert grow_capacities(shape, 256, _point(app_overflow=100000))  # more than the sample capacity
    assert shape.app_capacity == 8192


def test_per_device_capacity_has_headroom():
    assert per_device(None, 4) is None and per_device(8192, 1) == 8192
    share = per_device(8192, 4)
    assert 1.25 * 8192 / 4 <= share <= 8192


def test_a_compilation_is_paid_for_only_with_twice_its_time_left():
    assert compile_pays_off(None, [20.0]) and compile_pays_off(5.0, [])
    assert compile_pays_off(41.0, [0.7, 20.0]) and not compile_pays_off(39.0, [0.7, 20.0])
