"""torch_reference.training: the official LR schedule, Adam re-creation, mask events, the loop."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorf_common.config import SMALL_FIELD, ConfigError, RenderConfig, TrainConfig
from tensorf_common.data.sampler import BatchSampler
from torch_reference.checkpoint import resume
from torch_reference.model import TensorBase
from torch_reference.training import (
    ArrayRays,
    LossWeights,
    decay_span,
    learning_rates,
    lr_factor,
    make_optimizer,
    train,
    train_step,
)

AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
NEAR_FAR = [1.0, 5.0]
FIELD = dataclasses.replace(SMALL_FIELD, density_shift=-4.0)


def sphere_rays(n: int, seed: int = 0, radius: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays from a sphere of cameras at distance 3 towards the box; colour of an analytic coloured
    ball of ``radius`` (by its normal) on white."""
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 3))
    o = o / np.linalg.norm(o, axis=1, keepdims=True) * 3.0
    d = rng.uniform(-0.8, 0.8, size=(n, 3)) - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = np.sum(o * d, 1)
    disc = b * b - (np.sum(o * o, 1) - radius**2)
    hit = disc > 0
    p = o + d * (-b - np.sqrt(np.maximum(disc, 0)))[:, None]
    rgb = np.where(hit[:, None], (0.5 + 0.5 * p / radius) * np.array([1.0, 0.6, 0.3]), 1.0)
    return o.astype(np.float32), d.astype(np.float32), rgb.astype(np.float32)


def _tc(**kw) -> TrainConfig:
    base = dict(
        batch_size=128,
        n_iters=8,
        upsample_at=(),
        alpha_mask_at=(),
        n_voxel_init=8**3,
        n_voxel_final=10**3,
        log_every=1,
        lr_init=0.05,
        lr_basis=5e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def rays() -> ArrayRays:
    return ArrayRays(*sphere_rays(1024))


def test_lr_factor_official_values():
    tc = TrainConfig()
    assert decay_span(tc) == 30000
    assert lr_factor(tc, decay_span(tc)) == 0.1 ** (1 / 30000)
    assert decay_span(TrainConfig(lr_decay_iters=500)) == 500
    g, b = learning_rates(tc, 30000, 30000)
    assert math.isclose(g, 0.002) and math.isclose(b, 1e-4)


def test_lr_schedule_decays_per_step_and_resets_at_upsample(rays):
    tc = _tc(lr_decay_target_ratio=0.5, upsample_at=(3,))
    res = train(FIELD, RenderConfig(), tc, rays, aabb=AABB, near_far=NEAR_FAR)
    f = 0.5 ** (1 / 8)
    lrs = [h["lr_grid"] for h in res.history]
    want = [0.05 * f**k for k in range(4)] + [0.05 * f**k for k in range(4)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    # a NEW Adam at the upsample: its grid moments have seen only the 4 steps after it
    opt = res.optimizer
    p = opt.param_groups[0]["params"][0]
    assert p is res.model.density_line[0]
    assert int(opt.state[p]["step"]) == 4
    assert [e["event"] for e in res.events] == ["ray_filter_box", "upsample"]
    assert res.model.gridSize.tolist() == [10, 10, 10]
    np.testing.assert_allclose(opt.param_groups[-1]["lr"], 5e-3 * f**4, rtol=1e-12)


def test_lr_without_reset_uses_the_official_scale(rays):
    tc = _tc(lr_decay_target_ratio=0.5, upsample_at=(3,), lr_upsample_reset=False, n_iters=8)
    res = train(FIELD, RenderConfig(), tc, rays, aabb=AABB, near_far=NEAR_FAR, n_iters=5)
    assert math.isclose(res.history[4]["lr_grid"], 0.05 * 0.5 ** (3 / 8), rel_tol=1e-12)


def test_loss_decreases_on_synthetic_rays():
    tc = _tc(batch_size=256, n_iters=30, n_voxel_init=16**3, n_voxel_final=16**3)
    res = train(FIELD, RenderConfig(), tc, ArrayRays(*sphere_rays(2000)), aabb=AABB, near_far=NEAR_FAR)
    mse = [h["mse"] for h in res.history]
    assert len(mse) == 30 and all(np.isfinite(mse))
    assert np.mean(mse[-5:]) < 0.6 * np.mean(mse[:5])


def test_mask_events_shrink_switch_l1_and_keep_training(rays):
    tc = _tc(alpha_mask_at=(2, 4), n_iters=7, n_voxel_init=12**3, n_voxel_final=12**3, l1_weight_initial=1e-3, l1_weight_rest=5e-4)
    rc = RenderConfig(alpha_mask_thres=5e-3)
    torch.manual_seed(0)
    model = TensorBase.from_config(FIELD, rc, AABB, [12, 12, 12], NEAR_FAR)
    with torch.no_grad():  # density concentrated in a corner region, so the first mask update shrinks
        for ln in model.density_line:
            ln[..., 2:7, :] += 1.5
        for pl in model.density_plane:
            pl[..., 2:7, 2:7] += 1.5
    snapshots: list[torch.Tensor] = []
    res = train(
        FIELD, rc, tc, rays, aabb=AABB, near_far=NEAR_FAR, model=model,
        on_log=lambda e: snapshots.append(model.density_plane[0].detach().clone()),
    )
    assert [e["event"] for e in res.events] == ["ray_filter_box", "alpha_mask", "alpha_mask"]
    first = res.events[1]
    assert first["mask"] == [12, 12, 12] and "shrunk_aabb" in first
    grid = first["grid_size"]
    assert grid != [12, 12, 12] and model.gridSize.tolist() == grid and model.alphaMask is not None
    assert "rays_kept" in res.events[2]
    assert [h["l1_weight"] for h in res.history] == [1e-3] * 3 + [5e-4] * 4
    # the optimizer steps the model's current (cropped) Parameters, not orphaned pre-shrink ones
    current = {id(p) for p in model.parameters()}
    assert all(id(p) in current for g in res.optimizer.param_groups for p in g["params"])
    # snapshots are taken after each step, before that iteration's events: [3] and [4] are both cropped
    assert snapshots[3].shape == snapshots[4].shape == (1, 4, grid[1], grid[0])
    assert not torch.equal(snapshots[3], snapshots[4])


def test_train_step_returns_terms_and_updates(rays):
    tc = _tc()
    torch.manual_seed(0)
    model = TensorBase.from_config(FIELD, RenderConfig(), AABB, [8, 8, 8], NEAR_FAR)
    opt = make_optimizer(model, tc)
    o, d, rgb = rays.batch(np.arange(64))
    batch = torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1)
    before = model.density_plane[0].detach().clone()
    terms = train_step(
        model, opt, batch, torch.from_numpy(rgb), LossWeights(l1=1e-2, tv_density=0.1), n_samples=20, jitter=torch.full((64,), 0.5)
    )
    assert set(terms) >= {"total", "mse", "l1", "tv_density", "n_density", "n_appearance"}
    torch.testing.assert_close(terms["total"], terms["mse"] + 1e-2 * terms["l1"] + 0.1 * terms["tv_density"])
    assert not terms["total"].requires_grad
    assert not torch.equal(before, model.density_plane[0].detach())


def test_dataset_mode_draws_the_shared_batch_sampler_batches(rays):
    class Recording(ArrayRays):
        def __init__(self, base: ArrayRays) -> None:
            super().__init__(base.rays_o, base.rays_d, base.rgb)
            self.drawn: list[np.ndarray] = []

        def batch(self, idx):
            self.drawn.append(np.asarray(idx).copy())
            return super().batch(idx)

    data = Recording(rays)
    tc = _tc(n_iters=3, ray_filter=False, seed=7)
    train(FIELD, RenderConfig(), tc, data, aabb=AABB, near_far=NEAR_FAR)
    ref = BatchSampler(data.n_rays, tc.batch_size, 7)
    for got in data.drawn:
        assert np.array_equal(got, ref.next())


def test_iterator_mode_and_early_end(rays):
    def batches():
        for start in range(0, 512, 128):
            yield rays.batch(np.arange(start, start + 128))

    res = train(FIELD, RenderConfig(), _tc(n_iters=10, alpha_mask_at=(1, 2)), batches(), aabb=AABB, near_far=NEAR_FAR)
    assert len(res.history) == 4 and res.history[-1]["step"] == 4


def test_checkpoint_written_and_resumable(rays, tmp_path: Path):
    path = tmp_path / "run.th"
    res = train(FIELD, RenderConfig(), _tc(n_iters=3), rays, aabb=AABB, near_far=NEAR_FAR, checkpoint_path=str(path))
    model, extra = resume(path)
    assert extra == {"iteration": 3}
    rays_t = torch.cat([torch.from_numpy(rays.rays_o[:16]), torch.from_numpy(rays.rays_d[:16])], -1)
    with torch.no_grad():
        assert torch.equal(model(rays_t)[0], res.model(rays_t)[0])


def test_unsupported_options_are_config_errors(rays):
    with pytest.raises(ConfigError, match="minutes"):
        train(FIELD, RenderConfig(), _tc(minutes=1.0), rays, aabb=AABB, near_far=NEAR_FAR)
    with pytest.raises(ConfigError, match="precision"):
        train(FIELD, RenderConfig(), _tc(precision="bf16"), rays, aabb=AABB, near_far=NEAR_FAR)


def test_resize_mode_keeps_adam_moments_through_the_upsample(rays):
    tc = _tc(upsample_at=(2,), n_iters=4, optimizer_on_upsample="resize")
    res = train(FIELD, RenderConfig(), tc, rays, aabb=AABB, near_far=NEAR_FAR)
    opt, m = res.optimizer, res.model
    assert m.gridSize.tolist() == [10, 10, 10]
    for group in opt.param_groups[:4]:
        for p in group["params"]:
            st = opt.state[p]
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
            assert int(st["step"]) == 4  # moments carried over, not restarted
    assert math.isclose(res.history[3]["lr_grid"], 0.05)  # the LR is still reset
