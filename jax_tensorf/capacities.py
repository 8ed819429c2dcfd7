"""The static shapes of the compiled train step: samples per ray and the compaction capacities.

The number of valid samples (in the box and the alpha mask) depends on the scene, the mask and the
grid, so the capacities are measured by a probe of a few batches, not assumed, and a capacity that
overflows during training grows by half or to what it needed (the trainer then compiles the step
again, unless the budget left would not pay for the compilation). Capacities are
rounded to a few sizes per octave, so re-sizing them rarely changes the compiled shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import RenderConfig
from tensorf_common.training_log import LogPoint

from . import alpha_mask as am
from .rendering import bucket_capacity


@dataclasses.dataclass
class StepShape:
    """The static shapes of the compiled step: samples per ray and the compaction capacities."""

    n_samples: int = 0
    """Samples per ray of the compiled step (static-shape training: an upper bound)."""
    sample_capacity: Optional[int] = None
    app_capacity: Optional[int] = None
    n_active: Optional[int] = None
    """Static-shape training: the samples per ray in use (a traced input of the step)."""

    @property
    def samples_in_use(self) -> int:
        return self.n_samples if self.n_active is None else self.n_active


def round_cap(n: int, total: int) -> int:
    """A capacity of at least ``n``, rounded up to one of a few sizes per octave, at most ``total``."""
    return int(bucket_capacity(n, total))


def sample_capacity_for(valid: float, total: int, fraction: Optional[float] = None, at_least: int = 0) -> int:
    """The compaction capacity for ``valid`` samples of ``total``: 1.2x them (batches differ), at least
    ``fraction`` of the total and ``at_least``, rounded up to a bucket."""
    return round_cap(max(int((fraction or 0.0) * total), int(valid * 1.2), at_least), total)


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def per_device(capacity: Optional[int], n_devices: int) -> Optional[int]:
    """A device's share of a capacity, with headroom for an uneven split of valid samples across shards."""
    if capacity is None or n_devices == 1:
        return capacity
    return round_cap(int(1.25 * capacity / n_devices), capacity)


def set_capacities(
    shape: StepShape,
    rc: RenderConfig,
    batch_size: int,
    probe: Callable[[], int],
    history: Sequence[LogPoint],
    *,
    static: bool,
    initial: bool,
) -> None:
    """Capacities from the config fractions, raised to what ``probe()`` (the largest valid-sample
    count of a few batches) needs, and for appearance to what the last log windows used. With
    static shapes the step is sized for the finest grid and capacities only grow."""
    total = batch_size * shape.n_samples
    if rc.sample_capacity is None:
        shape.sample_capacity = None
    else:
        found = probe()
        if static:  # valid samples grow as the step shrinks
            found = found * shape.n_samples / shape.samples_in_use
        keep = shape.sample_capacity if static and not initial and shape.sample_capacity is not None else 0
        shape.sample_capacity = sample_capacity_for(found, total, rc.sample_capacity, keep)
    if rc.appearance == "threshold" and rc.app_capacity is not None:
        # appearance samples are a subset of the valid ones: the sample capacity bounds them
        limit = shape.sample_capacity or total
        recent = [p.app_fraction for p in history[-3:] if p.n_samples == shape.samples_in_use]
        if initial or shape.app_capacity is None:
            want = int(rc.app_capacity * total)
        elif recent:  # size to what the last log windows needed, with room to grow
            want = int(1.5 * max(recent) * total)
        else:
            want = int(shape.app_capacity)
        if static and not initial and shape.app_capacity is not None:
            want = max(want, shape.app_capacity)
        shape.app_capacity = round_cap(min(want, limit), limit)
    else:
        shape.app_capacity = None


def _grown(capacity: int, overflow: int, limit: int) -> int:
    """By half, or to what the window needed (capacity + overflow) with a quarter of headroom if
    that is more: one compilation instead of several when the need jumped."""
    return round_cap(min(max(int(capacity * 1.5), int(1.25 * (capacity + overflow))), limit), limit)


def grow_capacities(shape: StepShape, batch_size: int, point: LogPoint) -> bool:
    """Grow each capacity that overflowed in the log window ``point`` (:func:`_grown`); True if one did."""
    total = batch_size * shape.n_samples
    changed = False
    if point.sample_overflow > 0 and shape.sample_capacity is not None and shape.sample_capacity < total:
        shape.sample_capacity = _grown(shape.sample_capacity, point.sample_overflow, total)
        changed = True
    limit = shape.sample_capacity or total
    if point.app_overflow > 0 and shape.app_capacity is not None and shape.app_capacity < limit:
        shape.app_capacity = _grown(shape.app_capacity, point.app_overflow, limit)
        changed = True
    return changed


def compile_pays_off(seconds_left: Optional[float], compile_seconds: Sequence[float]) -> bool:
    """Whether a grown capacity is worth compiling with ``seconds_left`` of the budget (None: no
    budget): more than twice the slowest compilation so far must be left. A compilation that ends
    with the budget trains nothing; the compiled step only drops the samples that overflow."""
    return seconds_left is None or not compile_seconds or seconds_left > 2.0 * max(compile_seconds)


def probe_valid_samples(model, split, sampler, batch_size: int, n_samples: int, seed: int, n_batches: int = 4) -> int:
    """The largest number of valid samples (in box and mask) over a few batches drawn like the
    sampler's (``seed`` varies them between probes)."""
    rng = np.random.default_rng(seed)
    fn = _probe_fn(model.near_far[0], model.near_far[1], n_samples)
    best = 0
    for _ in range(n_batches):
        idx = sampler.at(rng.integers(0, sampler.pool_size, batch_size))
        o, d = split.rays(idx)
        jitter = rng.random(batch_size).astype(np.float32)
        best = max(best, int(fn(model.state, o, d, jitter)))
    return best


@functools.lru_cache(maxsize=None)
def _probe_fn(near: float, far: float, n_samples: int):
    from .sampling import sample_ray

    @jax.jit
    def fn(state, o, d, jitter):
        _, xyz, valid = sample_ray(o, d, state.aabb, near, far, state.step_size, n_samples, jitter)
        valid = valid & am.query_alpha_mask(state.mask, state.mask_aabb, xyz, state.mask_size)
        return jnp.sum(valid)

    return fn
