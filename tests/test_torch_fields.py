"""torch_reference.fields: grid_sample conventions, VM/CP features, init, resize and crop."""

from __future__ import annotations

import pytest
import torch

from tensorf_common.config import ConfigError
from torch_reference import fields


def _bilinear_by_hand(plane: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """align_corners=True, zero padding: x = (u+1)/2*(W-1) indexes W, y = (v+1)/2*(H-1) indexes H."""
    _, c, h, w = plane.shape
    x = (u + 1) / 2 * (w - 1)
    y = (v + 1) / 2 * (h - 1)
    x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
    fx, fy = x - x0, y - y0
    out = torch.zeros(c, dtype=torch.float64)
    for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        if 0 <= xi < w and 0 <= yi < h:
            out += wt * plane[0, :, yi, xi].double()
    return out


def test_grid_sample_2d_matches_hand_bilinear_align_corners():
    g = torch.Generator().manual_seed(0)
    plane = torch.randn(1, 2, 3, 4, generator=g)  # C=2, H=3, W=4
    # u=0.2 -> x=1.8 (W axis), v=-0.5 -> y=0.5 (H axis)
    got = fields.grid_sample_2d(plane, torch.tensor([[0.2, -0.5]]))[0]
    want = _bilinear_by_hand(plane, 0.2, -0.5)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    # by hand for channel 0, written out: corners (x=1,2) x (y=0,1)
    p = plane[0, 0]
    manual = 0.2 * 0.5 * p[0, 1] + 0.8 * 0.5 * p[0, 2] + 0.2 * 0.5 * p[1, 1] + 0.8 * 0.5 * p[1, 2]
    torch.testing.assert_close(got[0], manual, atol=1e-6, rtol=0)


def test_grid_sample_2d_corners_and_zero_padding():
    plane = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    uv = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    got = fields.grid_sample_2d(plane, uv)[:, 0]
    torch.testing.assert_close(got, torch.tensor([0.0, 11.0, 3.0]))  # corners hit exactly (align_corners)
    # beyond the edge: x = (1.2+1)/2*3 = 3.3 -> 0.7 * plane[.., 3] + 0.3 * 0 (outside)
    out = fields.grid_sample_2d(plane, torch.tensor([[1.2, -1.0]]))[0, 0]
    torch.testing.assert_close(out, torch.tensor(0.7 * 3.0), atol=1e-5, rtol=0)


def test_grid_sample_1d_linear_along_length():
    line = torch.tensor([0.0, 10.0, 20.0, 40.0]).view(1, 1, 4, 1)
    # t=0.5 -> index (1.5/2)*3 = 2.25 -> 20 + 0.25 * 20 = 25
    got = fields.grid_sample_1d(line, torch.tensor([0.5, -1.0, 1.0]))[:, 0]
    torch.testing.assert_close(got, torch.tensor([25.0, 0.0, 40.0]))


def _brute_force_vm(planes, lines, i, j, k):
    """Density feature at grid point (i, j, k) from the official axis modes, written out."""
    p0, p1, p2 = (p[0] for p in planes)  # (C, H, W)
    l0, l1, l2 = (ln[0, :, :, 0] for ln in lines)  # (C, L)
    return (p0[:, j, i] * l0[:, k]).sum() + (p1[:, k, i] * l1[:, j]).sum() + (p2[:, k, j] * l2[:, i]).sum()


def test_vm_density_feature_axis_conventions_on_grid_points():
    grid = [5, 4, 3]  # X, Y, Z, non-cubic
    torch.manual_seed(1)
    planes, lines = fields.init_vm(grid, [2, 3, 4], 1.0)
    assert [tuple(p.shape) for p in planes] == [(1, 2, 4, 5), (1, 3, 3, 5), (1, 4, 3, 4)]
    assert [tuple(ln.shape) for ln in lines] == [(1, 2, 3, 1), (1, 3, 4, 1), (1, 4, 5, 1)]
    pts, want = [], []
    for i, j, k in [(0, 0, 0), (4, 3, 2), (1, 2, 0), (3, 0, 1), (2, 1, 2)]:
        pts.append([i / (grid[0] - 1) * 2 - 1, j / (grid[1] - 1) * 2 - 1, k / (grid[2] - 1) * 2 - 1])
        want.append(_brute_force_vm(planes, lines, i, j, k))
    got = fields.vm_density_feature(planes, lines, torch.tensor(pts))
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)
    feats = fields.vm_features(planes, lines, torch.tensor(pts))
    assert feats.shape == (5, 9)
    torch.testing.assert_close(feats.sum(-1), got, atol=1e-5, rtol=1e-5)
    # pair order: the first 2 channels are pair 0 = plane0 (x, y) * line0 (z)
    i, j, k = 4, 3, 2
    torch.testing.assert_close(feats[1, :2], planes[0][0, :, j, i] * lines[0][0, :, k, 0])


def test_cp_features_product_of_three_lines():
    grid = [3, 4, 5]
    torch.manual_seed(2)
    lines = fields.init_cp(grid, 6, 1.0)
    assert [ln.shape[2] for ln in lines] == [5, 4, 3]  # VEC_MODE = (z, y, x)
    i, j, k = 2, 1, 3
    xyz = torch.tensor([[i / 2 * 2 - 1, j / 3 * 2 - 1, k / 4 * 2 - 1]])
    want = lines[0][0, :, k, 0] * lines[1][0, :, j, 0] * lines[2][0, :, i, 0]
    torch.testing.assert_close(fields.cp_features(lines, xyz)[0], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fields.cp_density_feature(lines, xyz)[0], want.sum(), atol=1e-5, rtol=1e-5)


def test_feature2density():
    f = torch.tensor([-1.0, 0.0, 12.0])
    torch.testing.assert_close(fields.feature2density(f, -10.0, "softplus"), torch.nn.functional.softplus(f - 10))
    torch.testing.assert_close(fields.feature2density(f, -10.0, "relu"), torch.tensor([0.0, 0.0, 12.0]))
    with pytest.raises(ConfigError, match="fea2dense_act"):
        fields.feature2density(f, 0.0, "exp")


def test_init_is_seed_reproducible_and_scaled():
    torch.manual_seed(3)
    a = fields.init_vm([40, 40, 40], [8, 8, 8], 0.1)
    torch.manual_seed(3)
    b = fields.init_vm([40, 40, 40], [8, 8, 8], 0.1)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
    assert abs(float(a[0][0].std()) - 0.1) < 0.01
    assert abs(float(torch.cat([t.reshape(-1) for t in fields.init_cp([50, 50, 50], 64, 0.2)]).std()) - 0.2) < 0.02


def test_upsample_align_corners_keeps_corners_and_linear_profiles():
    grid = [3, 2, 2]
    planes, lines = fields.init_vm(grid, [1, 1, 1], 1.0)
    # plane 0 is (1, 1, Y=2, X=3): make it linear along W; line 2 runs along x
    planes[0] = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]).view(1, 1, 2, 3)
    lines[2] = torch.tensor([0.0, 5.0, 10.0]).view(1, 1, 3, 1)
    new_planes, new_lines = fields.upsample_vm(planes, lines, [5, 4, 3])
    assert [tuple(p.shape) for p in new_planes] == [(1, 1, 4, 5), (1, 1, 3, 5), (1, 1, 3, 4)]
    assert [tuple(ln.shape) for ln in new_lines] == [(1, 1, 3, 1), (1, 1, 4, 1), (1, 1, 5, 1)]
    torch.testing.assert_close(new_planes[0][0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))
    torch.testing.assert_close(new_lines[2][0, 0, :, 0], torch.tensor([0.0, 2.5, 5.0, 7.5, 10.0]))
    cp = fields.upsample_cp([lines[0], lines[1], lines[2]], [5, 4, 3])
    assert [ln.shape[2] for ln in cp] == [3, 4, 5]


def test_shrink_crops_each_axis():
    grid = [6, 5, 4]
    torch.manual_seed(4)
    planes, lines = fields.init_vm(grid, [2, 2, 2], 1.0)
    t_l, b_r = [1, 2, 0], [5, 4, 3]
    sp, sl = fields.shrink_vm(planes, lines, t_l, b_r)
    assert [tuple(p.shape) for p in sp] == [(1, 2, 2, 4), (1, 2, 3, 4), (1, 2, 3, 2)]
    assert [tuple(ln.shape) for ln in sl] == [(1, 2, 3, 1), (1, 2, 2, 1), (1, 2, 4, 1)]
    assert torch.equal(sp[1], planes[1][..., 0:3, 1:5])
    assert torch.equal(sl[2], lines[2][..., 1:5, :])
    assert fields.grid_size_of(sl) == [4, 2, 3]
    cl = fields.shrink_cp(lines, t_l, b_r)
    assert fields.grid_size_of(cl) == [4, 2, 3]
