"""What a trainer reports while it trains, the same for both frameworks: one :class:`LogPoint` per
log point (``run.json``'s ``history``, the ``on_log`` callbacks), the periodic log line and the
progress bar."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass
class LogPoint:
    """The steps since the previous log point: their mean colour MSE and rays per second of training
    time, and the state they ran in."""

    step: int
    """Optimizer steps done."""
    elapsed: float
    """Seconds on the budget clock."""
    mse: float
    psnr: float
    lr_grid: float
    rays_per_s: float
    n_samples: int
    """Samples per ray."""
    grid_size: list
    sample_overflow: int = 0
    """Valid samples dropped by a full compaction capacity (JAX; 0 where nothing is compacted)."""
    app_overflow: int = 0
    valid_fraction: float = 0.0
    """Samples inside the box and the mask, as a fraction of all samples of the batches."""
    app_fraction: float = 0.0
    """Samples that got appearance, as a fraction of all samples."""
    train_seconds: float = 0.0
    """Seconds of training (the schedule clock)."""
    total: Optional[float] = None
    """Mean minimised loss (the MSE and the weighted regularisers), where recorded."""
    lr_basis: Optional[float] = None
    l1_weight: Optional[float] = None


def window_point(
    *,
    step: int,
    elapsed: float,
    train_seconds: float,
    seconds: float,
    batch_size: int,
    n_samples: int,
    grid_size: Sequence[int],
    mse: Sequence[float],
    valid: Sequence[float],
    app: Sequence[float],
    lr_grid: float,
    **extra,
) -> LogPoint:
    """The log point of a window of steps from their per-step colour MSE and valid and appearance
    sample counts (``len(mse)`` steps in ``seconds`` of training); ``extra`` sets the optional fields."""
    mean_mse = float(np.mean(np.asarray(mse, np.float64)))
    samples = batch_size * n_samples
    return LogPoint(
        step=int(step),
        elapsed=round(float(elapsed), 3),
        mse=mean_mse,
        psnr=float(-10.0 * math.log10(max(mean_mse, 1e-12))),
        lr_grid=float(lr_grid),
        rays_per_s=float(batch_size * len(mse) / max(seconds, 1e-9)),
        n_samples=int(n_samples),
        grid_size=[int(g) for g in grid_size],
        valid_fraction=float(np.mean(np.asarray(valid, np.float64))) / samples,
        app_fraction=float(np.mean(np.asarray(app, np.float64))) / samples,
        train_seconds=round(float(train_seconds), 3),
        **extra,
    )


def log_line(point: LogPoint) -> str:
    """The periodic ``step ...`` line of a log point (what a redirected run's log holds)."""
    return (
        f"step {point.step:6d}  t={point.elapsed:7.1f}s  psnr {point.psnr:6.2f}  "
        f"{point.rays_per_s / 1000:6.1f}k rays/s  grid {'x'.join(map(str, point.grid_size))}"
    )


def progress_bar(total: Optional[int], enabled: bool):
    """A tqdm bar on stderr (None when disabled or tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="it", dynamic_ncols=True, file=sys.stderr)
    except ImportError:  # pragma: no cover
        return None


__all__ = ["LogPoint", "log_line", "progress_bar"]
