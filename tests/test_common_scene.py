"""tensorf_common.scene: the procedural Blender-format scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tensorf_common import scene as scene_mod
from tensorf_common.data.blender import load_blender
from tensorf_common.errors import DatasetError
from tensorf_common.scene import (
    LEGO_CAMERA_ANGLE_X,
    LEGO_RADIUS,
    SCENE_MARKER,
    look_at_c2w,
    make_scene,
    primitives,
    trace,
    true_bounds,
)


def test_layout_and_json(small_scene: Path):
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        meta = json.loads((small_scene / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(LEGO_CAMERA_ANGLE_X)
        assert len(meta["frames"]) == n
        for i, fr in enumerate(meta["frames"]):
            assert fr["file_path"] == f"./{split}/r_{i}"
            assert (small_scene / split / f"r_{i}.png").is_file()
            assert np.asarray(fr["transform_matrix"]).shape == (4, 4)
    info = json.loads((small_scene / SCENE_MARKER).read_text())
    assert info["options"]["width"] == 32 and info["version"] == scene_mod.SCENE_VERSION
    np.testing.assert_allclose(info["true_bounds"], true_bounds())


def test_cameras_orbit_the_origin(small_dataset):
    for split in ("train", "val", "test"):
        s = small_dataset[split]
        pos = s.c2w[:, :3, 3].astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(pos, axis=1), LEGO_RADIUS, rtol=1e-6)
        assert np.all(pos[:, 2] > 0)  # upper hemisphere
        forward = s.c2w[:, :3, 2]  # OpenCV +z is the viewing direction
        np.testing.assert_allclose(forward, -pos / np.linalg.norm(pos, axis=1, keepdims=True), atol=1e-6)
        np.testing.assert_allclose(np.linalg.det(s.c2w[:, :3, :3]), 1.0, atol=1e-5)
    test = small_dataset["test"].c2w[:, :3, 3].astype(np.float64)
    elev = np.degrees(np.arcsin(test[:, 2] / LEGO_RADIUS))
    np.testing.assert_allclose(elev, 30.0, atol=1e-4)
    az = np.unwrap(np.arctan2(test[:, 1], test[:, 0]))
    np.testing.assert_allclose(np.diff(az), 2 * np.pi / 4, atol=1e-6)
    train = small_dataset["train"].c2w[:, :3, 3]
    assert np.ptp(train[:, 2]) > 0.5  # random elevations, unlike the test orbit


def test_deterministic_and_seeded(tmp_path):
    opts = {"width": 12, "height": 10, "n_train": 2, "n_val": 1, "n_test": 2}
    a = make_scene(tmp_path / "a", **opts)
    b = make_scene(tmp_path / "b", **opts)
    c = make_scene(tmp_path / "c", seed=5, **opts)
    for rel in ("transforms_train.json", "transforms_test.json", "train/r_1.png", "test/r_0.png", "val/r_0.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "transforms_train.json").read_text() != (c / "transforms_train.json").read_text()
    assert (a / "transforms_test.json").read_text() == (c / "transforms_test.json").read_text()
    s = load_blender(a, splits=("train",))["train"]
    assert (s.width, s.height) == (12, 10)


def test_geometry_is_off_centre_inside_the_box():
    b = true_bounds()
    assert np.all(b[0] > -1.5) and np.all(b[1] < 1.5)
    assert np.all(b[1] - b[0] < 2.0)  # does not fill the box
    assert np.linalg.norm((b[0] + b[1]) / 2) > 0.05  # not centred on the origin
    # Everything stays within radius 1.3 of the origin, hence in frame from radius 4.03.
    for p in primitives():
        lo, hi = p.bounds()
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        assert np.linalg.norm(corners, axis=1).max() < 1.31


def test_alpha_edges_are_fractional_and_background_transparent(small_dataset):
    s = small_dataset["train"]
    a = s.images[..., 3]
    assert np.any((a > 0) & (a < 255))  # anti-aliased silhouettes
    assert np.all(a[:, 0, :] == 0) and np.all(a[:, :, 0] == 0)  # the border is background
    assert np.all(s.rgb(0)[0, 0] == 1.0)  # composited on white
    cover = (a > 0).mean()
    assert 0.05 < cover < 0.6


def test_object_appears_where_its_box_projects(small_dataset):
    """Every covered pixel lies inside the projection of the true bounds' corners (within 1 px)."""
    b = true_bounds().astype(np.float64)
    corners = np.array([[x, y, z] for x in b[:, 0] for y in b[:, 1] for z in b[:, 2]])
    for split in ("train", "test"):
        s = small_dataset[split]
        K = s.intrinsics.astype(np.float64)
        for v in range(s.n_views):
            w2c = np.linalg.inv(s.c2w[v].astype(np.float64))
            pc = corners @ w2c[:3, :3].T + w2c[:3, 3]
            uv = (pc @ K.T)[:, :2] / pc[:, 2:3]
            rows, cols = np.nonzero(s.images[v, ..., 3] > 0)
            assert rows.size > 0
            assert cols.min() + 0.5 >= uv[:, 0].min() - 1 and cols.max() + 0.5 <= uv[:, 0].max() + 1
            assert rows.min() + 0.5 >= uv[:, 1].min() - 1 and rows.max() + 0.5 <= uv[:, 1].max() + 1
            # The centre of the true box lies inside the big sphere, so its pixel is covered.
            centre = (b[0] + b[1]) / 2
            big = primitives()[1]
            assert np.linalg.norm(centre - np.asarray(big.center)) < big.radius
            pcc = w2c[:3, :3] @ centre + w2c[:3, 3]
            u, w = (K @ pcc)[:2] / pcc[2]
            assert s.images[v, int(w), int(u), 3] > 0


def test_specular_highlight_depends_on_the_view():
    # Two rays meeting the top of the glossy sphere (primitive 2): one from straight above, one
    # along the mirror direction of the light, where the Blinn-Phong highlight peaks.
    top = np.array([0.3, 0.5, -0.15])
    light = scene_mod._LIGHT
    mirror = np.array([-light[0], -light[1], light[2]])
    dirs = np.stack([[0.0, 0.0, -1.0], -mirror])
    origins = top - 2.0 * dirs
    rgb, hit, sid = trace(origins, dirs)
    assert hit.all() and np.all(sid // 4 == 2)
    assert rgb[1].min() > rgb[0].min() + 0.2  # the highlight washes towards white


def test_look_at_is_a_blender_camera():
    c2w = look_at_c2w([0.0, -4.0, 1.0])
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(-c2w[:3, 2], -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3]))  # looks along -z
    assert c2w[2, 1] > 0  # image up is world up-ish
    assert abs(c2w[2, 0]) < 1e-12  # no roll


def test_existing_folder_and_bad_options(tmp_path, monkeypatch):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        make_scene(out, width=8, height=8, n_train=1, n_val=1, n_test=1)
    make_scene(out, overwrite=True, width=8, height=8, n_train=1, n_val=1, n_test=1)
    assert (out / SCENE_MARKER).is_file() and not (out / "keep.txt").exists()
    for bad in ({"width": 0}, {"n_test": -1}, {"camera_angle_x": 4.0}, {"radius": 1.0}, {"colour": 1}):
        with pytest.raises(DatasetError):
            make_scene(tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists()


def test_killed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = scene_mod.render_view

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scene_mod, "render_view", dying)
    with pytest.raises(KeyboardInterrupt):
        make_scene(tmp_path / "s", width=8, height=8, n_train=4, n_val=1, n_test=1)
    assert list(tmp_path.iterdir()) == []
