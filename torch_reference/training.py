"""Losses, optimizer groups, the official schedule, the train step and a minimal training loop.

The schedule follows the official ``train.py``:

- Adam with betas (0.9, 0.99) over two learning-rate groups (planes/lines at ``lr_init``, basis
  matrix and render MLP at ``lr_basis``), multiplied by ``lr_factor = target_ratio ** (1 / decay_iters)``
  after every step;
- TV weights (when non-zero) multiplied by ``lr_factor`` every step before use, never reset;
- events at iteration i happen after the optimizer step of iteration i, the alpha mask before the
  upsample: the first mask update shrinks the box and switches the L1 weight, the second filters
  the training rays; at each upsample the grid is resized to ``n_to_reso(voxel_schedule()[k], aabb)``
  and a NEW Adam is created with the initial learning rates (``lr_upsample_reset``).

Supported: ``schedule_unit='iter'`` and ``'fraction'`` of ``n_iters``; a wall-clock budget
(``minutes``) only when the caller opts in with ``train(..., wall_clock=True)`` (then, as in the JAX
trainer, ``'fraction'`` means fractions of the budget and the learning rates decay with time);
not supported (ConfigError): ``precision`` other than fp32. ``box='carve'`` is the caller's
business (pass the carved ``aabb`` and, for ``carve_as_mask``, ``initial_mask``).

Deliberate difference: the official shrink replaces the grid Parameters but keeps the old
optimizer, which then steps the orphaned pre-shrink tensors until the next upsample re-creates Adam
(invisible in the official configs, where the first mask update and an upsample share an
iteration). Here Adam is rebuilt after a shrink with its moments cropped like the grids (as the JAX
twin does), so the grids keep training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from tensorf_common.config import ConfigError, FieldConfig, RenderConfig, TrainConfig
from tensorf_common.errors import TrainingError
from tensorf_common.geometry import n_to_reso, train_n_samples

from . import fields
from .model import TensorBase, TensorCP, TensorVMSplit

# ---------------------------------------------------------------------------------------------
# Learning rates and the optimizer
# ---------------------------------------------------------------------------------------------


def lr_factor(tc: TrainConfig, decay_span: float) -> float:
    """Per-iteration decay factor ``lr_decay_target_ratio ** (1 / decay_span)`` (official)."""
    return tc.lr_decay_target_ratio ** (1.0 / decay_span)


def decay_span(tc: TrainConfig) -> int:
    """``lr_decay_iters``, or ``n_iters`` when it is -1 (official)."""
    return tc.lr_decay_iters if tc.lr_decay_iters > 0 else tc.n_iters


def learning_rates(tc: TrainConfig, units_since_reset: float, span: float) -> tuple[float, float]:
    """(lr_grid, lr_basis) of a step ``units_since_reset`` iterations after the last reset."""
    scale = lr_factor(tc, span) ** units_since_reset
    return tc.lr_init * scale, tc.lr_basis * scale


def make_optimizer(model: TensorBase, tc: TrainConfig, lr_scale: float = 1.0) -> torch.optim.Adam:
    """Adam over the official groups (``get_optparam_groups``) at ``lr_scale`` times the initial rates."""
    groups = model.get_optparam_groups(tc.lr_init * lr_scale, tc.lr_basis * lr_scale)
    return torch.optim.Adam(groups, betas=tuple(tc.adam_betas), eps=tc.adam_eps)


def decay_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """``lr *= factor`` for every group (official, after each step)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor


def _grid_lists(model: TensorBase) -> list[list[Tensor]]:
    return [list(g) for g in model.grid_groups()]


def rebuild_optimizer(
    old: torch.optim.Optimizer, model: TensorBase, tc: TrainConfig, transform: Callable[..., Any]
) -> torch.optim.Adam:
    """A new Adam over the model's current parameters, at the old learning rates, whose grid moments
    are the old ones mapped by ``transform`` (crop or resize; see :func:`crop_moments`).

    Relies on the official group order: the grid groups first (``grid_groups()``), then the basis
    matrix and the render MLP, whose Parameter objects do not change.
    """
    new = torch.optim.Adam(
        model.get_optparam_groups(tc.lr_init, tc.lr_basis), betas=tuple(tc.adam_betas), eps=tc.adam_eps
    )
    for g_new, g_old in zip(new.param_groups, old.param_groups):
        g_new["lr"] = g_old["lr"]
    n_grid = len(model.grid_groups())
    old_grid_params = [g["params"] for g in old.param_groups[:n_grid]]
    for key in ("exp_avg", "exp_avg_sq"):
        old_moments = [[old.state[p][key] if p in old.state else torch.zeros_like(p) for p in ps] for ps in old_grid_params]
        mapped = transform(old_moments)
        for g_new, moments in zip(new.param_groups[:n_grid], mapped):
            for p, m in zip(g_new["params"], moments):
                if tuple(m.shape) != tuple(p.shape):
                    raise RuntimeError(f"rebuild_optimizer: moment shape {tuple(m.shape)} != parameter {tuple(p.shape)}")
                new.state[p][key] = m.contiguous().clone()
    for g_new, g_old in zip(new.param_groups[:n_grid], old.param_groups[:n_grid]):
        for p_new, p_old in zip(g_new["params"], g_old["params"]):
            step = old.state[p_old]["step"] if p_old in old.state else torch.tensor(0.0)
            new.state[p_new]["step"] = step.clone() if isinstance(step, Tensor) else torch.tensor(float(step))
    for g_new, g_old in zip(new.param_groups[n_grid:], old.param_groups[n_grid:]):
        for p_new, p_old in zip(g_new["params"], g_old["params"]):
            if p_old in old.state:
                new.state[p_new] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in old.state[p_old].items()}
    return new


def grid_transform(model: TensorBase, op: str, *args) -> Callable[[list[list[Tensor]]], list[list[Tensor]]]:
    """Map grid-shaped tensors (in ``grid_groups()`` order) with the same crop (``op='crop'``,
    args t_l, b_r) or resize (``op='resize'``, arg reso) as the grids."""

    def apply(groups: list[list[Tensor]]) -> list[list[Tensor]]:
        if isinstance(model, TensorVMSplit):
            dl, dp, al, ap = groups
            if op == "crop":
                dp2, dl2 = fields.shrink_vm(dp, dl, *args)
                ap2, al2 = fields.shrink_vm(ap, al, *args)
            else:
                dp2, dl2 = fields.upsample_vm(dp, dl, *args)
                ap2, al2 = fields.upsample_vm(ap, al, *args)
            return [dl2, dp2, al2, ap2]
        if isinstance(model, TensorCP):
            fn = fields.shrink_cp if op == "crop" else fields.upsample_cp
            return [fn(g, *args) for g in groups]
        raise TypeError(f"grid_transform: unsupported model {type(model).__name__}")

    return apply


# ---------------------------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LossWeights:
    """Weights of the regularisers in one step (0 = not computed)."""

    l1: float = 0.0
    tv_density: float = 0.0
    tv_app: float = 0.0
    ortho: float = 0.0


def loss_terms(
    model: TensorBase,
    rays: Tensor,
    rgbs: Tensor,
    weights: LossWeights,
    *,
    n_samples: int,
    white_bg: bool = True,
    jitter: Optional[Tensor] = None,
    train_white_bg: Optional[bool] = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its parts: the colour MSE plus the weighted regularisers (official terms).

    The official logged "mse" includes the regularisers (an in-place ``+=`` on the MSE tensor);
    here ``mse`` is the pure colour error and ``total`` what is minimised.
    """
    out = model.render(rays, white_bg=white_bg, is_train=True, N_samples=n_samples, jitter=jitter, train_white_bg=train_white_bg)
    mse = torch.mean((out["rgb_map"] - rgbs) ** 2)
    total = mse
    parts: dict[str, Tensor] = {"mse": mse}
    if weights.ortho > 0:
        parts["ortho"] = model.vector_comp_diffs()
        total = total + weights.ortho * parts["ortho"]
    if weights.l1 > 0:
        parts["l1"] = model.density_L1()
        total = total + weights.l1 * parts["l1"]
    if weights.tv_density > 0:
        parts["tv_density"] = model.TV_loss_density()
        total = total + weights.tv_density * parts["tv_density"]
    if weights.tv_app > 0:
        parts["tv_app"] = model.TV_loss_app()
        total = total + weights.tv_app * parts["tv_app"]
    parts["total"] = total
    parts["n_density"] = out["n_density"]
    parts["n_appearance"] = out["n_appearance"]
    return total, parts


def train_step(
    model: TensorBase,
    optimizer: torch.optim.Optimizer,
    rays: Tensor,
    rgbs: Tensor,
    weights: LossWeights,
    *,
    n_samples: int,
    white_bg: bool = True,
    jitter: Optional[Tensor] = None,
    train_white_bg: Optional[bool] = None,
) -> dict[str, Tensor]:
    """One optimizer step on a batch: rays (B, 6), rgbs (B, 3), jitter (B,) in [0, 1) (drawn when None).

    Returns the detached loss terms (``total``, ``mse``, active regularisers) and sample counts;
    nothing is synced to the host. The learning-rate decay is the caller's (:func:`decay_learning_rates`).
    """
    model.train()
    total, parts = loss_terms(
        model, rays, rgbs, weights, n_samples=n_samples, white_bg=white_bg, jitter=jitter, train_white_bg=train_white_bg
    )
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------
# Data sources
# ---------------------------------------------------------------------------------------------


class ArrayRays:
    """In-memory rays with the dataset interface the loop uses (``n_rays``, ``rays(idx)``, ``batch(idx)``),
    the same as :class:`tensorf_common.data.SplitData`."""

    def __init__(self, rays_o: np.ndarray, rays_d: np.ndarray, rgb: np.ndarray) -> None:
        self.rays_o = np.asarray(rays_o, dtype=np.float32).reshape(-1, 3)
        self.rays_d = np.asarray(rays_d, dtype=np.float32).reshape(-1, 3)
        self.rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
        if not (len(self.rays_o) == len(self.rays_d) == len(self.rgb)):
            raise ValueError(
                f"ArrayRays: rays_o, rays_d and rgb differ in length ({len(self.rays_o)}, {len(self.rays_d)}, {len(self.rgb)})"
            )

    @property
    def n_rays(self) -> int:
        return len(self.rays_o)

    def rays(self, idx) -> tuple[np.ndarray, np.ndarray]:
        return self.rays_o[idx], self.rays_d[idx]

    def batch(self, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rays_o[idx], self.rays_d[idx], self.rgb[idx]


def _is_dataset(data: Any) -> bool:
    return all(hasattr(data, a) for a in ("n_rays", "rays", "batch"))


def _to_rays(o: np.ndarray, d: np.ndarray, device: torch.device) -> Tensor:
    return torch.cat([torch.as_tensor(np.asarray(o, np.float32)), torch.as_tensor(np.asarray(d, np.float32))], dim=-1).to(device)


@torch.no_grad()
def _keep_indices(model: TensorBase, data: Any, pool: np.ndarray, bbox_only: bool, chunk: int = 1 << 16) -> np.ndarray:
    keep = np.zeros(pool.size, dtype=bool)
    for start in range(0, pool.size, chunk):
        idx = pool[start : start + chunk]
        o, d = data.rays(idx)
        keep[start : start + idx.size] = model.ray_keep_mask(_to_rays(o, d, model.device), bbox_only=bbox_only).cpu().numpy()
    return pool[keep]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    model: TensorBase
    optimizer: torch.optim.Optimizer
    history: list[dict] = dataclasses.field(default_factory=list)
    """One entry per log point: step, mse, psnr, total, lr_grid, l1_weight, n_samples, grid_size, elapsed
    (seconds since the budget clock started)."""
    events: list[dict] = dataclasses.field(default_factory=list)
    """Mask updates, shrinks, ray filtering and upsamples, in order."""


def _event_iters(points: Sequence[float], tc: TrainConfig) -> list[int]:
    if tc.schedule_unit == "iter":
        return [int(round(p)) for p in points]
    return [int(round(p * tc.n_iters)) for p in points]


def _check_supported(tc: TrainConfig, wall_clock: bool = False) -> None:
    if tc.minutes is not None and not wall_clock:
        raise ConfigError(
            "train.minutes: torch_reference.training runs iteration budgets unless the caller opts in to a "
            "wall-clock budget with train(..., wall_clock=True) (else set minutes=None)"
        )
    if tc.precision != "fp32":
        raise ConfigError(f"train.precision: torch_reference.training runs fp32 only, got {tc.precision!r}")


BatchIterable = Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]


def train(
    field_cfg: FieldConfig,
    render_cfg: RenderConfig,
    train_cfg: TrainConfig,
    data: Union[Any, BatchIterable],
    *,
    aabb,
    near_far: Sequence[float],
    white_bg: bool = True,
    device: Union[str, torch.device] = "cpu",
    model: Optional[TensorBase] = None,
    initial_mask: Optional[tuple[Any, Any]] = None,
    n_iters: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    on_log: Optional[Callable[[dict], None]] = None,
    checkpoint_path: Optional[str] = None,
    wall_clock: bool = False,
    clock_start: Optional[float] = None,
) -> TrainResult:
    """Train a model with the official schedule.

    Args:
        field_cfg, render_cfg, train_cfg: the project configs.
        data: either a dataset with ``n_rays``, ``rays(idx)`` and ``batch(idx)`` (e.g.
            :class:`tensorf_common.data.SplitData` or :class:`ArrayRays`; batches are drawn by
            :class:`tensorf_common.data.BatchSampler` with ``train_cfg.seed``, the same batches the JAX
            twin draws, and ray filtering narrows the sampler's pool as in the official code), or any
            iterable of ``(rays_o, rays_d, rgb)`` numpy batches (ray filtering then drops the rays of
            each later batch that the filter rejects, so batches can shrink).
        aabb, near_far, white_bg: the scene box, ray bounds and background.
        model: continue training this model instead of building one at ``n_voxel_init``.
        initial_mask: ``(mask (Z, Y, X), mask_aabb)`` used until the first mask update (``carve_as_mask``).
        n_iters: stop after this many iterations (default ``train_cfg.n_iters``; the schedule and the
            LR decay still follow ``train_cfg.n_iters``).
        generator: torch RNG of the jitter and the background coin (default: seeded with ``train_cfg.seed``).
        on_log: called with each history entry.
        checkpoint_path: write the official checkpoint here at the end (and every
            ``checkpoint_every`` iterations), with ``{'iteration': i}`` as extra state.
        wall_clock: honour ``train_cfg.minutes`` as a wall-clock budget, as the JAX trainer does:
            training stops once the budget clock reaches it (``n_iters`` stays an upper bound), and
            with ``schedule_unit='fraction'`` the mask updates and upsamples happen when the clock
            passes ``t0 + fraction * (budget - t0)``, ``t0`` being the clock when the first step
            starts (after set-up), and the learning rates (and TV weights) decay with time,
            ``lr = lr_0 * target_ratio ** ((t - t_reset) / (budget - t0))``. Without it a budget is
            refused (ConfigError).
        clock_start: ``time.perf_counter()`` value at which the budget clock started (default: this
            call), so that a caller's set-up (data loading, box carving) can count, as it does in JAX.

    Every history entry carries ``elapsed``: seconds on the budget clock at that log point.

    Raises:
        TrainingError: on a non-finite loss (checked at log points).
    """
    tc = train_cfg
    _check_supported(tc, wall_clock)
    t_start = time.perf_counter() if clock_start is None else float(clock_start)
    budget = 60.0 * tc.minutes if (wall_clock and tc.minutes is not None) else None
    time_schedule = budget is not None and tc.schedule_unit == "fraction"
    dev = torch.device(device)
    if model is None:
        reso = n_to_reso(tc.n_voxel_init, aabb)
        model = TensorBase.from_config(field_cfg, render_cfg, aabb, reso, near_far, dev)
    reso_cur = model.gridSize.tolist()
    if initial_mask is not None:
        from .alpha_mask import AlphaGridMask

        mask, mask_aabb = initial_mask
        model.alphaMask = AlphaGridMask(torch.as_tensor(np.asarray(mask_aabb, np.float32)), torch.as_tensor(np.asarray(mask)).float()).to(dev)
    gen = generator if generator is not None else torch.Generator().manual_seed(tc.seed)
    optimizer = make_optimizer(model, tc)
    span = decay_span(tc)
    factor = lr_factor(tc, span)
    upsample_iters = _event_iters(tc.upsample_at, tc)
    mask_iters = _event_iters(tc.alpha_mask_at, tc)
    base_lrs = _initial_lrs(model, tc)
    voxel_list = tc.voxel_schedule()
    n_samples = train_n_samples(reso_cur, render_cfg.step_ratio, render_cfg.max_samples)
    result = TrainResult(model=model, optimizer=optimizer)

    # data
    dataset_mode = _is_dataset(data)
    sampler = None
    batch_iter: Optional[Iterator] = None
    batch_filter: Optional[str] = None  # iterator mode: 'bbox' or 'mask'
    if dataset_mode:
        from tensorf_common.data import BatchSampler

        sampler = BatchSampler(data.n_rays, tc.batch_size, tc.seed)
        if tc.ray_filter:
            kept = _keep_indices(model, data, sampler.pool(), bbox_only=True)
            if kept.size:
                sampler.restrict(kept)
            result.events.append({"event": "ray_filter_box", "kept": int(sampler.pool_size), "of": int(data.n_rays)})
    else:
        batch_iter = iter(data)
        batch_filter = "bbox" if tc.ray_filter else None

    l1_weight = tc.l1_weight_initial
    tv_density, tv_app = tc.tv_weight_density, tc.tv_weight_app
    reso_mask: Optional[list[int]] = None
    mask_updates = 0
    upsamples = 0
    total_iters = tc.n_iters if n_iters is None else int(n_iters)
    window: list[dict[str, Tensor]] = []
    steps_done = 0

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def mask_update(iteration: int) -> None:
        nonlocal reso_mask, l1_weight, optimizer, reso_cur, batch_filter, mask_updates
        if reso_mask is None or math.prod(reso_cur) < tc.mask_max_voxels:
            reso_mask = list(reso_cur)
        new_aabb = model.updateAlphaMask(tuple(reso_mask))
        event: dict[str, Any] = {"event": "alpha_mask", "step": iteration, "mask": list(reso_mask)}
        if budget is not None:
            event["elapsed"] = round(elapsed(), 3)
        if new_aabb is None:
            event["empty"] = True
        if mask_updates == 0:
            if new_aabb is not None:
                t_l, b_r, _, _ = _shrink_ranges(model, new_aabb)
                model.shrink(new_aabb)
                optimizer = rebuild_optimizer(optimizer, model, tc, grid_transform(model, "crop", t_l, b_r))
                reso_cur = model.gridSize.tolist()
                event.update(shrunk_aabb=model.aabb.tolist(), grid_size=reso_cur)
            l1_weight = tc.l1_weight_rest
        if mask_updates == 1 and tc.ray_filter and new_aabb is not None:
            if sampler is not None:
                kept = _keep_indices(model, data, sampler.pool(), bbox_only=False)
                if kept.size:
                    sampler.restrict(kept)
                event["rays_kept"] = int(sampler.pool_size)
            else:
                batch_filter = "mask"
        mask_updates += 1
        result.events.append(event)

    def upsample(iteration: int) -> None:
        nonlocal reso_cur, n_samples, optimizer, upsamples, lr_reset_t
        n_vox = voxel_list[upsamples]
        old = list(reso_cur)
        reso_cur = n_to_reso(n_vox, model.aabb.cpu().numpy())
        n_samples = train_n_samples(reso_cur, render_cfg.step_ratio, render_cfg.max_samples)
        if tc.optimizer_on_upsample == "resize":
            model.upsample_volume_grid(reso_cur)
            optimizer = rebuild_optimizer(optimizer, model, tc, grid_transform(model, "resize", reso_cur))
            if tc.lr_upsample_reset:
                for g, lr in zip(optimizer.param_groups, _initial_lrs(model, tc)):
                    g["lr"] = lr
        else:
            model.upsample_volume_grid(reso_cur)
            lr_scale = 1.0 if tc.lr_upsample_reset else tc.lr_decay_target_ratio ** (iteration / tc.n_iters)
            optimizer = make_optimizer(model, tc, lr_scale)
        if time_schedule and tc.lr_upsample_reset:
            lr_reset_t = elapsed()  # the next step starts from the initial rates
        upsamples += 1
        event = {"event": "upsample", "step": iteration, "from": old, "to": list(reso_cur), "n_samples": n_samples}
        if budget is not None:
            event["elapsed"] = round(elapsed(), 3)
        result.events.append(event)

    # time schedule (wall_clock with 'fraction'): event times and the decay are in seconds, over
    # the budget left when the first step starts (after set-up), as in the JAX trainer
    train_t0 = lr_reset_t = elapsed()
    span_t = max(budget - train_t0, 1e-3) if time_schedule else 1.0
    factor_t = lr_factor(tc, span_t) if time_schedule else 1.0
    mask_times = [train_t0 + p * span_t for p in tc.alpha_mask_at] if time_schedule else []
    upsample_times = [train_t0 + p * span_t for p in tc.upsample_at] if time_schedule else []

    for iteration in range(total_iters):
        if budget is not None and elapsed() >= budget:
            break
        # --- batch
        if sampler is not None:
            o, d, rgb = data.batch(sampler.next())
        else:
            try:
                o, d, rgb = next(batch_iter)  # type: ignore[arg-type]
            except StopIteration:
                break
        rays = _to_rays(o, d, dev)
        rgbs = torch.as_tensor(np.asarray(rgb, np.float32)).to(dev)
        if batch_filter is not None:
            keep = model.ray_keep_mask(rays, bbox_only=batch_filter == "bbox")
            rays, rgbs = rays[keep], rgbs[keep]

        # --- step (TV weights decay before use, official); a batch emptied by the filter is skipped
        if time_schedule:
            # rates and TV weights follow the clock (the JAX trainer's time schedule)
            now = elapsed()
            scale = factor_t ** (now - lr_reset_t)
            for g, lr0 in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr0 * scale
            tv_density = tc.tv_weight_density * factor_t ** (now - train_t0)
            tv_app = tc.tv_weight_app * factor_t ** (now - train_t0)
        else:
            if tv_density > 0:
                tv_density *= factor
            if tv_app > 0:
                tv_app *= factor
        lr_now = optimizer.param_groups[0]["lr"]
        if rays.shape[0] > 0:
            jitter = torch.rand(rays.shape[0], generator=gen).to(dev)
            coin = None if white_bg else bool(torch.rand(1, generator=gen) < 0.5)
            weights = LossWeights(l1=l1_weight, tv_density=tv_density, tv_app=tv_app, ortho=tc.ortho_weight)
            parts = train_step(
                model, optimizer, rays, rgbs, weights, n_samples=n_samples, white_bg=white_bg, jitter=jitter, train_white_bg=coin
            )
            window.append(parts)
        if not time_schedule:
            decay_learning_rates(optimizer, factor)

        # --- log
        if window and ((iteration + 1) % tc.log_every == 0 or iteration + 1 == total_iters):
            entry = _log_entry(window, iteration + 1, lr_now, n_samples, model, l1_weight, elapsed())
            window = []
            result.history.append(entry)
            if on_log is not None:
                on_log(entry)

        # --- alpha mask (before the upsample of the same iteration), then upsample
        if time_schedule:
            while mask_updates < len(mask_times) and elapsed() >= mask_times[mask_updates]:
                mask_update(iteration)
            n_up = min(len(upsample_times), len(voxel_list))
            while upsamples < n_up and elapsed() >= upsample_times[upsamples]:
                upsample(iteration)
        else:
            if iteration in mask_iters:
                mask_update(iteration)
            if iteration in upsample_iters and upsamples < len(voxel_list):
                upsample(iteration)

        steps_done = iteration + 1
        if checkpoint_path is not None and tc.checkpoint_every and steps_done % tc.checkpoint_every == 0:
            _save(model, checkpoint_path, steps_done)

    if window:
        entry = _log_entry(window, steps_done, optimizer.param_groups[0]["lr"], n_samples, model, l1_weight, elapsed())
        result.history.append(entry)
        if on_log is not None:
            on_log(entry)
    result.optimizer = optimizer
    if checkpoint_path is not None:
        _save(model, checkpoint_path, steps_done)
    return result


def _initial_lrs(model: TensorBase, tc: TrainConfig) -> list[float]:
    return [g["lr"] for g in model.get_optparam_groups(tc.lr_init, tc.lr_basis)]


def _shrink_ranges(model: TensorBase, new_aabb) -> tuple[list[int], list[int], Tensor, list[int]]:
    from .alpha_mask import shrink_box

    mask_grid = model.alphaMask.gridSize if model.alphaMask is not None else model.gridSize.tolist()
    return shrink_box(model.aabb.cpu(), model.gridSize.tolist(), torch.as_tensor(new_aabb).cpu(), mask_grid)


def _save(model: TensorBase, path: str, iteration: int) -> None:
    from .checkpoint import save_checkpoint

    save_checkpoint(model, path, extra={"iteration": int(iteration)})


def _log_entry(
    window: list[dict[str, Tensor]],
    step: int,
    lr: float,
    n_samples: int,
    model: TensorBase,
    l1_weight: float,
    elapsed: float = 0.0,
) -> dict:
    totals = torch.stack([w["total"] for w in window])
    if not bool(torch.isfinite(totals).all()):
        raise TrainingError(f"non-finite loss at step <= {step}")
    mse = float(torch.stack([w["mse"] for w in window]).mean())
    return {
        "step": step,
        "mse": mse,
        "psnr": float(-10.0 * math.log10(max(mse, 1e-12))),
        "total": float(totals.mean()),
        "lr_grid": float(lr),
        "l1_weight": float(l1_weight),
        "n_samples": int(n_samples),
        "grid_size": model.gridSize.tolist(),
        "elapsed": round(float(elapsed), 3),
    }
