"""The trainer's events on a model whose grids live in fixed buffers (``TrainConfig.static_shapes``).

Each function is the static-shape twin of a :class:`jax_tensorf.model.TensoRF` method the exact-size
trainer calls (``upsample``, ``update_alpha_mask``, ``shrink``), applied to the model and to Adam's
moments inside the buffers of :mod:`jax_tensorf.static_grid`; the buffers only change when a grid
outgrows them.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from tensorf_common.config import FieldConfig, RenderConfig
from tensorf_common.geometry import n_to_reso, train_n_samples

from . import alpha_mask as am
from . import static_grid as sg
from .capacities import StepShape, round_up
from .model import buffered_alpha_mask
from .step import map_adam_moments


def place_in_buffers(model, shape: StepShape, buf: Sequence[int], mask_buf: Optional[Sequence[int]],
                     largest_voxels: int, rc: RenderConfig) -> tuple[list[int], list[int]]:
    """Move ``model`` into zero-padded buffers of [X, Y, Z] = ``buf`` (its mask into ``mask_buf``, by
    default at least ``buf``) with the active sizes as traced values, and make the samples per ray a
    static bound for a grid of ``largest_voxels``. Returns the grid and mask buffer sizes."""
    reso = list(model.grid_size)
    mask_active = list(model.mask_grid_size or model.state.mask.shape[::-1])
    mask_buf = list(mask_buf or [max(b, a) for b, a in zip(buf, mask_active)])
    model.params = sg.map_grids(model.params, lambda g: sg.pad_grid(g, buf))
    model.active_size = reso
    model.state = model.state.replace(
        grid_size=sg.as_size(reso), mask=sg.pad_mask(model.state.mask, mask_buf), mask_size=sg.as_size(mask_active)
    )
    if shape.n_active is None:
        shape.n_active = shape.n_samples
    bound = train_n_samples(n_to_reso(largest_voxels, model.aabb), rc.step_ratio, rc.max_samples)
    shape.n_samples = max(shape.n_active, round_up(int(1.1 * bound), 32))
    return list(buf), mask_buf


def resize_in_buffers(model, opt_state, shape: StepShape, buf: list[int], mask_buf: list[int], reso,
                      rc: RenderConfig, resize_moments: bool, log: Callable[[str], None]):
    """Resample the grids (and, with ``resize_moments``, Adam's moments) to ``reso`` in the same
    buffers; a grid that outgrows them moves into larger ones (the step then compiles again).
    Returns ``(opt_state, buf, mask_buf)``."""
    if not sg.fits(reso, buf):
        exact = sg.map_grids(model.params, lambda g: sg.slice_grid(g, model.grid_size))
        opt_state = map_adam_moments(opt_state, lambda g: sg.slice_grid(g, model.grid_size))
        buf = [max(b, int(np.ceil(sg.HEADROOM * r))) for b, r in zip(buf, reso)]
        mask_buf = [max(b, x) for b, x in zip(mask_buf, buf)]
        model.params = sg.map_grids(exact, lambda g: sg.pad_grid(g, buf))
        opt_state = map_adam_moments(opt_state, lambda g: sg.pad_grid(g, buf))
        X, Y, Z = model.mask_grid_size or model.state.mask.shape[::-1]
        model.state = model.state.replace(mask=sg.pad_mask(model.state.mask[:Z, :Y, :X], mask_buf))
        log(f"grid {list(reso)} outgrew the buffers; now {buf}")
    old, new = sg.as_size(model.grid_size), sg.as_size(reso)
    model.params = sg.map_grids(model.params, lambda g: sg.resample_grid(g, old, new))
    if resize_moments:
        opt_state = map_adam_moments(opt_state, lambda g: sg.resample_grid(g, old, new))
    model.active_size = list(reso)
    model.state = model.state.replace(grid_size=new)
    model._set_grid_geometry(model.aabb)
    shape.n_active = train_n_samples(reso, rc.step_ratio, rc.max_samples)
    if shape.n_active > shape.n_samples:
        shape.n_samples = round_up(int(1.1 * shape.n_active), 32)
    return opt_state, buf, mask_buf


def alpha_mask_in_buffers(model, mask_buf: Sequence[int], reso, cfg: FieldConfig, thres: float) -> Optional[np.ndarray]:
    """:meth:`TensoRF.update_alpha_mask` inside the mask buffer: the new mask's box, or None (and
    the model unchanged) when the mask would be empty."""
    mask, any_set, first, last = buffered_alpha_mask(
        model.params, model.state, sg.as_size(reso), jnp.float32(model.step_size), cfg=cfg,
        mask_buf=tuple(mask_buf), slab=sg.mask_slab(mask_buf), thres=thres, use_mask=model.has_mask(),
    )
    if not bool(any_set):
        return None
    new_aabb = sg.mask_box(model.aabb, reso, np.asarray(first), np.asarray(last))
    model.state = model.state.replace(mask=mask, mask_aabb=jnp.asarray(model.aabb, jnp.float32), mask_size=sg.as_size(reso))
    model.mask_grid_size = list(reso)
    return new_aabb


def shrink_in_buffers(model, opt_state, new_aabb):
    """:meth:`TensoRF.shrink` (and Adam's moments) inside the buffers; returns the optimizer state."""
    t_l, _, aabb_after, grid_after = am.shrink_box(model.aabb, model.grid_size, new_aabb, model.mask_grid_size)
    start, size = sg.as_size(t_l), sg.as_size(grid_after)
    crop = lambda g: sg.crop_grid(g, start, size)  # noqa: E731
    model.params = sg.map_grids(model.params, crop)
    opt_state = map_adam_moments(opt_state, crop)
    model.active_size = list(grid_after)
    model.state = model.state.replace(grid_size=size)
    model._set_grid_geometry(aabb_after)
    return opt_state
