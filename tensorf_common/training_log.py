"""What a trainer reports while it trains, the same for both frameworks: one :class:`LogPoint` per
log point (``run.json``'s ``history``, the ``on_log`` callbacks), the periodic log line and the
progress bar."""

from __future__ import annotations

import dataclasses
import sys
from typing import Optional


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
