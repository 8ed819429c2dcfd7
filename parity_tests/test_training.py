"""training: the loss and its parts, the gradient of every parameter, one Adam step, the learning-rate
schedule, and a 100-step training trajectory (same init through the converter, same batches, same
per-step jitter, LR decay, an alpha-mask update with shrink and an upsample with a new Adam and the
LR reset on both sides) ending within 0.05 dB of PSNR.

The JAX side is driven step by step with ``jax_tensorf.step.train_step`` (jitter passed in), the
torch side by ``torch_reference.training.Trainer`` itself (its jitter generator reproduced here).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.step as jt
from tensorf_common import schedule as sch
import torch_reference.step as ts
from torch_reference.training import Trainer
from compare import EXACT, FP32, GRAD, PSNR, assert_close, assert_scalar_close
from tensorf_common.config import SMALL_FIELD, ExperimentConfig, RenderConfig, TrainConfig
from tensorf_common.data.sampler import BatchSampler
from tensorf_common.geometry import n_to_reso, train_n_samples
from tensorf_convert.state_dict import ModelSpec, torch_to_jax

WEIGHTS = dict(l1=8e-5, tv_density=0.1, tv_app=0.01, ortho=1e-3)



def _hyper(lr_grid: float, lr_basis: float, l1: float = 0.0, tv_density: float = 0.0, tv_app: float = 0.0, ortho: float = 0.0) -> dict:
    """The step's float32 scalars (numpy: eager ``jnp.float32`` costs a dispatch per scalar)."""
    return {k: np.float32(v) for k, v in dict(lr_grid=lr_grid, lr_basis=lr_basis, l1=l1, tv_density=tv_density, tv_app=tv_app, ortho=ortho).items()}


def _batch(twins, n=1024, seed=0):
    o, d = twins.camera_rays(n, seed=seed)
    rgb = np.random.default_rng(seed + 1).random((n, 3)).astype(np.float32)
    return o, d, rgb, twins.jitter(n, seed=seed + 2)


def _jax_loss(jm, o, d, rgb, jit, weights: dict, precision: dict):
    n = train_n_samples(jm.grid_size, jm.render_cfg.step_ratio)
    opts = jm.render_options(n, train=True)
    reg = jt.RegFlags(**{k: v > 0 for k, v in weights.items()})
    hyper = _hyper(0.0, 0.0, **weights)

    def loss(params):
        total, (parts, _) = jt.loss_terms(
            params, jm.state, jnp.asarray(o), jnp.asarray(d), jnp.asarray(rgb), jax.random.PRNGKey(0), hyper, jnp.asarray(jit),
            cfg=jm.field_cfg, opts=opts, variant="flat", reg=reg, **precision,
        )
        return total, parts

    (total, parts), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(jm.params)
    return total, parts, grads, n


def _torch_loss(tm, o, d, rgb, jit, weights: dict, n: int):
    rays = torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1)
    tm.zero_grad(set_to_none=True)
    total, parts = ts.loss_terms(tm, rays, torch.from_numpy(rgb), ts.LossWeights(**weights), n_samples=n, jitter=torch.from_numpy(jit))
    total.backward()
    grads = {k: (torch.zeros_like(p) if p.grad is None else p.grad) for k, p in tm.named_parameters()}
    return total, parts, grads


@pytest.mark.parametrize("model,shading", [("VM", "MLP_Fea"), ("CP", "MLP_Fea")])
def test_loss_and_gradients_of_every_parameter(twins, model, shading):
    tm, jm = twins.make_pair(model, shading)
    o, d, rgb, jit = _batch(twins)
    total_j, parts_j, grads_j, n = _jax_loss(jm, o, d, rgb, jit, WEIGHTS, twins.precision_kwargs(jt.loss_terms))
    total_t, parts_t, grads_t = _torch_loss(tm, o, d, rgb, jit, WEIGHTS, n)
    names = ["mse", "l1", "tv_density", "tv_app", "ortho"]
    assert_close(
        f"training.loss[{model},{shading}]",
        {"total": total_j, **{k: parts_j[k] for k in names}},
        {"total": total_t.detach(), **{k: parts_t[k].detach() for k in names}},
    )
    # torch grads (official names and layout) -> JAX layout through the key table
    g_t, report = torch_to_jax(grads_t, ModelSpec.from_field_config(jm.field_cfg, jm.grid_size), as_jax=False)
    assert report.ok and len(report.converted) == len(jax.tree.leaves(grads_j))
    assert_close(f"training.gradients[{model},{shading}]", jax.tree.map(np.asarray, grads_j), g_t, GRAD)


def test_lr_schedule(parity_scene):
    """The torch Trainer's optimizer rates (decayed by a product after every step, official) against
    the shared schedule's closed form that the JAX trainer uses, over 100 steps with the reset (a new
    Adam at the initial rates) after the upsample at iteration 49."""
    tc = TrainConfig(n_iters=100, lr_decay_target_ratio=0.1, batch_size=64, upsample_at=(49,), alpha_mask_at=(),
                     n_voxel_init=6**3, n_voxel_final=8**3, ray_filter=False, log_every=1)
    trainer = Trainer(ExperimentConfig(field=SMALL_FIELD, train=tc), parity_scene, log=lambda s: None, device="cpu").run()
    assert [e["event"] for e in trainer.events] == ["upsample"] and trainer.events[0]["step"] == 50
    span = sch.decay_span_iters(tc)
    torch_lrs = np.array([(h.lr_grid, h.lr_basis) for h in trainer.history])
    jax_lrs = np.array([sch.learning_rates(tc, it - (50 if it >= 50 else 0), span) for it in range(100)])
    assert torch_lrs.shape == jax_lrs.shape == (100, 2)
    rel = jax_lrs / torch_lrs - 1.0
    assert_close("training.learning_rates[100 steps, reset at 50] (relative)", rel, np.zeros_like(rel))


# ---------------------------------------------------------------------------------------------
# 100-step trajectory
# ---------------------------------------------------------------------------------------------

TRAJ_STEPS = 100
MASK_AT = 30
UPSAMPLE_AT = 60


def _trajectory_configs():
    field = dataclasses.replace(SMALL_FIELD, density_shift=-4.0)
    train = TrainConfig(
        batch_size=512,
        n_iters=TRAJ_STEPS,
        upsample_at=(UPSAMPLE_AT,),
        alpha_mask_at=(MASK_AT,),
        n_voxel_init=12**3,
        n_voxel_final=18**3,
        lr_init=0.02,
        lr_basis=1e-3,
        ray_filter=False,
        log_every=10,
        seed=7,
    )
    return field, RenderConfig(), train


def _psnr_per_image(rgb: np.ndarray, gt: np.ndarray, n_views: int) -> float:
    err = ((rgb - gt) ** 2).reshape(n_views, -1).mean(-1)
    return float(np.mean(-10.0 * np.log10(err)))


@pytest.fixture(scope="module")
def trajectory(twins, parity_scene):
    """Both trainings, run once for the tests below (one set of JAX compilations): the torch trainer
    itself, a one-step torch run from the same init, and the JAX steps with step 0 kept."""
    from jax_tensorf import alpha_mask as jam

    field, render, tc = _trajectory_configs()
    split = parity_scene["train"]
    make = lambda: Trainer(ExperimentConfig(field=field, render=render, train=tc), parity_scene,  # noqa: E731
                           log=lambda s: None, device="cpu")

    # --- torch: the reference trainer itself (and one stopped after its first step), the same init
    first = make().run(max_steps=1)
    res = make()
    jm = twins.to_jax(res.model, render)  # the same init, through the converter
    res.run()

    # --- JAX: train_step driven step by step with the torch loop's batches and jitter
    sampler = BatchSampler(split.n_rays, tc.batch_size, tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    adam = jt.make_optimizer(tc)
    init_opt = jax.jit(adam.init)
    params = jm.params  # donated step by step; jm.params follows
    opt = init_opt(params)
    span, reset, l1 = sch.decay_span_iters(tc), 0, tc.l1_weight_initial
    n_samples = train_n_samples(jm.grid_size, render.step_ratio)
    mse_j, step0 = [], None
    step_precision = twins.precision_kwargs(jt._train_step)
    key = jax.random.PRNGKey(0)  # unused by the 'threshold' strategy when the jitter is given
    for it in range(TRAJ_STEPS):
        o, d, rgb = split.batch(sampler.next())
        jit = torch.rand(tc.batch_size, generator=gen).numpy()
        lr_g, lr_b = sch.learning_rates(tc, it - reset, span)
        params, opt, metrics = jt.train_step(
            params, opt, jm.state, o, d, rgb, key, _hyper(lr_g, lr_b, l1=l1), jit,
            cfg=field, opts=jm.render_options(n_samples, train=True), variant="flat",
            reg=jt.RegFlags(l1=True), adam=adam, **step_precision,
        )
        jm.params = params
        mse_j.append(metrics["mse"])
        if it == 0:  # host copies: the next step donates these buffers
            step0 = {"params": jax.device_get(params), "mu": jax.device_get(opt.mu), "spec": ModelSpec.from_field_config(field, jm.grid_size)}
        if it == MASK_AT:  # first mask update: shrink, crop the Adam moments, switch the L1 weight
            new_aabb = jm.update_alpha_mask(jm.grid_size)
            assert new_aabb is not None
            t_l, b_r, _, _ = jam.shrink_box(jm.aabb, jm.grid_size, new_aabb, jm.mask_grid_size)
            jm.shrink(new_aabb)
            opt = jt.map_adam_moments(opt, lambda g: jt.crop_grid_tree(g, t_l, b_r, field.model))
            params = jm.params
            l1 = tc.l1_weight_rest
            n_samples = train_n_samples(jm.grid_size, render.step_ratio)
        if it == UPSAMPLE_AT:  # upsample, a new Adam, the learning rates reset
            jm.upsample(n_to_reso(tc.voxel_schedule()[0], jm.aabb))
            params = jm.params
            opt = init_opt(params)
            reset = it + 1
            n_samples = train_n_samples(jm.grid_size, render.step_ratio)
    mse_j = np.asarray(jax.device_get(mse_j))
    return {"tc": tc, "torch": res, "torch_first": first, "jax": jm, "jax_mse": mse_j, "jax_step0": step0}


def test_one_adam_step(trajectory):
    """Parameters and Adam's first moments after the first step (same init, batch, jitter, LR)."""
    first, step0 = trajectory["torch_first"], trajectory["jax_step0"]
    p_t, _ = torch_to_jax(first.model.state_dict(), step0["spec"], as_jax=False)
    assert_close("training.adam_step.params", step0["params"], p_t)
    mu_t = {k: first.optimizer.state[p]["exp_avg"] for k, p in first.model.named_parameters()}
    mu_t, _ = torch_to_jax(mu_t, step0["spec"], as_jax=False)
    # the first moment is (1 - b1) * grad: compared like gradients
    assert_close("training.adam_step.first_moment", step0["mu"], mu_t, GRAD)


@pytest.mark.slow
def test_training_trajectory_100_steps(trajectory, parity_scene):
    from torch_reference.model import render_batched

    tc, res, tm, jm = trajectory["tc"], trajectory["torch"], trajectory["torch"].model, trajectory["jax"]
    assert [e["event"] for e in res.events] == ["alpha_mask", "upsample"], res.events
    # --- the schedule landed on the same geometry
    assert jm.grid_size == tm.gridSize.tolist()
    assert_close("training.trajectory.aabb", jm.state.aabb, tm.aabb, FP32)
    assert_close("training.trajectory.alpha_mask", jm.state.mask, tm.alphaMask.mask, EXACT)
    # --- training PSNR per log window, as the torch trainer logs it: every 10 steps and at the
    # steps with events (after the steps of iterations 30 and 60)
    steps = [h.step for h in res.history]
    assert steps == sorted(set(range(tc.log_every, TRAJ_STEPS + 1, tc.log_every)) | {MASK_AT + 1, UPSAMPLE_AT + 1})
    bounds = [0] + steps
    mse_j = trajectory["jax_mse"]
    psnr_j = np.array([-10.0 * np.log10(mse_j[a:b].mean()) for a, b in zip(bounds, bounds[1:])])
    psnr_t = np.array([h.psnr for h in res.history])
    assert psnr_t[-1] > psnr_t[0] + 1.0  # it learns
    assert_close("training.trajectory.train_psnr_per_log_window", psnr_j, psnr_t, PSNR)
    # --- final held-out PSNR (official: mean of per-image PSNRs on float renders)
    test = parity_scene["test"]
    o, d = test.rays(np.arange(test.n_rays))
    gt = test.rgb_at(np.arange(test.n_rays))
    rgb_j = np.asarray(jm.render(o, d, jm.render_options(jm.n_samples, train=False))["rgb"])  # one compile
    rgb_t, _ = render_batched(tm, torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1), chunk=1024)
    p_j, p_t = _psnr_per_image(rgb_j, gt, test.n_views), _psnr_per_image(rgb_t.numpy(), gt, test.n_views)
    assert math.isfinite(p_j) and p_t > 12.0
    assert_scalar_close("training.trajectory.final_test_psnr", p_j, p_t, PSNR, note=f"JAX {p_j:.4f} dB, torch {p_t:.4f} dB")
