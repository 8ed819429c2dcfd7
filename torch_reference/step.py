"""One training step: the loss, its gradient and Adam over the official two learning-rate groups, and
the optimizer surgery that shrinks and upsamples need (the twin of :mod:`jax_tensorf.step`).

Nothing here keeps state or decides when: :mod:`torch_reference.training` schedules these steps
with :mod:`tensorf_common.schedule`. ``train_step`` is ``(model, optimizer, rays, rgbs, weights,
*, n_samples, jitter) -> terms``; the learning rates live in the optimizer's groups
(:func:`set_learning_rates`, :func:`decay_learning_rates`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from tensorf_common.config import TrainConfig

from . import fields
from .model import TensorBase, TensorCP, TensorVMSplit

# ---------------------------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------------------------


def make_optimizer(model: TensorBase, tc: TrainConfig, rates: Optional[tuple[float, float]] = None) -> torch.optim.Adam:
    """Adam over the official groups (``get_optparam_groups``) at ``rates`` = (lr_grid, lr_basis),
    by default the initial ones (``lr_init``, ``lr_basis``)."""
    lr_grid, lr_basis = rates if rates is not None else (tc.lr_init, tc.lr_basis)
    groups = model.get_optparam_groups(lr_grid, lr_basis)
    return torch.optim.Adam(groups, betas=tuple(tc.adam_betas), eps=tc.adam_eps)


def set_learning_rates(optimizer: torch.optim.Optimizer, model: TensorBase, lr_grid: float, lr_basis: float) -> None:
    """Set the grid groups (the first ``len(model.grid_groups())``) to ``lr_grid``, the others
    (basis matrix, render MLP) to ``lr_basis``."""
    n_grid = len(model.grid_groups())
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr_grid if i < n_grid else lr_basis


def learning_rates_of(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(lr_grid, lr_basis) of an optimizer made by :func:`make_optimizer` (first and last group)."""
    return float(optimizer.param_groups[0]["lr"]), float(optimizer.param_groups[-1]["lr"])


def decay_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """``lr *= factor`` for every group (official, after each step)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor


def rebuild_optimizer(
    old: torch.optim.Optimizer, model: TensorBase, tc: TrainConfig, transform: Callable[..., Any]
) -> torch.optim.Adam:
    """A new Adam over the model's current parameters, at the old learning rates, whose grid moments
    are the old ones mapped by ``transform`` (see :func:`grid_transform`).

    Relies on the official group order: the grid groups first (``grid_groups()``), then the basis
    matrix and the render MLP, whose Parameter objects do not change.
    """
    new = make_optimizer(model, tc)
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
    nothing is synced to the host. The learning rates are the optimizer's (set by the caller).
    """
    model.train()
    total, parts = loss_terms(
        model, rays, rgbs, weights, n_samples=n_samples, white_bg=white_bg, jitter=jitter, train_white_bg=train_white_bg
    )
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: v.detach() for k, v in parts.items()}
