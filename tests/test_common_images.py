"""tensorf_common.images: the depth map as 8-bit grey, as both frameworks' evaluations write it."""

from __future__ import annotations

import numpy as np

from tensorf_common.images import depth_to_u8, read_rgba, write_depth_png


def test_depth_to_u8_maps_near_white_far_black():
    d = depth_to_u8(np.array([1.0, 2.0, 4.0, 6.0, 9.0]), 2.0, 6.0)
    assert d.tolist() == [255, 255, 128, 0, 0]


def test_write_depth_png_is_grey_rgb_of_depth_to_u8(tmp_path):
    depth = np.linspace(1.5, 7.0, 12, dtype=np.float32).reshape(3, 4)
    write_depth_png(tmp_path / "depth" / "r_0.png", depth, 2.0, 6.0)
    back = read_rgba(tmp_path / "depth" / "r_0.png")
    assert back.shape == (3, 4, 4) and np.all(back[..., 3] == 255)
    for c in range(3):
        np.testing.assert_array_equal(back[..., c], depth_to_u8(depth, 2.0, 6.0))
