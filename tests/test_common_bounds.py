"""tensorf_common.bounds: visual-hull carving from the training views' alpha."""

from __future__ import annotations

import numpy as np
import pytest

from tensorf_common.bounds import carve_visual_hull, grid_axes, occupancy_bounds, ray_box_hit
from tensorf_common.data.blender import SplitData, load_blender
from tensorf_common.errors import DatasetError
from tensorf_common.scene import Box, Sphere, make_scene, primitives, true_bounds

BOX = np.array([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def many_views(tmp_path_factory):
    """The procedural scene with 100 training views at 32x32 (carving needs many views)."""
    root = make_scene(
        tmp_path_factory.mktemp("carve") / "scene", width=32, height=32, n_train=100, n_val=1, n_test=1
    )
    return load_blender(root, splits=("train",))["train"]


def _points_inside_primitives(n_per: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    pts = []
    for p in primitives():
        if isinstance(p, Sphere):
            v = rng.normal(size=(n_per, 3))
            v *= (rng.random((n_per, 1)) ** (1 / 3)) * p.radius / np.linalg.norm(v, axis=1, keepdims=True)
            pts.append(v + np.asarray(p.center))
        else:
            assert isinstance(p, Box)
            local = (rng.random((n_per, 3)) * 2 - 1) * np.asarray(p.half)
            local[: n_per // 2] = np.sign(local[: n_per // 2]) * np.asarray(p.half)  # corners
            pts.append(local @ p.rot.T + np.asarray(p.center))
    return np.concatenate(pts)


@pytest.mark.parametrize("resolution", [48, (40, 48, 56)])
def test_procedural_hull_contains_the_objects_and_is_tighter(many_views, resolution):
    occ, tight = carve_visual_hull(many_views, BOX, resolution)
    res = (resolution,) * 3 if isinstance(resolution, int) else resolution
    assert occ.shape == res and occ.dtype == bool
    truth = true_bounds()
    assert np.all(tight[0] <= truth[0]) and np.all(tight[1] >= truth[1]), (tight, truth)
    assert np.all(tight[0] > BOX[0]) and np.all(tight[1] < BOX[1]), tight  # strictly tighter
    np.testing.assert_array_equal(tight, occupancy_bounds(occ, BOX))
    assert 0.01 < occ.mean() < 0.5
    # Conservative: the voxel nearest to any point of any object is kept.
    pts = _points_inside_primitives()
    unit = (BOX[1] - BOX[0]) / (np.asarray(res) - 1)
    ijk = np.rint((pts - BOX[0]) / unit).astype(int)
    assert occ[ijk[:, 0], ijk[:, 1], ijk[:, 2]].all()


def test_margin_grows_the_hull(many_views):
    occ0, box0 = carve_visual_hull(many_views, BOX, 32, margin=0)
    occ2, box2 = carve_visual_hull(many_views, BOX, 32, margin=2)
    assert occ2.sum() > occ0.sum() and np.all(occ2[occ0])
    assert np.all(box2[0] <= box0[0]) and np.all(box2[1] >= box0[1])


def _synthetic_split(alpha: int, size: int = 256, dist: float = 40.0) -> SplitData:
    """Two nearly orthographic cameras (far away, long focal) that see the whole box: view 0 at
    z = -dist looking along +z, view 1 at x = +dist looking along -x."""
    images = np.zeros((2, size, size, 4), dtype=np.uint8)
    images[..., 3] = alpha
    c2w = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    c2w[0, :3, 3] = [0, 0, -dist]
    c2w[1, :3, :3] = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]  # camera x = world z, camera z = world -x
    c2w[1, :3, 3] = [dist, 0, 0]
    focal = 0.5 * size * dist / 2.5  # the box fills the middle of the image
    return SplitData("train", images, c2w, focal, size, size, size / 2, size / 2, ["a", "b"])


def test_no_alpha_information_keeps_the_full_box():
    occ, tight = carve_visual_hull(_synthetic_split(255), BOX, 16)
    assert occ.all() and occ.shape == (16, 16, 16)
    np.testing.assert_array_equal(tight, BOX)


def test_everything_carved_is_an_error():
    with pytest.raises(DatasetError, match="removed every voxel"):
        carve_visual_hull(_synthetic_split(0), BOX, 16)


def test_occupancy_is_indexed_xyz():
    # View 0 (along +z) sees a band wide in world x and narrow in y; view 1 (along -x) a small
    # square (narrow in world z and y). The hull is long in x only, and occ is indexed [x, y, z].
    s = _synthetic_split(0)
    s.images[0, 124:132, 16:240, 3] = 255
    s.images[1, 124:132, 124:132, 3] = 255
    occ, tight = carve_visual_hull(s, BOX, 31, margin=0)
    ext = tight[1] - tight[0]
    assert ext[0] > 2 * ext[1] and ext[0] > 2 * ext[2], tight
    assert np.all(np.abs(tight[:, 1:]) < 0.7), tight
    counts = [np.flatnonzero(occ.any(axis=tuple(a for a in range(3) if a != k))).size for k in range(3)]
    assert counts[0] > 2 * counts[1] and counts[0] > 2 * counts[2], counts


def test_lego_hull(lego_dir):
    s = load_blender(lego_dir, splits=("train",), downsample=4)["train"]
    occ, tight = carve_visual_hull(s, BOX, 64)
    assert occ.any()
    assert np.all(tight[0] > BOX[0]) and np.all(tight[1] < BOX[1]), tight
    for v in range(0, s.n_views, 3):
        o, d = s.view_rays(v)
        solid = s.alpha(v).reshape(-1) > 0.5
        assert solid.any()
        assert ray_box_hit(o[solid], d[solid], tight).all(), v


def test_grid_axes_and_ray_box_hit():
    ax = grid_axes(BOX, (3, 4, 5))
    np.testing.assert_allclose(ax[0], [-1.5, 0.0, 1.5])
    np.testing.assert_allclose(ax[2], np.linspace(-1.5, 1.5, 5), atol=1e-7)
    o = np.array([[0, 0, -5.0], [0, 0, -5.0], [0, 0, 0.0], [3, 3, 3.0]])
    d = np.array([[0, 0, 1.0], [0, 0, -1.0], [1, 0, 0.0], [1, 0, 0.0]])
    np.testing.assert_array_equal(ray_box_hit(o, d, BOX), [True, False, True, False])


def test_training_box_from_the_dataset_or_carved(many_views):
    """The one set-up helper of both trainers: the dataset box as it is, or the carved hull's box
    (and with carve_as_mask the hull as a (Z, Y, X) mask over the dataset box), with its event."""
    from tensorf_common.bounds import training_box
    from tensorf_common.config import TrainConfig

    plain = training_box(many_views, BOX, TrainConfig())
    np.testing.assert_array_equal(plain.aabb, BOX)
    assert plain.mask is None and plain.mask_aabb is None and plain.event is None
    carved = training_box(many_views, BOX.reshape(-1), TrainConfig(box="carve", carve_resolution=24))
    occ, tight = carve_visual_hull(many_views, BOX, 24)
    np.testing.assert_array_equal(carved.aabb, tight)
    assert carved.mask is None and carved.event == {"event": "carve", "aabb": tight.tolist(), "from": BOX.tolist()}
    masked = training_box(many_views, BOX, TrainConfig(box="carve", carve_resolution=24, carve_as_mask=True))
    np.testing.assert_array_equal(masked.mask, np.transpose(occ, (2, 1, 0)))
    np.testing.assert_array_equal(masked.mask_aabb, BOX)
