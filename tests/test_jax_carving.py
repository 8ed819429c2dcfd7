"""jax_tensorf.carving: the device carving gives tensorf_common.bounds.carve_visual_hull's result
voxel for voxel (procedural scene, lego), whatever the chunk, and its special cases."""

from __future__ import annotations

import numpy as np
import pytest

from jax_tensorf.carving import carve_visual_hull
from tensorf_common import bounds
from tensorf_common.data import SplitData
from tensorf_common.errors import DatasetError

BOX = np.array([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]], np.float32)


def _same_as_numpy(split, *args, **kw) -> np.ndarray:
    chunk = kw.pop("chunk", None)
    want_occ, want_box = bounds.carve_visual_hull(split, *args, **kw)
    occ, box = carve_visual_hull(split, *args, chunk=chunk, **kw)
    assert occ.dtype == bool and box.dtype == np.float32
    np.testing.assert_array_equal(occ, want_occ)
    np.testing.assert_array_equal(box, want_box)
    return occ


@pytest.mark.parametrize(
    "resolution, margin, views", [(40, 1, None), ((24, 31, 36), 0, None), (33, 2, [5, 1, 7, 2])]
)
def test_procedural_scene_equals_numpy(small_dataset, resolution, margin, views):
    occ = _same_as_numpy(small_dataset["train"], BOX, resolution, 0.05, margin, views)
    assert 0.005 < occ.mean() < 0.9  # carving did something


def test_lego_equals_numpy_for_any_chunk(lego_small):
    split = lego_small["train"]
    a = _same_as_numpy(split, BOX, 56, chunk=1024)
    b = _same_as_numpy(split, BOX, 56, chunk=1 << 22)
    assert a.mean() < 0.3


def _two_far_cameras(alpha: int, size: int = 64) -> SplitData:
    """Two nearly orthographic cameras that see the whole box (along +z and along -x)."""
    images = np.zeros((2, size, size, 4), dtype=np.uint8)
    images[..., 3] = alpha
    c2w = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    c2w[0, :3, 3] = [0, 0, -40]
    c2w[1, :3, :3] = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]
    c2w[1, :3, 3] = [40, 0, 0]
    focal = 0.5 * size * 40 / 2.5
    return SplitData("train", images, c2w, focal, size, size, size / 2, size / 2, ["a", "b"])


def test_special_cases_as_numpy():
    full, box = carve_visual_hull(_two_far_cameras(255), BOX, 16)  # no alpha information
    assert full.all() and full.shape == (16, 16, 16)
    np.testing.assert_array_equal(box, BOX)
    with pytest.raises(DatasetError, match="removed every voxel"):
        carve_visual_hull(_two_far_cameras(0), BOX, 16)
    s = _two_far_cameras(0)
    s.images[0, 30:34, 4:60, 3] = 255
    s.images[1, 30:34, 30:34, 3] = 255
    occ = _same_as_numpy(s, BOX, 31, 0.05, 0)
    assert 0 < occ.mean() < 0.1
