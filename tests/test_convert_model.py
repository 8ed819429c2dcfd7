"""tensorf_convert.model: whole models torch_reference <-> JAX TensoRF through PortableModel (VM and
CP, with and without an alpha mask), official kwargs <-> configs, official checkpoint dicts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from tensorf_common.config import FieldConfig, RenderConfig
from tensorf_common.errors import ConversionError
from tensorf_convert.model import (
    PortableModel,
    field_config_from_kwargs,
    full_kwargs,
    jax_model_to_torch,
    official_kwargs,
    portable_from_jax,
    portable_from_official,
    portable_from_torch,
    portable_to_jax,
    portable_to_official,
    portable_to_torch,
    render_config_from_kwargs,
    torch_model_to_jax,
)
from torch_reference.model import TensorBase

AABB = [[-1.1, -0.9, -1.0], [1.0, 1.2, 0.8]]
GRID = [9, 8, 7]


def field(model="VM", shading="MLP_Fea", **kw) -> FieldConfig:
    comps = dict(density_n_comp=(2, 3, 4), app_n_comp=(3, 4, 5)) if model == "VM" else dict(density_n_comp=(5,), app_n_comp=(7,))
    app_dim = {"SH": 27, "RGB": 3}.get(shading, 6)
    base = dict(model=model, app_dim=app_dim, shading_mode=shading, feature_c=8, view_pe=2, fea_pe=2, density_shift=-1.0, **comps)
    base.update(kw)
    return FieldConfig(**base)


def torch_model(model="VM", shading="MLP_Fea", mask=False, render=RenderConfig()):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        m = TensorBase.from_config(field(model, shading), render, AABB, GRID, [0.5, 5.0])
    if mask:
        assert m.updateAlphaMask([11, 10, 6]) is not None  # a mask resolution unlike the grid's
    return m


def assert_same_torch(a, b):
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.aabb, b.aabb) and a.gridSize.tolist() == b.gridSize.tolist()
    assert a.stepSize == b.stepSize and a.nSamples == b.nSamples and a.near_far == b.near_far
    assert a.get_kwargs().keys() == b.get_kwargs().keys()
    assert {k: v for k, v in a.get_kwargs().items() if k != "aabb"} == {k: v for k, v in b.get_kwargs().items() if k != "aabb"}
    if a.alphaMask is None:
        assert b.alphaMask is None
    else:
        assert torch.equal(a.alphaMask.alpha_volume, b.alphaMask.alpha_volume)
        assert torch.equal(a.alphaMask.aabb, b.alphaMask.aabb)


def assert_same_jax(a, b):
    for x, y in zip(jax.tree.leaves((a.params, a.state)), jax.tree.leaves((b.params, b.state))):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
    assert a.field_cfg == b.field_cfg and a.render_cfg == b.render_cfg
    assert a.near_far == b.near_far and a.white_bg == b.white_bg and a.mask_grid_size == b.mask_grid_size


def test_a_torch_model_built_without_options_records_the_official_class_defaults():
    """``TensorBase`` and ``full_kwargs`` read one table (``OFFICIAL_CLASS_DEFAULTS``); the model must
    also store and report each default (a constructor that dropped one would differ here)."""
    from torch_reference.model import TensorVMSplit

    assert full_kwargs(TensorVMSplit(AABB, GRID).get_kwargs()) == full_kwargs({"aabb": AABB, "gridSize": GRID})


def test_full_kwargs_fills_defaults_and_refuses_unknown_keys():
    kw = full_kwargs({"aabb": torch.tensor(AABB), "gridSize": torch.tensor(GRID), "density_n_comp": 4, "device": "cpu"})
    assert kw["density_n_comp"] == [4, 4, 4] and kw["shadingMode"] == "MLP_PE" and kw["step_ratio"] == 2.0
    assert kw["aabb"] == np.asarray(AABB, np.float32).tolist() and "device" not in kw
    with pytest.raises(ConversionError, match=r"unknown keys \['colour'\]"):
        full_kwargs({"aabb": AABB, "gridSize": GRID, "colour": 1})
    with pytest.raises(ConversionError, match="missing 'gridSize'"):
        full_kwargs({"aabb": AABB})


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_configs_round_trip_through_official_kwargs(model):
    f = field(model, "SH", fea2dense_act="relu", distance_scale=17.0)
    r = RenderConfig(step_ratio=0.7, ray_march_weight_thres=2e-4, alpha_mask_thres=3e-3, appearance="topk", topk=9)
    kw = official_kwargs(f, r, AABB, GRID, (0.5, 5.0))
    name = {"VM": "TensorVMSplit", "CP": "TensorCP"}[model]
    assert field_config_from_kwargs(kw, name) == f
    assert render_config_from_kwargs(kw, RenderConfig(appearance="topk", topk=9)) == r
    # the torch model built from those kwargs reports them back
    m = TensorBase.from_config(f, r, AABB, GRID, (0.5, 5.0))
    assert full_kwargs(m.get_kwargs()) == kw


@pytest.mark.parametrize("mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("model,shading", [("VM", "MLP_Fea"), ("VM", "SH"), ("CP", "MLP"), ("CP", "RGB")])
def test_torch_to_jax_to_torch_is_exact(model, shading, mask):
    tm = torch_model(model, shading, mask, RenderConfig(appearance="all", topk=5))
    jm = torch_model_to_jax(tm)
    assert jm.grid_size == GRID and jm.near_far == (0.5, 5.0)
    assert jm.render_cfg.appearance == "all" and jm.render_cfg.topk == 5
    assert np.float32(jm.step_size) == np.float32(tm.stepSize) and jm.n_samples == tm.nSamples
    if mask:
        assert jm.mask_grid_size == tm.alphaMask.gridSize
        assert np.array_equal(np.asarray(jm.state.mask), tm.alphaMask.mask.numpy())
        assert np.array_equal(np.asarray(jm.state.mask_aabb), tm.alphaMask.aabb.numpy())
    else:
        assert jm.mask_grid_size is None and jm.state.mask.shape == (2, 2, 2)
    assert_same_torch(jax_model_to_torch(jm), tm)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_jax_to_torch_to_jax_is_exact(model):
    from jax_tensorf.model import TensoRF

    jm = TensoRF.create(jax.random.PRNGKey(4), field(model), RenderConfig(appearance="topk"), AABB, GRID, (0.5, 5.0), white_bg=False)
    again = torch_model_to_jax(jax_model_to_torch(jm), white_bg=False)
    assert_same_jax(again, jm)
    # the portable record round-trips on its own too (white_bg and the render config ride in extra)
    assert_same_jax(portable_to_jax(portable_from_jax(jm)), jm)


def test_jax_model_with_a_mask_exports_it():
    from jax_tensorf.model import TensoRF

    jm = TensoRF.create(jax.random.PRNGKey(5), field(density_shift=-2.0), RenderConfig(), AABB, GRID, (0.5, 5.0))
    assert jm.update_alpha_mask([10, 9, 8]) is not None
    pm = portable_from_jax(jm)
    assert pm.alpha_mask.shape == (8, 9, 10) and np.array_equal(pm.alpha_mask, np.asarray(jm.state.mask))
    tm = portable_to_torch(pm)
    assert tm.alphaMask.gridSize == [10, 9, 8]
    assert_same_jax(torch_model_to_jax(tm), jm)


def test_official_checkpoint_dict_round_trip():
    tm = torch_model("VM", "MLP_Fea", mask=True)
    pm = portable_from_torch(tm)
    for numpy_mask in (False, True):
        ckpt = portable_to_official(pm, numpy_mask=numpy_mask)
        assert set(ckpt) == {"kwargs", "state_dict", "alphaMask.shape", "alphaMask.mask", "alphaMask.aabb"}
        assert ckpt["alphaMask.shape"] == (1, 1, 6, 10, 11)
        assert isinstance(ckpt["alphaMask.mask"], np.ndarray if numpy_mask else torch.Tensor)
        assert isinstance(ckpt["kwargs"]["aabb"], torch.Tensor)
        again = portable_from_official(ckpt)
        assert again.kwargs == pm.kwargs and np.array_equal(again.alpha_mask, pm.alpha_mask)
        assert all(np.array_equal(again.state_dict[k], v) for k, v in pm.state_dict.items())
    # the torch_reference loader accepts the dict as the official one
    from torch_reference.checkpoint import model_from_checkpoint

    assert_same_torch(model_from_checkpoint(portable_to_official(pm)), tm)


def test_portable_model_validates_and_names_problems():
    pm = portable_from_torch(torch_model())
    bad = dataclasses.replace(pm, state_dict={**pm.state_dict, "app_plane.2": np.zeros((1, 5, 7, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"app_plane.2.*\(1, 5, 7, 3\), expected \(1, 5, 7, 8\)"):
        bad.validate()
    with pytest.raises(ConversionError, match="model_name"):
        PortableModel("TensorVM", pm.kwargs, pm.state_dict)
    with pytest.raises(ConversionError, match="together"):
        PortableModel(pm.model_name, pm.kwargs, pm.state_dict, alpha_mask=np.ones((2, 2, 2), bool))
    with pytest.raises(ConversionError, match="neither"):
        portable_from_official({"kwargs": pm.kwargs, "state_dict": {}})
