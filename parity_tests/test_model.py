"""model: whole twins (torch_reference TensorVMSplit / TensorCP, converted to a JAX TensoRF through
tensorf_convert) compared on density, appearance features and colour at points, on full renders of
a batch of rays (training with a given jitter, evaluation with and without an alpha mask), and
through the schedule operations: alpha-mask update, shrink and upsample on both sides.

Evaluation renders put each ray's first sample exactly on the box face it enters by (official
sampling). Where the density on that face is not negligible, the in-box flag of that one sample is
a rounding tie between XLA (FMA) and torch; see ``test_rendering.test_entry_face_ties_in_eval``. The
evaluation renders here therefore use an alpha mask whose outer shell is empty (as after training),
or cameras inside the box.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from compare import BF16, EXACT, FP16, assert_close
from jax_tensorf.model import app_features_at, density_at, rgb_at
from tensorf_common.geometry import n_to_reso, train_n_samples
from tensorf_convert.model import portable_from_jax, portable_from_torch
from torch_reference.model import render_batched

SHADINGS = ["MLP_Fea", "MLP", "SH", "RGB"]


def _assert_same_weights(name: str, jm, tm) -> None:
    """The JAX model, converted back, holds exactly the torch model's tensors, box and mask."""
    pj, pt = portable_from_jax(jm), portable_from_torch(tm)
    assert_close(f"{name}.state_dict", pj.state_dict, pt.state_dict, EXACT)
    assert_close(f"{name}.aabb", np.asarray(pj.kwargs["aabb"]), np.asarray(pt.kwargs["aabb"]), EXACT)
    assert pj.grid_size == pt.grid_size
    assert_close(f"{name}.step_size", np.float32(jm.step_size), np.float32(tm.stepSize), EXACT)
    if pt.alpha_mask is None:
        assert pj.alpha_mask is None
    else:
        assert_close(f"{name}.alpha_mask", pj.alpha_mask, pt.alpha_mask, EXACT)
        assert_close(f"{name}.mask_aabb", pj.mask_aabb, pt.mask_aabb, EXACT)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_conversion_keeps_every_tensor(twins, model):
    tm, jm = twins.make_pair(model)
    _assert_same_weights(f"model.conversion[{model}]", jm, tm)


FIELD_CASES = [("VM", s) for s in SHADINGS] + [("CP", "MLP_Fea"), ("CP", "SH")]  # decoders do not depend on VM/CP


@pytest.mark.parametrize("model,shading", FIELD_CASES)
def test_fields_at_points(twins, model, shading):
    tm, jm = twins.make_pair(model, shading)
    xyz_n = np.concatenate([twins.points(1500, seed=1), twins.points(300, seed=2, lo=-1.2, hi=1.2)])
    xyz = twins.to_world(xyz_n)
    dirs = np.random.default_rng(3).normal(size=xyz.shape)
    dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    cfg, aabb = jm.field_cfg, jm.state.aabb

    @jax.jit
    def run(params, x, d):
        return {
            "sigma": density_at(params, cfg, aabb, x),
            "app_features": app_features_at(params, cfg, aabb, x),
            "rgb": rgb_at(params, cfg, aabb, x, d),
        }

    got = run(jm.params, jnp.asarray(xyz), jnp.asarray(dirs))
    with torch.no_grad():
        xt = tm.normalize_coord(torch.from_numpy(xyz))
        want = {"sigma": tm.density(xt), "app_features": tm.compute_appfeature(xt), "rgb": tm.color(xt, torch.from_numpy(dirs))}
    assert_close(f"model.fields[{model},{shading}]", got, want)


def _render_pair(jm, tm, o, d, *, train: bool, jit=None, n_samples=None):
    n = n_samples or (train_n_samples(jm.grid_size, jm.render_cfg.step_ratio) if train else jm.n_samples)
    if train:
        out = jm.render(o, d, jm.render_options(n, train=True, want_depth=True), jnp.asarray(jit))
        got = {"rgb": out["rgb"], "depth": out["depth"], "acc": out["acc"]}
        with torch.no_grad():
            t = tm.render(twins_rays(o, d), is_train=True, N_samples=n, jitter=torch.from_numpy(jit))
        want = {"rgb": t["rgb_map"], "depth": t["depth_map"], "acc": t["acc_map"]}
    else:  # one uncompacted compile (render_chunks, the compacting eval path, is in test_checkpoint)
        out = jm.render(o, d, jm.render_options(n, train=False, want_depth=True))
        got = {"rgb": out["rgb"], "depth": out["depth"]}
        rgb, depth = render_batched(tm, twins_rays(o, d), chunk=512, N_samples=n)
        want = {"rgb": rgb, "depth": depth}
    return got, want


def twins_rays(o, d):
    return torch.cat([torch.from_numpy(o), torch.from_numpy(d)], dim=-1)


@pytest.mark.parametrize("model,shading", [("VM", "MLP_Fea"), ("CP", "SH")])
def test_render_train_batch(twins, model, shading):
    tm, jm = twins.make_pair(model, shading)
    o, d = twins.camera_rays(1024, seed=4)
    got, want = _render_pair(jm, tm, o, d, train=True, jit=twins.jitter(len(o), seed=5))
    assert 0.05 < float(want["acc"].mean()) < 0.95
    assert_close(f"model.render[train,{model},{shading}]", got, want)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_render_eval_with_alpha_mask(twins, model):
    tm, _ = twins.blob_pair(model, width=0.3)
    assert tm.updateAlphaMask(tm.gridSize.tolist()) is not None
    shell = tm.alphaMask.mask.clone()
    shell[2:-2, 2:-2, 2:-2] = False
    # premise: the mask is empty two voxels deep from every face, so that an entry sample on a face
    # has a zero mask value on both sides (one voxel deep is not enough: the trilinear query's
    # weight of the second voxel is exactly 0 in torch but may round to 1e-7 under XLA's FMA)
    assert not bool(shell.any())
    jm = twins.to_jax(tm)
    o, d = twins.camera_rays(1024, seed=6)
    got, want = _render_pair(jm, tm, o, d, train=False)
    assert float((want["rgb"] < 0.99).any(-1).float().mean()) > 0.1  # the blob is seen
    assert_close(f"model.render[eval,mask,{model}]", got, want)


@pytest.mark.parametrize("model", ["VM"])
def test_render_eval_cameras_inside_the_box(twins, model):
    tm, jm = twins.make_pair(model)
    rng = np.random.default_rng(7)
    o = twins.to_world(rng.uniform(-0.6, 0.6, (768, 3)).astype(np.float32))
    d = rng.normal(size=(768, 3))
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    got, want = _render_pair(jm, tm, o, d, train=False)
    assert_close(f"model.render[eval,inside,{model}]", got, want)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_alpha_mask_update_shrink_upsample(twins, model):
    """The schedule operations on both sides, then a training render of the result."""
    tm, jm = twins.blob_pair(model)
    # --- alpha mask update (at the grid resolution) and its box
    box_t = tm.updateAlphaMask(tm.gridSize.tolist())
    box_j = jm.update_alpha_mask(jm.grid_size)
    assert_close(f"model.update_alpha_mask[{model}].aabb", box_j, box_t)
    assert_close(f"model.update_alpha_mask[{model}].mask", jm.state.mask, tm.alphaMask.mask, EXACT)
    # --- shrink to that box
    tm.shrink(box_t)
    jm.shrink(box_j)
    assert jm.grid_size == tm.gridSize.tolist() and jm.grid_size != list(twins.GRID)
    assert_close(f"model.shrink[{model}].aabb", jm.state.aabb, tm.aabb)
    _assert_same_weights(f"model.shrink[{model}]", jm, tm)
    # --- upsample to a non-cubic resolution of the shrunk box
    reso = n_to_reso(20**3, tm.aabb.numpy())
    tm.upsample_volume_grid(reso)
    jm.upsample(reso)
    assert jm.grid_size == tm.gridSize.tolist() == list(reso)
    assert_close(f"model.upsample[{model}].step_size", np.float32(jm.step_size), np.float32(tm.stepSize), EXACT)
    pj, pt = portable_from_jax(jm), portable_from_torch(tm)
    assert_close(f"model.upsample[{model}].state_dict", pj.state_dict, pt.state_dict)
    # --- and they still render alike (training: jittered, so no entry sample sits on a face)
    o, d = twins.camera_rays(768, seed=8)
    got, want = _render_pair(jm, tm, o, d, train=True, jit=twins.jitter(len(o), seed=9))
    assert_close(f"model.render[train,after shrink+upsample,{model}]", got, want)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_render_half_precision_within_its_tolerance(twins, precision):
    """JAX with half-precision compute (lookups, products, MLP) against the float32 torch reference:
    the separately documented half-precision tolerances (compare.BF16, compare.FP16)."""
    tm, jm = twins.make_pair("VM", "MLP_Fea")
    o, d = twins.camera_rays(512, seed=10)
    jit = twins.jitter(len(o), seed=11)
    n = train_n_samples(jm.grid_size, jm.render_cfg.step_ratio)
    kw = twins.precision_kwargs(jm.render, precision)
    out = jm.render(o, d, jm.render_options(n, train=True, want_depth=True), jnp.asarray(jit), **kw)
    with torch.no_grad():
        t = tm.render(twins_rays(o, d), is_train=True, N_samples=n, jitter=torch.from_numpy(jit))
    tol = {"bf16": BF16, "fp16": FP16}[precision]
    assert_close(
        f"model.render[train,{precision} vs fp32]", {"rgb": out["rgb"], "acc": out["acc"]}, {"rgb": t["rgb_map"], "acc": t["acc_map"]}, tol
    )
