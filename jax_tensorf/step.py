"""One training step as a pure function: the loss, its gradient, Adam with two learning-rate
groups, and the optimizer-state surgery that shrinks and upsamples need.

Nothing here keeps state or talks to the host: :mod:`jax_tensorf.training` schedules these steps.
``train_step`` is ``(params, opt_state, state, rays_o, rays_d, rgb, key, hyper, jitter=None) ->
(params, opt_state, metrics)``; the learning rates and regulariser weights come in ``hyper``
(traced), so a new rate never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.dynamic_scale import DynamicScale

from tensorf_common.config import TrainConfig
from tensorf_common.errors import CheckpointError

from . import fields
from .checkpoint import flatten, unflatten
from .model import render_model
from .precision import FP32, Policy
from .regularizers import density_l1, ortho_loss, tv_loss
from .sampling import per_ray_jitter


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------


def group_labels(params: dict) -> dict:
    """'grid' for planes and lines (lr_init), 'basis' for the basis matrix and MLP (lr_basis)."""
    return {k: jax.tree.map(lambda _: "grid" if k in ("density", "app") else "basis", v) for k, v in params.items()}


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Adam moments only; the per-group learning rate is applied in the step (it changes every step)."""
    return optax.scale_by_adam(b1=tc.adam_betas[0], b2=tc.adam_betas[1], eps=tc.adam_eps)


# ---------------------------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegFlags:
    """Which regularisers are active (static: inactive ones are not computed at all)."""

    l1: bool = True
    tv_density: bool = False
    tv_app: bool = False
    ortho: bool = False

    @classmethod
    def of(cls, tc: TrainConfig) -> "RegFlags":
        """The regularisers a run's config weights above zero."""
        return cls(l1=tc.l1_weight_initial > 0 or tc.l1_weight_rest > 0, tv_density=tc.tv_weight_density > 0,
                   tv_app=tc.tv_weight_app > 0, ortho=tc.ortho_weight > 0)


def loss_terms(
    params, state, rays_o, rays_d, rgb, key, hyper, jitter=None, *, cfg, opts, variant, reg: RegFlags,
    policy: Policy = FP32, ray_offset=0,
):
    """Total loss and its parts: MSE on colour plus the weighted regularisers. ``jitter`` (one
    offset per ray) is drawn from ``key`` unless given (parity tests pass the torch side's).
    ``ray_offset`` is the index of the first ray of this batch in the whole batch (data parallel).
    ``hyper`` holds the traced rates and weights, and (static-shape training) ``n_samples``, the
    samples per ray in use."""
    k_jitter, k_app = jax.random.split(key)
    if jitter is None:
        jitter = per_ray_jitter(k_jitter, rays_o.shape[0], ray_offset)
    out = render_model(
        params, state, rays_o, rays_d, jitter, k_app, ray_offset, cfg=cfg, opts=opts, variant=variant, policy=policy,
        n_active=hyper.get("n_samples"),
    )
    sizes = state.grid_size
    mse = jnp.mean((out["rgb"] - rgb) ** 2)
    total = mse
    parts = {"mse": mse}
    if reg.l1:
        parts["l1"] = density_l1(params["density"], sizes)
        total = total + hyper["l1"] * parts["l1"]
    if reg.tv_density:
        parts["tv_density"] = tv_loss(params["density"], sizes)
        total = total + hyper["tv_density"] * parts["tv_density"]
    if reg.tv_app:
        parts["tv_app"] = tv_loss(params["app"], sizes)
        total = total + hyper["tv_app"] * parts["tv_app"]
    if reg.ortho:
        parts["ortho"] = ortho_loss(params["density"]["lines"]) + ortho_loss(params["app"]["lines"])
        total = total + hyper["ortho"] * parts["ortho"]
    return total, (parts, out["stats"])


class ScaledState(NamedTuple):
    """Optimizer state with a dynamic loss scale (fp16): Adam's state and flax's DynamicScale."""

    adam: Any
    scale: DynamicScale


def _train_step(
    params, opt_state, state, rays_o, rays_d, rgb, key, hyper, jitter=None, *, cfg, opts, variant, reg, adam,
    policy: Policy = FP32, axis: Optional[str] = None,
):
    """One optimisation step. With ``axis`` it runs per device inside ``shard_map`` over that mesh
    axis: each device renders its share of the rays, gradients and losses are averaged."""
    ray_offset = 0 if axis is None else jax.lax.axis_index(axis) * rays_o.shape[0]
    loss_fn = functools.partial(
        loss_terms, state=state, rays_o=rays_o, rays_d=rays_d, rgb=rgb, key=key, hyper=hyper, jitter=jitter,
        cfg=cfg, opts=opts, variant=variant, reg=reg, policy=policy, ray_offset=ray_offset,
    )
    scaled = isinstance(opt_state, ScaledState)
    if scaled:
        new_scale, finite, (total, (parts, stats)), grads = opt_state.scale.value_and_grad(
            loss_fn, has_aux=True, axis_name=axis
        )(params)
        adam_state = opt_state.adam
    else:
        (total, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if axis is not None:
            grads = jax.lax.pmean(grads, axis)
        adam_state = opt_state
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    if axis is not None:
        total = jax.lax.pmean(total, axis)
        parts = jax.lax.pmean(parts, axis)
        stats = jax.lax.psum(stats, axis)
    finite = finite & jnp.isfinite(total)
    updates, new_adam = adam.update(grads, adam_state, params)
    labels = group_labels(params)
    new_params = jax.tree.map(
        lambda p, u, lab: p - (hyper["lr_grid"] if lab == "grid" else hyper["lr_basis"]) * u,
        params,
        updates,
        labels,
    )
    # a non-finite step leaves parameters and moments as they were (with fp16 scaling this is the
    # expected skip; otherwise the host stops with the last good parameters)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_opt = keep(new_adam, adam_state)
    if scaled:
        new_opt = ScaledState(new_opt, new_scale)
    metrics = dict(parts, total=total, finite=finite, **stats)
    if scaled:
        metrics["loss_scale"] = new_scale.scale
    return keep(new_params, params), new_opt, metrics


train_step = jax.jit(
    _train_step,
    static_argnames=("cfg", "opts", "variant", "reg", "adam", "policy", "axis"),
    donate_argnames=("params", "opt_state"),
)
"""The jitted train step: ``(params, opt_state, state, rays_o, rays_d, rgb, key, hyper, jitter=None) ->
(params, opt_state, metrics)``; ``hyper`` holds lr_grid, lr_basis, l1, tv_density, tv_app, ortho;
static keywords: cfg (FieldConfig), opts (RenderOptions), variant, reg (RegFlags), adam, policy."""


def make_sharded_step(mesh, *, cfg, opts, variant, reg, adam, policy: Policy = FP32, with_jitter: bool = False):
    """The train step data-parallel over ``mesh``'s single axis: rays sharded on the batch axis,
    parameters, optimizer and field state replicated (``jax.shard_map``, no pmap). ``opts`` holds
    per-device capacities."""
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    body = functools.partial(
        _train_step, cfg=cfg, opts=opts, variant=variant, reg=reg, adam=adam, policy=policy, axis=axis
    )
    batch = P(axis)
    in_specs = (P(), P(), P(), batch, batch, batch, P(), P()) + ((batch,) if with_jitter else ())
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P(), P()), check_vma=False)
    return jax.jit(fn, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------------------------
# Moment surgery for the 'resize' option and for shrinks
# ---------------------------------------------------------------------------------------------


def _map_grids(tree: dict, fn: Callable[[dict], dict]) -> dict:
    out = dict(tree)
    for name in ("density", "app"):
        out[name] = fn(tree[name])
    return out


def resize_grid_tree(grid: dict, reso, model: str) -> dict:
    if model == "VM":
        planes, lines = fields.upsample_vm(grid["planes"], grid["lines"], reso)
        return {"planes": planes, "lines": lines}
    return {"lines": fields.upsample_cp(grid["lines"], reso)}


def crop_grid_tree(grid: dict, t_l, b_r, model: str) -> dict:
    if model == "VM":
        planes, lines = fields.shrink_vm(grid["planes"], grid["lines"], t_l, b_r)
        return {"planes": planes, "lines": lines}
    return {"lines": fields.shrink_cp(grid["lines"], t_l, b_r)}


def map_adam_moments(opt_state, fn: Callable[[dict], dict]):
    """Apply a grid transformation to Adam's first and second moments (keeps the step count)."""
    if isinstance(opt_state, ScaledState):
        return ScaledState(map_adam_moments(opt_state.adam, fn), opt_state.scale)
    return opt_state._replace(mu=_map_grids(opt_state.mu, fn), nu=_map_grids(opt_state.nu, fn))


def init_optimizer_state(adam: optax.GradientTransformation, params, policy: Policy, scale=None):
    """Adam's state, wrapped with a loss scale when the policy scales (keeps ``scale`` if given,
    so that re-creating Adam at an upsample does not reset the fp16 scale). One compiled program
    (eagerly, every distinct leaf shape compiles its own zeros)."""
    state = jax.jit(adam.init)(params)
    if policy.loss_scale == "dynamic":
        return ScaledState(state, scale if scale is not None else DynamicScale())
    return state


def optimizer_arrays(opt_state) -> dict:
    """Adam's state (and an fp16 loss scale) as ``{"opt/...": array}`` for a checkpoint."""
    arrays = {}
    if isinstance(opt_state, ScaledState):
        arrays["opt/loss_scale"] = np.asarray(opt_state.scale.scale)
        arrays["opt/loss_scale_fin_steps"] = np.asarray(opt_state.scale.fin_steps)
        opt_state = opt_state.adam
    arrays["opt/count"] = np.asarray(opt_state.count)
    arrays.update(flatten(opt_state.mu, "opt/mu"))
    arrays.update(flatten(opt_state.nu, "opt/nu"))
    return arrays


def optimizer_from_arrays(arrays: dict, adam: optax.GradientTransformation, params, policy: Policy, where: str):
    """The inverse of :func:`optimizer_arrays` for ``params`` (``where`` names the file in errors)."""
    template = jax.eval_shape(lambda: init_optimizer_state(adam, params, policy))
    adam_template = template.adam if isinstance(template, ScaledState) else template
    if "opt/count" not in arrays:
        raise CheckpointError(f"{where}: missing array 'opt/count'")
    adam_state = adam_template._replace(
        count=jnp.asarray(arrays["opt/count"]),
        mu=unflatten(params, arrays, "opt/mu", where),
        nu=unflatten(params, arrays, "opt/nu", where),
    )
    if not isinstance(template, ScaledState):
        return adam_state
    if "opt/loss_scale" not in arrays:
        raise CheckpointError(f"{where}: missing array 'opt/loss_scale' for a loss-scaled (fp16) run")
    scale = template.scale.replace(
        scale=jnp.asarray(arrays["opt/loss_scale"]), fin_steps=jnp.asarray(arrays["opt/loss_scale_fin_steps"])
    )
    return ScaledState(adam_state, scale)
