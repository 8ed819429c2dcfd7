"""tensorf_convert.state_dict: the key table, every transform element by element, bit-exact round
trips both ways (VM, CP, every render module), the shape guard and the missing / unexpected report."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from tensorf_common.config import FieldConfig
from tensorf_common.errors import ConversionError
from tensorf_common.geometry import BLENDER_NEAR_FAR
from tensorf_convert.state_dict import (
    ModelSpec,
    flatten_params,
    grid_size_from_params,
    grid_size_from_state_dict,
    jax_to_torch,
    key_table,
    line_to_jax,
    line_to_torch,
    linear_to_jax,
    linear_to_torch,
    plane_to_jax,
    plane_to_torch,
    table_markdown,
    to_numpy,
    torch_to_jax,
    unflatten_params,
)
from torch_reference.model import TensorBase

GRID = [7, 6, 5]  # [X, Y, Z], all different
SHADINGS = ["MLP_Fea", "MLP", "MLP_PE", "SH", "RGB"]


def cfg(model="VM", shading="MLP_Fea") -> FieldConfig:
    app_dim = {"SH": 27, "RGB": 3}.get(shading, 6)
    comps = dict(density_n_comp=(2, 3, 4), app_n_comp=(3, 4, 5)) if model == "VM" else dict(density_n_comp=(5,), app_n_comp=(7,))
    return FieldConfig(model=model, app_dim=app_dim, shading_mode=shading, feature_c=8, view_pe=2, fea_pe=2, pos_pe=2, **comps)


def torch_model(model="VM", shading="MLP_Fea", seed=0):
    from tensorf_common.config import RenderConfig

    torch.manual_seed(seed)
    return TensorBase.from_config(cfg(model, shading), RenderConfig(), [[-1, -1, -1], [1, 1, 1]], GRID, BLENDER_NEAR_FAR)


def bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bit_identical(x, y, what=""):
    a, b = to_numpy(x), to_numpy(y)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(bits(a), bits(b)), what


# --------------------------------------------------------------------------------------------- transforms


def test_plane_transform_moves_every_element_where_the_layouts_say():
    t = np.arange(1 * 3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 5)  # (1, C, H, W)
    j = plane_to_jax(t)
    assert j.shape == (4, 5, 3) and j.flags.c_contiguous
    for c, h, w in [(0, 0, 0), (2, 3, 4), (1, 2, 0), (0, 1, 3)]:
        assert j[h, w, c] == t[0, c, h, w]
    assert_bit_identical(plane_to_torch(j), t)


def test_line_transform_moves_every_element_where_the_layouts_say():
    t = np.arange(1 * 3 * 6 * 1, dtype=np.float32).reshape(1, 3, 6, 1)  # (1, C, L, 1)
    j = line_to_jax(t)
    assert j.shape == (6, 3)
    for c, l in [(0, 0), (2, 5), (1, 3)]:
        assert j[l, c] == t[0, c, l, 0]
    assert_bit_identical(line_to_torch(j), t)


def test_linear_transform_is_the_transpose():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # torch (out, in)
    k = linear_to_jax(w)
    assert k.shape == (4, 3) and k[1, 2] == w[2, 1]
    assert_bit_identical(linear_to_torch(k), w)


@pytest.mark.parametrize("bad,fn", [(np.zeros((3, 4, 5)), plane_to_jax), (np.zeros((2, 3, 4, 5)), plane_to_jax), (np.zeros((1, 3, 6, 2)), line_to_jax)])
def test_transforms_refuse_wrong_ranks(bad, fn):
    with pytest.raises(ConversionError, match="expected"):
        fn(bad)


# --------------------------------------------------------------------------------------------- the table


@pytest.mark.parametrize("shading", SHADINGS)
@pytest.mark.parametrize("model", ["VM", "CP"])
def test_table_is_the_torch_state_dict(model, shading):
    """Keys in the official order, torch shapes exactly those of a torch_reference model."""
    sd = torch_model(model, shading).state_dict()
    table = key_table(ModelSpec.from_field_config(cfg(model, shading), GRID))
    assert [r.torch_key for r in table] == list(sd)
    assert all(r.torch_shape == tuple(sd[r.torch_key].shape) for r in table)


@pytest.mark.parametrize("shading", SHADINGS)
@pytest.mark.parametrize("model", ["VM", "CP"])
def test_table_jax_shapes_are_those_of_jax_init(model, shading):
    from jax_tensorf.model import init_params

    c = cfg(model, shading)
    shapes = {k: tuple(v.shape) for k, v in flatten_params(jax.eval_shape(lambda k: init_params(k, c, GRID), jax.random.PRNGKey(0))).items()}
    table = key_table(ModelSpec.from_field_config(c, GRID))
    assert {r.jax_path: r.jax_shape for r in table} == shapes


def test_vm_plane_and_line_shapes_follow_mat_and_vec_modes():
    spec = ModelSpec.from_field_config(cfg(), GRID)
    rows = {r.torch_key: r for r in key_table(spec)}
    X, Y, Z = GRID
    assert [rows[f"density_plane.{k}"].torch_shape for k in range(3)] == [(1, 2, Y, X), (1, 3, Z, X), (1, 4, Z, Y)]
    assert [rows[f"density_line.{k}"].jax_shape for k in range(3)] == [(Z, 2), (Y, 3), (X, 4)]
    assert rows["basis_mat.weight"].jax_shape == (12, 6)
    assert "| `density_plane.0` | (1, 2, 6, 7) | `density/planes/0` | (6, 7, 2) |" in table_markdown(spec)


# --------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shading", SHADINGS)
@pytest.mark.parametrize("model", ["VM", "CP"])
def test_torch_to_jax_to_torch_is_bit_identical(model, shading):
    sd = torch_model(model, shading).state_dict()
    sd["basis_mat.weight"][0, :3] = torch.tensor([float("nan"), -0.0, float("inf")])  # bits, not values
    params, rep = torch_to_jax(sd, cfg(model, shading))
    assert rep.ok and len(rep.converted) == len(sd)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    back, rep2 = jax_to_torch(params, cfg(model, shading))
    assert rep2.ok and list(back) == list(sd)
    for k in sd:
        assert back[k].is_contiguous()
        assert_bit_identical(back[k], sd[k], k)


@pytest.mark.parametrize("shading", SHADINGS)
@pytest.mark.parametrize("model", ["VM", "CP"])
def test_jax_to_torch_to_jax_is_bit_identical(model, shading):
    from jax_tensorf.model import init_params

    c = cfg(model, shading)
    # the JAX init's tree and shapes (traced, not run: no compilation), filled with random float32
    shapes = jax.eval_shape(lambda k: init_params(k, c, GRID), jax.random.PRNGKey(3))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: jax.numpy.asarray(rng.standard_normal(s.shape).astype(s.dtype)), shapes)
    sd, _ = jax_to_torch(params, c)
    again, _ = torch_to_jax(sd, c)
    flat_a, flat_b = flatten_params(params), flatten_params(again)
    assert set(flat_a) == set(flat_b)
    for k in flat_a:
        assert_bit_identical(flat_b[k], flat_a[k], k)
    # and the torch side accepts it
    torch_model(model, shading).load_state_dict(sd, strict=True)


def test_bfloat16_round_trips_bit_for_bit():
    sd = {k: v.to(torch.bfloat16) for k, v in torch_model().state_dict().items()}
    params, _ = torch_to_jax(sd, cfg(), as_jax=False)
    assert str(flatten_params(params)["density/planes/0"].dtype) == "bfloat16"
    back, _ = jax_to_torch(params, cfg())
    for k in sd:
        assert back[k].dtype == torch.bfloat16
        assert torch.equal(back[k].view(torch.int16), sd[k].view(torch.int16)), k


def test_numpy_in_numpy_out():
    sd = {k: v.numpy() for k, v in torch_model().state_dict().items()}
    params, _ = torch_to_jax(sd, cfg(), as_jax=False)
    assert all(type(x) is np.ndarray for x in flatten_params(params).values())
    back, _ = jax_to_torch(params, cfg(), as_torch=False)
    assert all(type(x) is np.ndarray for x in back.values())


# --------------------------------------------------------------------------------------------- report and guard


def test_missing_and_unexpected_keys_are_reported():
    sd = dict(torch_model().state_dict())
    del sd["app_line.1"]
    sd["renderModule.mlp.6.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConversionError, match=r"missing keys \['app_line.1'\].*unexpected keys \['renderModule.mlp.6.weight'\]"):
        torch_to_jax(sd, cfg())
    params, rep = torch_to_jax(sd, cfg(), strict=False)
    assert rep.missing == ["app_line.1"] and rep.unexpected == ["renderModule.mlp.6.weight"] and not rep.ok
    full, _ = torch_to_jax(torch_model().state_dict(), cfg())
    assert set(flatten_params(params)) == set(flatten_params(full)) - {"app/lines/1"}
    assert "missing ['app_line.1']" in str(rep)


def test_jax_side_report_names_jax_paths():
    params, _ = torch_to_jax(torch_model().state_dict(), cfg())
    params = dict(params)
    params["extra"] = {"kernel": np.zeros(2)}
    del params["render"]["mlp_4"]
    with pytest.raises(ConversionError) as e:
        jax_to_torch(params, cfg())
    assert "render/mlp_4/kernel" in str(e.value) and "extra/kernel" in str(e.value)


@pytest.mark.parametrize(
    "key,bad",
    [("density_plane.1", (1, 3, 5, 8)), ("app_line.2", (1, 5, 7, 2)), ("basis_mat.weight", (6, 11)), ("renderModule.mlp.0.weight", (8, 99))],
)
def test_shape_mismatch_names_the_key_and_both_shapes(key, bad):
    sd = dict(torch_model().state_dict())
    want = tuple(sd[key].shape)
    sd[key] = torch.zeros(bad)
    with pytest.raises(ConversionError) as e:
        torch_to_jax(sd, cfg(), grid_size=GRID)
    msg = str(e.value)
    assert key in msg and str(bad) in msg and str(want) in msg


def test_shape_mismatch_jax_side():
    params, _ = torch_to_jax(torch_model().state_dict(), cfg())
    params["density"]["planes"][0] = np.zeros((6, 7, 9), np.float32)
    with pytest.raises(ConversionError, match=r"density/planes/0.*\(6, 7, 9\), expected \(6, 7, 2\)"):
        jax_to_torch(params, cfg())


def test_grid_size_is_read_from_the_lines():
    sd = torch_model().state_dict()
    assert grid_size_from_state_dict(sd) == tuple(GRID)
    params, _ = torch_to_jax(sd, cfg())
    assert grid_size_from_params(params) == tuple(GRID)
    with pytest.raises(ConversionError, match="density_line.0"):
        grid_size_from_state_dict({k: v for k, v in sd.items() if k != "density_line.0"})


def test_flatten_unflatten_round_trip():
    tree = {"a": {"planes": [1, 2, 3], "lines": [4, 5, 6]}, "b": {"kernel": 7}}
    flat = flatten_params(tree)
    assert flat == {"a/planes/0": 1, "a/planes/1": 2, "a/planes/2": 3, "a/lines/0": 4, "a/lines/1": 5, "a/lines/2": 6, "b/kernel": 7}
    assert unflatten_params(flat) == tree
