"""torch_reference.model: the official state_dict layout, attributes, alpha mask, shrink, upsample."""

from __future__ import annotations

import pytest
import torch

from tensorf_common.config import ConfigError, FieldConfig, RenderConfig
from tensorf_common.geometry import BLENDER_NEAR_FAR, step_size_and_n_samples
from torch_reference.checkpoint import OFFICIAL_KWARGS
from torch_reference.model import TensorBase, TensorCP, TensorVMSplit, model_class, render_batched

AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
KW = dict(
    density_n_comp=[2, 3, 4],
    appearance_n_comp=[3, 2, 1],
    app_dim=27,
    shadingMode="MLP_Fea",
    near_far=[0.5, 4.0],
    alphaMask_thres=1e-4,
    density_shift=-10,
    distance_scale=25,
    view_pe=2,
    fea_pe=2,
    featureC=16,
    step_ratio=0.5,
)


def _vm(grid=(7, 5, 3), **kw) -> TensorVMSplit:
    torch.manual_seed(0)
    return TensorVMSplit(torch.tensor(AABB), list(grid), "cpu", **{**KW, **kw})


def _rays(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.3 - o, dim=-1)
    return torch.cat([o, d], -1)


def test_official_state_dict_keys_and_shapes_non_cubic():
    X, Y, Z = 7, 5, 3
    m = _vm((X, Y, Z))
    shapes = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert shapes == [
        ("density_plane.0", (1, 2, Y, X)),
        ("density_plane.1", (1, 3, Z, X)),
        ("density_plane.2", (1, 4, Z, Y)),
        ("density_line.0", (1, 2, Z, 1)),
        ("density_line.1", (1, 3, Y, 1)),
        ("density_line.2", (1, 4, X, 1)),
        ("app_plane.0", (1, 3, Y, X)),
        ("app_plane.1", (1, 2, Z, X)),
        ("app_plane.2", (1, 1, Z, Y)),
        ("app_line.0", (1, 3, Z, 1)),
        ("app_line.1", (1, 2, Y, 1)),
        ("app_line.2", (1, 1, X, 1)),
        ("basis_mat.weight", (27, 6)),
        ("renderModule.mlp.0.weight", (16, 150)),
        ("renderModule.mlp.0.bias", (16,)),
        ("renderModule.mlp.2.weight", (16, 16)),
        ("renderModule.mlp.2.bias", (16,)),
        ("renderModule.mlp.4.weight", (3, 16)),
        ("renderModule.mlp.4.bias", (3,)),
    ]
    assert torch.equal(m.renderModule.mlp[4].bias, torch.zeros(3))
    assert m.gridSize.tolist() == [X, Y, Z]
    step, n = step_size_and_n_samples(AABB, [X, Y, Z], 0.5)
    assert m.stepSize == step and m.nSamples == n
    assert set(m.get_kwargs()) == set(OFFICIAL_KWARGS)


def test_cp_and_parameterless_decoders_layout():
    torch.manual_seed(0)
    cp = TensorCP(torch.tensor(AABB), [7, 5, 3], "cpu", **{**KW, "density_n_comp": [6], "appearance_n_comp": [5], "shadingMode": "SH"})
    assert [(k, tuple(v.shape)) for k, v in cp.state_dict().items()] == [
        ("density_line.0", (1, 6, 3, 1)),
        ("density_line.1", (1, 6, 5, 1)),
        ("density_line.2", (1, 6, 7, 1)),
        ("app_line.0", (1, 5, 3, 1)),
        ("app_line.1", (1, 5, 5, 1)),
        ("app_line.2", (1, 5, 7, 1)),
        ("basis_mat.weight", (27, 5)),
    ]


def test_official_init_scales_and_seed():
    big = _vm((40, 40, 40), density_n_comp=[8, 8, 8])
    assert abs(float(big.density_plane[0].detach().std()) - 0.1) < 0.01
    again = _vm((40, 40, 40), density_n_comp=[8, 8, 8])
    for (k, a), b in zip(big.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    torch.manual_seed(0)
    cp = TensorCP(torch.tensor(AABB), [60, 60, 60], "cpu", **{**KW, "density_n_comp": [64], "appearance_n_comp": [8]})
    assert abs(float(cp.density_line[0].detach().std()) - 0.2) < 0.03


def test_from_config_maps_the_project_configs():
    fc = FieldConfig(density_n_comp=(2, 2, 2), app_n_comp=(3, 3, 3), app_dim=12, feature_c=8, init_scale=0.5)
    rc = RenderConfig(step_ratio=0.25, alpha_mask_thres=1e-3, appearance="topk", topk=4)
    m = TensorBase.from_config(fc, rc, AABB, [6, 6, 6], BLENDER_NEAR_FAR)
    assert isinstance(m, TensorVMSplit) and m.step_ratio == 0.25 and m.alphaMask_thres == 1e-3
    assert m.appearance == "topk" and m.topk == 4 and m.init_scale == 0.5
    assert m.get_kwargs()["shadingMode"] == "MLP_Fea" and m.get_kwargs()["featureC"] == 8
    cp = TensorBase.from_config(FieldConfig(model="CP", app_dim=12, feature_c=8), rc, AABB, [6, 6, 6], BLENDER_NEAR_FAR)
    assert isinstance(cp, TensorCP) and cp.density_n_comp == [16]
    with pytest.raises(ConfigError, match="field.model"):
        TensorCP.from_config(fc, rc, AABB, [6, 6, 6], BLENDER_NEAR_FAR)
    assert model_class("TensorCP") is TensorCP
    with pytest.raises(ConfigError):
        model_class("TensorVM")


def test_forward_shapes_range_and_empty_scene_is_white():
    m = _vm((8, 8, 8))
    rays = _rays(32)
    rgb, depth = m(rays, white_bg=True, is_train=False)
    assert rgb.shape == (32, 3) and depth.shape == (32,)
    assert bool(((rgb >= 0) & (rgb <= 1)).all())
    with torch.no_grad():
        for p in m.density_plane:
            p.zero_()  # softplus(0 - 10) ~ 4.5e-5: nearly empty
    rgb, _ = m(rays, white_bg=True)
    torch.testing.assert_close(rgb, torch.ones(32, 3), atol=2e-3, rtol=0)
    out = m.render(rays, white_bg=True, is_train=True, jitter=torch.zeros(32), N_samples=20)
    assert out["weights"].shape == (32, 20)
    chunked, _ = render_batched(m, rays, chunk=7)
    torch.testing.assert_close(chunked, m(rays)[0])


def test_gradients_reach_the_grids_not_the_coordinates():
    m = _vm((8, 8, 8), density_shift=0.0)
    rgb, _ = m(_rays(16), is_train=True, jitter=torch.full((16,), 0.5))
    rgb.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert float(m.density_plane[0].grad.abs().sum()) > 0


def _box_density_model(m: TensorBase) -> None:
    """Replace the density with |x| < .5, |z| < .3 (in normalised = world coordinates here)."""
    def density(xyz_n: torch.Tensor) -> torch.Tensor:
        inside = (xyz_n[:, 0].abs() < 0.5) & (xyz_n[:, 2].abs() < 0.3)
        return torch.where(inside, torch.tensor(100.0), torch.tensor(0.0))

    m.density = density  # type: ignore[method-assign]


def test_update_alpha_mask_layout_and_box():
    m = _vm((8, 8, 8))
    _box_density_model(m)
    new_aabb = m.updateAlphaMask((41, 41, 41))
    assert m.alphaMask is not None and m.alphaMask.gridSize == [41, 41, 41]
    assert m.alphaMask.alpha_volume.shape == (1, 1, 41, 41, 41)
    inside = m.alphaMask.contains(torch.tensor([[0.45, 0.0, 0.0], [0.0, 0.0, 0.45]]))
    assert inside.tolist() == [True, False]
    torch.testing.assert_close(new_aabb[:, 0], torch.tensor([-0.5, 0.5]), atol=1e-6, rtol=0)


def test_update_alpha_mask_empty_keeps_previous_mask():
    m = _vm((8, 8, 8))
    m.density = lambda x: torch.zeros(x.shape[0])  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="no voxel"):
        assert m.updateAlphaMask((8, 8, 8)) is None
    assert m.alphaMask is None
    _box_density_model(m)
    assert m.updateAlphaMask((9, 9, 9)) is not None
    previous = m.alphaMask
    m.density = lambda x: torch.zeros(x.shape[0])  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning):
        assert m.updateAlphaMask((9, 9, 9)) is None
    assert m.alphaMask is previous


def test_shrink_makes_the_grid_non_cubic_with_the_official_ranges():
    m = _vm((11, 11, 11))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _box_density_model(m)
    m.updateAlphaMask((11, 11, 11))  # same resolution as the grid
    new = torch.tensor([[-0.62, -0.28, 0.14], [0.66, 0.94, 1.0]])
    m.shrink(new)
    # t_l = [2, 4, 6], b_r = [9, 11, 11] (see test_torch_alpha_mask): grid [7, 7, 5]
    assert m.gridSize.tolist() == [7, 7, 5]
    torch.testing.assert_close(m.aabb, new)
    sd = m.state_dict()
    assert tuple(sd["density_plane.0"].shape) == (1, 2, 7, 7)
    assert tuple(sd["density_plane.1"].shape) == (1, 3, 5, 7)
    assert tuple(sd["app_line.0"].shape) == (1, 3, 5, 1)
    assert torch.equal(sd["density_plane.1"], before["density_plane.1"][..., 6:11, 2:9])
    assert torch.equal(sd["density_line.1"], before["density_line.1"][..., 4:11, :])
    step, n = step_size_and_n_samples(new.numpy(), [7, 7, 5], 0.5)
    assert m.stepSize == step and m.nSamples == n


def test_upsample_volume_grid_resizes_every_grid():
    m = _vm((5, 4, 3))
    corner = m.app_plane[1][0, :, 0, 0].clone()
    m.upsample_volume_grid([9, 7, 6])
    assert m.gridSize.tolist() == [9, 7, 6]
    assert tuple(m.app_plane[1].shape) == (1, 2, 6, 9) and tuple(m.density_line[2].shape) == (1, 4, 9, 1)
    torch.testing.assert_close(m.app_plane[1][0, :, 0, 0], corner)
    assert all(isinstance(p, torch.nn.Parameter) for p in m.density_plane)
    step, n = step_size_and_n_samples(AABB, [9, 7, 6], 0.5)
    assert m.stepSize == step and m.nSamples == n


def test_optimizer_groups_official_order_and_rates():
    m = _vm()
    groups = m.get_optparam_groups(0.02, 0.001)
    assert [g["lr"] for g in groups] == [0.02] * 4 + [0.001] * 2
    assert groups[0]["params"][0] is m.density_line[0] and groups[1]["params"][0] is m.density_plane[0]
    assert groups[4]["params"][0] is m.basis_mat.weight
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in m.parameters())


def test_filtering_rays_bbox_and_mask():
    m = _vm((8, 8, 8))
    rays = torch.tensor([[-3.0, 0.0, 0.0, 1.0, 0.0, 0.0], [-3.0, 2.0, 0.0, 1.0, 0.0, 0.0], [-3.0, 0.0, 0.9, 1.0, 0.0, 0.0]])
    rgbs = torch.arange(9.0).view(3, 3)
    r, c = m.filtering_rays(rays, rgbs, bbox_only=True)
    assert r.shape == (2, 6) and torch.equal(c, rgbs[[0, 2]])
    _box_density_model(m)
    m.updateAlphaMask((21, 21, 21))
    r, c = m.filtering_rays(rays, rgbs)
    assert torch.equal(c, rgbs[[0]])


def test_regularizer_methods():
    m = _vm()
    want = sum(m.density_plane[k].abs().mean() + m.density_line[k].abs().mean() for k in range(3))
    torch.testing.assert_close(m.density_L1(), want)
    with torch.no_grad():
        assert float(m.TV_loss_density()) > 0 and float(m.TV_loss_app()) > 0
        assert bool(torch.isfinite(m.vector_comp_diffs()))  # app line 2 has a single component


def test_ndc_forward_runs():
    m = _vm((8, 8, 8))
    rays = torch.cat([torch.zeros(4, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3) * 2.0], -1)
    rgb, depth = m(rays, white_bg=True, ndc_ray=True, N_samples=16)
    assert rgb.shape == (4, 3) and depth.shape == (4,)
    out = m.render(rays, white_bg=True, is_train=True, ndc_ray=True, N_samples=16, jitter=torch.full((16,), 0.5))
    assert out["z_vals"].shape == (4, 16)
