"""torch_reference.training: the Trainer with the official schedule (learning rates decaying per step
and reset at upsamples, Adam re-created or resized, mask events), the shared batches, resuming, and
the settings it refuses; torch_reference.step: one step's terms."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorf_common.config import SMALL_FIELD, ConfigError, ExperimentConfig, RenderConfig, TrainConfig
from tensorf_common.data.sampler import BatchSampler
from tensorf_common.errors import CheckpointError
from tensorf_common.schedule import learning_rates, lr_factor
from torch_reference.checkpoint import EXTRA_KEY, atomic_torch_save, load_training_state
from torch_reference.model import TensorBase
from torch_reference.step import LossWeights, make_optimizer, train_step
from torch_reference.training import Trainer, check_supported

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


class ArrayRays:
    """In-memory rays with the split interface the trainer uses (``n_rays``, ``rays(idx)``, ``batch(idx)``)."""

    def __init__(self, rays_o: np.ndarray, rays_d: np.ndarray, rgb: np.ndarray) -> None:
        self.rays_o, self.rays_d, self.rgb = rays_o, rays_d, rgb
        self.drawn: list[np.ndarray] = []

    @property
    def n_rays(self) -> int:
        return len(self.rays_o)

    def rays(self, idx) -> tuple[np.ndarray, np.ndarray]:
        return self.rays_o[idx], self.rays_d[idx]

    def batch(self, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.drawn.append(np.asarray(idx).copy())
        return self.rays_o[idx], self.rays_d[idx], self.rgb[idx]


@dataclasses.dataclass
class RayData:
    """A dataset of one in-memory training split, with the fields the trainer reads."""

    train: ArrayRays
    aabb: np.ndarray = dataclasses.field(default_factory=lambda: np.asarray(AABB, np.float32))
    near_far: tuple = tuple(NEAR_FAR)
    white_bg: bool = True

    def __getitem__(self, name: str) -> ArrayRays:
        return {"train": self.train}[name]


def sphere_data(n: int = 1024) -> RayData:
    return RayData(ArrayRays(*sphere_rays(n)))


def _cfg(render: RenderConfig = RenderConfig(), **kw) -> ExperimentConfig:
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
    return ExperimentConfig(field=FIELD, render=render, train=TrainConfig(**base))


def _trainer(cfg: ExperimentConfig, data=None, **kw) -> Trainer:
    return Trainer(cfg, data if data is not None else sphere_data(), log=lambda s: None, device="cpu", **kw)


def test_lr_schedule_decays_per_step_and_resets_at_upsample():
    t = _trainer(_cfg(lr_decay_target_ratio=0.5, upsample_at=(3,))).run()
    f = 0.5 ** (1 / 8)
    lrs = [h.lr_grid for h in t.history]
    want = [0.05 * f**k for k in range(4)] + [0.05 * f**k for k in range(4)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12)
    np.testing.assert_allclose([h.lr_basis for h in t.history], [5e-3 / 0.05 * w for w in want], rtol=1e-12)
    # a NEW Adam at the upsample: its grid moments have seen only the 4 steps after it
    opt = t.optimizer
    p = opt.param_groups[0]["params"][0]
    assert p is t.model.density_line[0]
    assert int(opt.state[p]["step"]) == 4
    assert [e["event"] for e in t.events] == ["ray_filter_box", "upsample"]
    assert t.events[1]["step"] == 4  # after the step of iteration 3 (steps done, as in JAX)
    assert t.model.gridSize.tolist() == [10, 10, 10]
    np.testing.assert_allclose(opt.param_groups[-1]["lr"], 5e-3 * f**4, rtol=1e-12)


def test_lr_without_reset_continues_on_the_schedule():
    """Without the reset the new Adam continues at the schedule's rate (the official code restarts it
    at ``ratio ** (iteration / n_iters)``, one step behind its own decay: a documented difference)."""
    cfg = _cfg(lr_decay_target_ratio=0.5, upsample_at=(3,), lr_upsample_reset=False, n_iters=8)
    t = _trainer(cfg).run(max_steps=5)
    assert t.pos.step == 5 and len(t.history) == 5
    for k, h in enumerate(t.history):
        assert math.isclose(h.lr_grid, learning_rates(cfg.train, k, 8)[0], rel_tol=1e-12), k


def test_loss_decreases_on_synthetic_rays():
    cfg = _cfg(batch_size=256, n_iters=30, n_voxel_init=16**3, n_voxel_final=16**3)
    t = _trainer(cfg, sphere_data(2000)).run()
    mse = [h.mse for h in t.history]
    assert len(mse) == 30 and all(np.isfinite(mse))
    assert np.mean(mse[-5:]) < 0.6 * np.mean(mse[:5])
    assert t.first_step_at is not None and t.compiles == [] and t.setup_seconds > 0


def test_mask_events_shrink_switch_l1_and_keep_training():
    cfg = _cfg(RenderConfig(alpha_mask_thres=5e-3), alpha_mask_at=(2, 4), n_iters=7, n_voxel_init=12**3,
               n_voxel_final=12**3, l1_weight_initial=1e-3, l1_weight_rest=5e-4)
    t = _trainer(cfg)
    model = t.model
    with torch.no_grad():  # density concentrated in a corner region, so the first mask update shrinks
        for ln in model.density_line:
            ln[..., 2:7, :] += 1.5
        for pl in model.density_plane:
            pl[..., 2:7, 2:7] += 1.5
    snapshots: list[torch.Tensor] = []
    t.run(on_log=lambda point: snapshots.append(model.density_plane[0].detach().clone()))
    assert [e["event"] for e in t.events] == ["ray_filter_box", "alpha_mask", "alpha_mask"]
    first = t.events[1]
    assert first["mask"] == [12, 12, 12] and "shrunk_aabb" in first and first["step"] == 3
    grid = first["grid_size"]
    assert grid != [12, 12, 12] and model.gridSize.tolist() == grid and model.alphaMask is not None
    assert "rays_kept" in t.events[2] and t.sampler.pool_size == t.events[2]["rays_kept"]
    assert [h.l1_weight for h in t.history] == [1e-3] * 3 + [5e-4] * 4
    # the optimizer steps the model's current (cropped) Parameters, not orphaned pre-shrink ones
    current = {id(p) for p in model.parameters()}
    assert all(id(p) in current for g in t.optimizer.param_groups for p in g["params"])
    # a log point comes after its step and before that step's events: [2] is not cropped yet, [3] and [4] are
    assert snapshots[2].shape == (1, 4, 12, 12)
    assert snapshots[3].shape == snapshots[4].shape == (1, 4, grid[1], grid[0])
    assert not torch.equal(snapshots[3], snapshots[4])


def test_train_step_returns_terms_and_updates():
    tc = _cfg().train
    torch.manual_seed(0)
    model = TensorBase.from_config(FIELD, RenderConfig(), AABB, [8, 8, 8], NEAR_FAR)
    opt = make_optimizer(model, tc)
    o, d, rgb = sphere_data().train.batch(np.arange(64))
    batch = torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1)
    before = model.density_plane[0].detach().clone()
    terms = train_step(
        model, opt, batch, torch.from_numpy(rgb), LossWeights(l1=1e-2, tv_density=0.1), n_samples=20, jitter=torch.full((64,), 0.5)
    )
    assert set(terms) >= {"total", "mse", "l1", "tv_density", "n_density", "n_appearance"}
    torch.testing.assert_close(terms["total"], terms["mse"] + 1e-2 * terms["l1"] + 0.1 * terms["tv_density"])
    assert not terms["total"].requires_grad
    assert not torch.equal(before, model.density_plane[0].detach())


def test_draws_the_shared_batch_sampler_batches():
    data = sphere_data()
    t = _trainer(_cfg(n_iters=3, ray_filter=False, seed=7), data).run()
    ref = BatchSampler(data.train.n_rays, 128, 7)
    assert len(data.train.drawn) == 3
    for got in data.train.drawn:
        assert np.array_equal(got, ref.next())
    assert t.pos.step == 3


def test_initial_grids_come_from_the_seed_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = _trainer(_cfg(seed=5))
    assert torch.equal(torch.rand(3), expected)
    b = _trainer(_cfg(seed=5))
    c = _trainer(_cfg(seed=6))
    assert torch.equal(a.model.density_plane[0], b.model.density_plane[0])
    assert not torch.equal(a.model.density_plane[0], c.model.density_plane[0])


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_continues_bit_identically(tmp_path: Path):
    """A run saved after 4 steps (past the first mask update and upsample) and resumed ends exactly
    where the uninterrupted run does: parameters, Adam, batches, jitter, schedule and logs."""
    cfg = _cfg(n_iters=9, alpha_mask_at=(2, 5), upsample_at=(3, 6), n_voxel_final=12**3, lr_decay_target_ratio=0.5)
    straight = _trainer(cfg).run()
    first = _trainer(cfg).run(max_steps=4)
    path = first.save_checkpoint(tmp_path / "checkpoint.th")
    again = Trainer.resume(path, sphere_data(), log=lambda s: None, device="cpu")
    assert again.out_dir == tmp_path and again.pos == first.pos and again.history == first.history
    again.run()
    got, want = _params(again.model), _params(straight.model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert again.model.alphaMask is not None and torch.equal(again.model.alphaMask.alpha_volume, straight.model.alphaMask.alpha_volume)
    assert [dataclasses.replace(h, elapsed=0, train_seconds=0, rays_per_s=0) for h in again.history] == [
        dataclasses.replace(h, elapsed=0, train_seconds=0, rays_per_s=0) for h in straight.history
    ]
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("elapsed", "train_seconds", "seconds")} for e in es]  # noqa: E731
    assert strip(again.events) == strip(straight.events)
    assert again.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_damaged_or_foreign_checkpoints_are_refused_naming_file_and_field(tmp_path: Path):
    t = _trainer(_cfg(n_iters=2)).run()
    path = t.save_checkpoint(tmp_path / "checkpoint.th")
    # a model file (no training state)
    from torch_reference.checkpoint import save_checkpoint

    save_checkpoint(t.model, tmp_path / "model.th")
    with pytest.raises(CheckpointError, match=r"model\.th: .*not a resumable training run"):
        Trainer.resume(tmp_path / "model.th", sphere_data())
    # a truncated file
    (tmp_path / "cut.th").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cut\.th: cannot read checkpoint"):
        Trainer.resume(tmp_path / "cut.th", sphere_data())
    # damaged fields
    for name, damage in (("optimizer", lambda x: x.pop("optimizer")), ("schedule", lambda x: x["schedule"].update(bogus=1)),
                         ("sampler", lambda x: x["sampler"].update(pos=10**9)), ("config", lambda x: x["config"]["train"].update(n_iters=-1))):
        state = load_training_state(path)
        damage(state[EXTRA_KEY])
        atomic_torch_save(state, tmp_path / f"{name}.th")
        with pytest.raises(CheckpointError) as exc:
            Trainer.resume(tmp_path / f"{name}.th", sphere_data())
        msg = str(exc.value)
        assert msg.startswith(f"{tmp_path / name}.th: ") and f"{EXTRA_KEY}/{name}" in msg and "\n" not in msg, msg
    # a dataset with other rays
    with pytest.raises(CheckpointError, match="sampler: the run was trained on 1024 rays"):
        Trainer.resume(path, sphere_data(512))


def test_unsupported_options_are_config_errors_and_speed_knobs_are_ignored():
    def cfg(**kw) -> ExperimentConfig:
        base = _cfg()
        sections = {s: dataclasses.replace(getattr(base, s), **kw[s]) for s in kw}
        return dataclasses.replace(base, **sections)

    for section, change, field in (("train", {"precision": "bf16"}, "train.precision"), ("train", {"devices": 2, "batch_size": 128}, "train.devices"),
                                   ("render", {"depth": "median"}, "render.depth"), ("render", {"n_samples_eval": 64}, "render.n_samples_eval")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            _trainer(cfg(**{section: change}))
    ignored = check_supported(cfg(render={"vmap_variant": "gather", "sample_capacity": 0.1}, train={"static_shapes": True}))
    assert ignored["render.vmap_variant"] == "gather" and ignored["render.sample_capacity"] == 0.1
    assert ignored["train.static_shapes"] is True and set(ignored) >= {"render.density_lookup", "render.app_capacity"}


def test_resize_mode_keeps_adam_moments_through_the_upsample():
    t = _trainer(_cfg(upsample_at=(2,), n_iters=4, optimizer_on_upsample="resize")).run()
    opt, m = t.optimizer, t.model
    assert m.gridSize.tolist() == [10, 10, 10]
    for group in opt.param_groups[:4]:
        for p in group["params"]:
            st = opt.state[p]
            assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
            assert int(st["step"]) == 4  # moments carried over, not restarted
    assert math.isclose(t.history[3].lr_grid, 0.05)  # the LR is still reset
    assert math.isclose(t.history[2].lr_grid, 0.05 * lr_factor(t.tc, 4) ** 2)


def test_set_up_carves_the_box_and_the_initial_mask(small_dataset):
    """box='carve' with carve_as_mask, as the cpu and gpu presets: the grid spans the carved box, the
    hull is the mask until the first update, and the rays that miss the box are filtered out."""
    from tensorf_common.bounds import training_box

    cfg = _cfg(box="carve", carve_resolution=16, carve_as_mask=True, n_iters=2)
    t = _trainer(cfg, small_dataset)
    want = training_box(small_dataset["train"], small_dataset.aabb, cfg.train)
    assert [e["event"] for e in t.events] == ["carve", "ray_filter_box"] and t.events[0] == want.event
    np.testing.assert_allclose(t.model.aabb.numpy(), want.aabb)
    mask = t.model.alphaMask
    assert mask.gridSize == [16, 16, 16] and torch.equal(mask.mask, torch.from_numpy(want.mask))
    np.testing.assert_allclose(mask.aabb.numpy(), small_dataset.aabb)
    assert t.events[1]["kept"] < t.events[1]["of"] == small_dataset["train"].n_rays
    t.run()
    assert t.pos.step == 2
