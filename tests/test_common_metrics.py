"""PSNR, SSIM and the mean / JSON helpers of tensorf_common.metrics.

SSIM is checked three ways: against scikit-image 0.26 (``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1``) on the interior, where skimage's reflect-padded map
and the valid map cover the same windows (measured agreement: max |diff| of the maps 4.1e-15, of
the means 0.0, on random 48x40x3 pairs; on 400x400 lego test views vs blurred copies and vs the
next view, where flat white background clips variances, 1.8e-11 on the maps and 5.3e-14 on the
means); against a brute-force windowed SSIM written here from the
definition; and against closed-form values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from tensorf_common.metrics import (
    NOT_AVAILABLE,
    gaussian_filter_1d,
    json_number,
    mean_metric,
    mse,
    psnr,
    ssim,
    ssim_map,
)


def _pair(seed: int, shape=(48, 40, 3), noise=0.2):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0.0, 1.0)
    return a, b


def _smooth_pair(seed: int, shape=(40, 52, 3)):
    """Natural-looking images: smooth gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.4 * np.sin(3 * x + k) * np.cos(2 * y - k) for k in range(c)], axis=-1)
    a = np.clip(base + 0.02 * rng.standard_normal(shape), 0, 1)
    b = np.clip(0.9 * base + 0.05 + 0.03 * rng.standard_normal(shape), 0, 1)
    return a, b


# ---------------------------------------------------------------- PSNR


def test_psnr_known_values():
    zeros = np.zeros((8, 8, 3))
    assert psnr(zeros, np.full((8, 8, 3), 0.1)) == pytest.approx(20.0, abs=1e-12)
    assert psnr(zeros, np.full((8, 8, 3), 0.5)) == pytest.approx(10 * math.log10(4.0), abs=1e-12)
    # One channel of one pixel off by 1 among 4*4*3 values: MSE = 1/48.
    b = zeros[:4, :4].copy()
    b[1, 2, 0] = 1.0
    assert psnr(zeros[:4, :4], b) == pytest.approx(10 * math.log10(48.0), abs=1e-12)


def test_psnr_identical_is_inf_without_warning():
    a, _ = _pair(0)
    with np.errstate(all="raise"):
        assert psnr(a, a) == math.inf
        assert mse(a, a) == 0.0


def test_psnr_clamps_to_unit_range():
    gt = np.full((6, 6, 3), 1.0)
    pred = np.full((6, 6, 3), 1.7)  # an unclamped render above white
    assert psnr(pred, gt) == math.inf
    assert psnr(np.full((6, 6, 3), -0.5), np.full((6, 6, 3), 0.1)) == pytest.approx(20.0)


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_mean_is_over_per_image_psnr_not_over_mse():
    gt = np.zeros((4, 4, 3))
    p20, p40 = np.full_like(gt, 0.1), np.full_like(gt, 0.01)
    vals = [psnr(p20, gt), psnr(p40, gt)]
    assert mean_metric(vals) == pytest.approx(30.0)
    pooled = -10 * math.log10((mse(p20, gt) + mse(p40, gt)) / 2)
    assert abs(mean_metric(vals) - pooled) > 5  # the two conventions differ a lot here


def test_mean_metric_inf_and_missing():
    assert mean_metric([20.0, math.inf]) == math.inf
    assert mean_metric([0.1, None]) is None
    assert mean_metric([0.1, NOT_AVAILABLE]) is None
    assert mean_metric([]) is None


def test_json_number():
    assert json_number(math.inf) == "inf"
    assert json_number(-math.inf) == "-inf"
    assert json_number(float("nan")) is None
    assert json_number(None) == NOT_AVAILABLE
    assert json_number(np.float32(0.25)) == 0.25
    assert isinstance(json_number(np.float32(0.25)), float)
    assert float(json_number(math.inf)) == math.inf  # "inf" reads back with float()


# ---------------------------------------------------------------- SSIM


def test_gaussian_filter():
    f = gaussian_filter_1d(11, 1.5)
    assert f.shape == (11,)
    assert f.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(f, f[::-1], atol=0)
    x = np.arange(-5, 6)
    ref = np.exp(-(x**2) / (2 * 1.5**2))
    np.testing.assert_allclose(f, ref / ref.sum(), rtol=1e-14)


@pytest.mark.parametrize("maker,seed", [(_pair, 0), (_pair, 1), (_smooth_pair, 2), (_smooth_pair, 3)])
def test_ssim_matches_skimage_on_interior(maker, seed):
    a, b = maker(seed)
    ours = ssim_map(a, b)
    _, full = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        channel_axis=-1, full=True,
    )
    interior = full[5:-5, 5:-5]
    assert ours.shape == interior.shape == (a.shape[0] - 10, a.shape[1] - 10, 3)
    np.testing.assert_allclose(ours, interior, rtol=0, atol=1e-10)
    assert ssim(a, b) == pytest.approx(float(interior.mean()), abs=1e-12)


def _brute_force_ssim(a: np.ndarray, b: np.ndarray, size=11, sigma=1.5, c1=1e-4, c2=9e-4) -> float:
    """SSIM from the definition: weighted statistics of every fully-inside 11x11 window, per channel,
    with the 2-D Gaussian written out (no convolution, no separability)."""
    r = np.arange(size) - size // 2
    w2 = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    w2 /= w2.sum()
    h, w, c = a.shape
    vals = []
    for ch in range(c):
        for i in range(h - size + 1):
            for j in range(w - size + 1):
                x = a[i : i + size, j : j + size, ch]
                y = b[i : i + size, j : j + size, ch]
                mx, my = (w2 * x).sum(), (w2 * y).sum()
                vx = max(0.0, (w2 * (x - mx) ** 2).sum())
                vy = max(0.0, (w2 * (y - my) ** 2).sum())
                cxy = (w2 * (x - mx) * (y - my)).sum()
                vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_brute_force_definition():
    a, b = _pair(5, shape=(17, 15, 3), noise=0.3)
    assert ssim(a, b) == pytest.approx(_brute_force_ssim(a, b), abs=1e-12)
    a, b = _smooth_pair(6, shape=(16, 19, 2))
    assert ssim(a, b) == pytest.approx(_brute_force_ssim(a, b), abs=1e-12)


def test_ssim_closed_form_constant_images():
    # Constant images: no variance, SSIM = (2 m0 m1 + c1) / (m0^2 + m1^2 + c1) * (c2 / c2).
    m0, m1, c1 = 0.2, 0.6, 0.01**2
    expected = (2 * m0 * m1 + c1) / (m0**2 + m1**2 + c1)
    assert ssim(np.full((12, 13, 3), m0), np.full((12, 13, 3), m1)) == pytest.approx(expected, rel=1e-12)


def test_ssim_identical_is_one_and_lower_otherwise():
    a, b = _smooth_pair(7)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(np.full((12, 12, 3), 0.3), np.full((12, 12, 3), 0.3)) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) < 0.99
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)


def test_ssim_max_val_scales():
    a, b = _smooth_pair(8)  # low local variance: the constants c1, c2 matter
    assert ssim(a * 255, b * 255, max_val=255.0) == pytest.approx(ssim(a, b), abs=1e-10)
    assert ssim(a * 255, b * 255, max_val=1.0) != pytest.approx(ssim(a, b), abs=1e-3)


def test_ssim_greyscale_and_errors():
    a, b = _pair(9, shape=(20, 20))
    assert ssim(a, b) == pytest.approx(ssim(a[..., None], b[..., None]))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((10, 30, 3)), np.zeros((10, 30, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((12, 12, 3)), np.zeros((12, 13, 3)))
