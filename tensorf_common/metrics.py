"""Image-quality metrics in numpy, exactly as the official TensoRF evaluation computes them.

- :func:`psnr`: per image, on float images clamped to [0, 1] (not quantised),
  ``-10 * log10(mean((a - b) ** 2))`` over all pixels and channels. Identical images give
  ``math.inf`` (explicitly, without a division warning).
- :func:`ssim`: the mip-NeRF ``compute_ssim`` formula that the official ``utils.rgb_ssim`` ports:
  a normalised 11-tap Gaussian (sigma 1.5) applied separably with
  ``scipy.signal.convolve2d(mode='valid')`` per channel, variances clipped to >= 0, the covariance
  clipped to ``sign * min(sqrt(s00 * s11), |s01|)``, ``c1 = (0.01 * max_val) ** 2``,
  ``c2 = (0.03 * max_val) ** 2``, and the mean of the SSIM map over the valid
  ``(H - 10) x (W - 10) x C`` region.
- :func:`mean_metric`: the mean over images of one metric (the official reported figure), which
  propagates ``inf`` (one identical image makes the mean PSNR ``inf``) and is ``None`` ("n/a")
  when any image has no value.
- :func:`json_number`: how non-finite values are written to JSON and CSV. JSON has no infinity, so
  ``+inf`` is written as the string ``"inf"`` (``float("inf")`` and pandas both read it back),
  ``-inf`` as ``"-inf"``, NaN as ``null`` and a missing value as ``"n/a"``.

LPIPS is not here: it needs a network (see ``tensorf_common.lpips_weights`` for the weights and
``jax_tensorf.lpips`` / ``torch_reference.lpips`` for the two implementations).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import numpy as np
from scipy.signal import convolve2d

NOT_AVAILABLE = "n/a"
"""What a metric that could not be computed (LPIPS without weights) is reported as."""

Number = Union[float, int]


def _as_float_image(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected an HxW or HxWxC image, got shape {a.shape}")
    return a


def _check_pair(img0, img1) -> tuple[np.ndarray, np.ndarray]:
    a = _as_float_image(img0, "img0")
    b = _as_float_image(img1, "img1")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return a, b


def mse(img0, img1) -> float:
    """Mean squared error over all pixels and channels of two images clamped to [0, 1]."""
    a, b = _check_pair(img0, img1)
    return float(np.mean((np.clip(a, 0.0, 1.0) - np.clip(b, 0.0, 1.0)) ** 2))


def psnr(img0, img1) -> float:
    """Peak signal-to-noise ratio in dB of two float images in [0, 1] (both clamped to [0, 1]).

    ``-10 * log10(MSE)``, the official per-image formula; ``math.inf`` for identical images.
    """
    m = mse(img0, img1)
    if m == 0.0:
        return math.inf
    return float(-10.0 * math.log10(m))


def gaussian_filter_1d(filter_size: int = 11, filter_sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D Gaussian of mip-NeRF's ``compute_ssim`` (float64, sums to 1)."""
    hw = filter_size // 2
    shift = (2 * hw - filter_size + 1) / 2
    f_i = ((np.arange(filter_size) - hw + shift) / filter_sigma) ** 2
    filt = np.exp(-0.5 * f_i)
    return filt / np.sum(filt)


def ssim_map(
    img0,
    img1,
    max_val: float = 1.0,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """The SSIM map over the valid region, shape ``(H - filter_size + 1, W - filter_size + 1, C)``.

    The mip-NeRF / official TensoRF formula (see the module docstring), computed in float64.
    Images smaller than the filter raise ``ValueError``.
    """
    a, b = _check_pair(img0, img1)
    h, w, _ = a.shape
    if h < filter_size or w < filter_size:
        raise ValueError(f"SSIM needs images of at least {filter_size}x{filter_size}, got {h}x{w}")
    filt = gaussian_filter_1d(filter_size, filter_sigma)
    col, row = filt[:, None], filt[None, :]

    def blur(z: np.ndarray) -> np.ndarray:
        # Separable valid convolution per channel: along W first, then along H (as mip-NeRF).
        return np.stack(
            [convolve2d(convolve2d(z[..., c], row, mode="valid"), col, mode="valid") for c in range(z.shape[-1])],
            axis=-1,
        )

    mu0, mu1 = blur(a), blur(b)
    mu00, mu11, mu01 = mu0 * mu0, mu1 * mu1, mu0 * mu1
    sigma00 = np.maximum(0.0, blur(a * a) - mu00)
    sigma11 = np.maximum(0.0, blur(b * b) - mu11)
    sigma01 = blur(a * b) - mu01
    sigma01 = np.sign(sigma01) * np.minimum(np.sqrt(sigma00 * sigma11), np.abs(sigma01))
    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    numer = (2.0 * mu01 + c1) * (2.0 * sigma01 + c2)
    denom = (mu00 + mu11 + c1) * (sigma00 + sigma11 + c2)
    return numer / denom


def ssim(
    img0,
    img1,
    max_val: float = 1.0,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Structural similarity of two HxWxC (or HxW) images: the mean of :func:`ssim_map`.

    Defaults are the official TensoRF call ``rgb_ssim(img0, img1, max_val=1)``. Not clamped: the
    official code passes the clamped render and the ground truth, as :mod:`.evaluation` does.
    """
    return float(np.mean(ssim_map(img0, img1, max_val, filter_size, filter_sigma, k1, k2)))


def mean_metric(values: Iterable[Optional[Number]]) -> Optional[float]:
    """The mean over images of one metric, or ``None`` when any value is missing or there are none.

    ``inf`` propagates (the mean PSNR of a set holding an identical pair is ``inf``, as the official
    ``np.mean`` gives); a missing value (``None`` or ``"n/a"``) makes the mean missing.
    """
    vals = list(values)
    if not vals or any(v is None or isinstance(v, str) for v in vals):
        return None
    return float(np.mean(np.asarray(vals, dtype=np.float64)))


def json_number(value: Optional[Number]) -> Union[float, int, str, None]:
    """A metric value as JSON can hold it: finite numbers unchanged, ``inf`` -> ``"inf"``,
    ``-inf`` -> ``"-inf"``, NaN -> ``None`` (null), missing (``None``) -> ``"n/a"``.

    Strings pass through unchanged (already ``"n/a"`` or ``"inf"``).
    """
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, str):
        return value
    v = float(value)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v
