"""tensorf_common.training_log: the log point of a window of steps, the same for both trainers."""

from __future__ import annotations

import math

import pytest

from tensorf_common.training_log import log_line, window_point


def test_window_point_means_rates_and_fractions():
    point = window_point(
        step=20, elapsed=12.34567, train_seconds=10.0, seconds=2.0, batch_size=100, n_samples=50,
        grid_size=(4, 5, 6), mse=[0.01, 0.03], valid=[1000, 3000], app=[500, 100], lr_grid=0.02, app_overflow=7,
    )
    assert point.mse == pytest.approx(0.02) and point.psnr == pytest.approx(-10 * math.log10(0.02))
    assert point.rays_per_s == pytest.approx(100.0)  # 2 steps of 100 rays in 2 s
    assert point.valid_fraction == pytest.approx(2000 / 5000) and point.app_fraction == pytest.approx(300 / 5000)
    assert point.grid_size == [4, 5, 6] and point.elapsed == 12.346 and point.app_overflow == 7
    assert "step" in log_line(point)


def test_window_point_of_a_perfect_fit_has_a_finite_psnr():
    point = window_point(step=1, elapsed=0, train_seconds=0, seconds=0.0, batch_size=1, n_samples=1, grid_size=(1, 1, 1),
                         mse=[0.0], valid=[1], app=[1], lr_grid=0.0)
    assert math.isfinite(point.psnr) and math.isfinite(point.rays_per_s)
