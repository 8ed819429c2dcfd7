"""tensorf_common.data (rays, blender, scene_cache, sampler): the Blender loader, rays, batches, bad
input, the sampler, the data dir."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tensorf_common.config import DataConfig
from tensorf_common.data.blender import OPENGL_TO_OPENCV, SplitData, area_downsample, load_blender, load_from_config
from tensorf_common.data.rays import get_ray_directions, get_rays
from tensorf_common.data.sampler import BatchSampler
from tensorf_common.data.scene_cache import resolve_data_dir, scene_cache_dir
from tensorf_common.errors import DatasetError
from tensorf_common.geometry import BLENDER_AABB, BLENDER_NEAR_FAR
from tensorf_common.images import write_png

LEGO_FOCAL_400 = 0.5 * 400 / math.tan(0.5 * 0.6911112070083618)


# ------------------------------------------------------------------------------------------
# Rays
# ------------------------------------------------------------------------------------------


def test_ray_directions_are_official_pixel_centres():
    d = get_ray_directions(4, 6, 10.0)
    assert d.shape == (4, 6, 3) and d.dtype == np.float32
    np.testing.assert_allclose(d[0, 0], [(0.5 - 3) / 10, (0.5 - 2) / 10, 1.0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(d[3, 5], [(5.5 - 3) / 10, (3.5 - 2) / 10, 1.0], rtol=0, atol=1e-7)
    d2 = get_ray_directions(4, 6, (10.0, 20.0), cx=1.0, cy=0.0)
    np.testing.assert_allclose(d2[2, 4], [(4.5 - 1) / 10, 2.5 / 20, 1.0], rtol=0, atol=1e-7)


def test_get_rays_unit_directions_and_origins():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    c2w = np.eye(4)
    c2w[:3, :3] = q
    c2w[:3, 3] = [1.0, -2.0, 3.0]
    dirs = get_ray_directions(5, 7, 4.0)
    o, d = get_rays(dirs, c2w)
    assert o.shape == d.shape == (35, 3) and o.dtype == d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(o, np.broadcast_to([1.0, -2.0, 3.0], (35, 3)))
    expect = dirs.reshape(-1, 3) @ q.T
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(d, expect, atol=1e-6)


# ------------------------------------------------------------------------------------------
# Lego (real data, a few views)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lego3(lego_dir):
    return load_blender(lego_dir, splits=("train",), max_views=3)


def test_lego_shapes_and_intrinsics(lego3, lego_dir):
    s = lego3["train"]
    assert s.images.shape == (3, 400, 400, 4) and s.images.dtype == np.uint8
    assert s.c2w.shape == (3, 4, 4) and s.c2w.dtype == np.float32
    assert (s.width, s.height, s.n_views, s.n_rays) == (400, 400, 3, 3 * 400 * 400)
    assert s.focal == pytest.approx(LEGO_FOCAL_400, rel=1e-9)
    assert (s.cx, s.cy) == (200.0, 200.0)
    assert s.frame_names == ["r_0", "r_1", "r_2"]
    assert not s.composited
    np.testing.assert_array_equal(lego3.aabb, np.asarray(BLENDER_AABB, dtype=np.float32))
    np.testing.assert_array_equal(lego3.near_far, np.asarray(BLENDER_NEAR_FAR, dtype=np.float32))
    assert s.memory_bytes() >= s.images.nbytes
    meta = json.loads((lego_dir / "transforms_train.json").read_text())
    gl = np.array(meta["frames"][1]["transform_matrix"])
    np.testing.assert_allclose(s.c2w[1], gl @ np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    np.testing.assert_array_equal(OPENGL_TO_OPENCV, np.diag([1, -1, -1, 1]).astype(np.float32))


def test_lego_white_compositing_matches_the_png(lego3, lego_dir):
    s = lego3["train"]
    raw = np.asarray(Image.open(lego_dir / "train" / "r_0.png").convert("RGBA")).astype(np.float64) / 255
    expect = raw[..., :3] * raw[..., 3:] + (1 - raw[..., 3:])
    got = s.rgb(0)
    assert got.shape == (400, 400, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expect, atol=1e-6)
    bg = raw[..., 3] == 0
    assert bg.any() and np.all(got[bg] == 1.0)  # transparent pixels become exactly white
    np.testing.assert_allclose(s.alpha(0), raw[..., 3], atol=1e-7)
    black = load_blender(lego_dir, splits=("train",), max_views=1, white_bg=False)["train"]
    np.testing.assert_allclose(black.rgb(0), raw[..., :3] * raw[..., 3:], atol=1e-6)


def test_lego_downsample_2_is_area_averaging(lego_dir):
    s = load_blender(lego_dir, splits=("train",), max_views=2, downsample=2)["train"]
    assert (s.width, s.height, s.composited, s.downsample) == (200, 200, True, 2)
    assert s.focal == pytest.approx(LEGO_FOCAL_400 / 2, rel=1e-9)
    assert (s.cx, s.cy) == (100.0, 100.0)
    raw = np.asarray(Image.open(lego_dir / "train" / "r_1.png").convert("RGBA")).astype(np.float64) / 255
    comp = raw[..., :3] * raw[..., 3:] + (1 - raw[..., 3:])
    ref_rgb = comp.reshape(200, 2, 200, 2, 3).mean(axis=(1, 3))
    ref_a = raw[..., 3].reshape(200, 2, 200, 2).mean(axis=(1, 3))
    tol = 0.5 / 255 + 1e-6  # stored as rounded uint8
    np.testing.assert_allclose(s.rgb(1), ref_rgb, atol=tol, rtol=0)
    np.testing.assert_allclose(s.alpha(1), ref_a, atol=tol, rtol=0)
    # Not nearest-neighbour subsampling: somewhere the two differ by more than rounding.
    assert np.abs(comp[::2, ::2] - ref_rgb).max() > 0.1


def test_area_downsample_reference():
    x = np.random.default_rng(1).random((12, 18, 3)).astype(np.float32)
    ref = x.astype(np.float64).reshape(4, 3, 6, 3, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(area_downsample(x, 3), ref, atol=1e-6)
    with pytest.raises(ValueError, match="does not divide"):
        area_downsample(x, 5)


def _project(s: SplitData, view: int, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Continuous pixel coordinates (u, v) and depth of a world point, from K and the inverse pose."""
    w2c = np.linalg.inv(s.c2w[view].astype(np.float64))
    pc = w2c[:3, :3] @ X + w2c[:3, 3]
    uvw = s.intrinsics.astype(np.float64) @ pc
    return uvw[:2] / uvw[2], float(pc[2])


def _flat(s: SplitData, view: int, uv: np.ndarray) -> int:
    col, row = int(np.floor(uv[0])), int(np.floor(uv[1]))
    assert 0 <= col < s.width and 0 <= row < s.height
    return view * s.n_pixels + row * s.width + col


def _point_ray_distance(X, o, d) -> float:
    v = X - o
    return float(np.linalg.norm(v - (v @ d) * d))


@pytest.mark.parametrize("which", ["lego", "procedural"])
def test_point_projects_where_the_rays_say(which, request):
    if which == "lego":
        s = request.getfixturevalue("lego3")["train"]
        views = (0, 2)
    else:
        s = request.getfixturevalue("small_dataset")["train"]
        views = (1, 5)
    v0, v1 = views
    # A point on the ray through pixel (row 151, col 173) of view v0 (scaled to the image size).
    row, col = int(0.38 * s.height), int(0.43 * s.width)
    flat0 = v0 * s.n_pixels + row * s.width + col
    o, d = s.rays([flat0])
    X = (o[0] + 3.9 * d[0]).astype(np.float64)
    uv0, _ = _project(s, v0, X)
    np.testing.assert_allclose(uv0, [col + 0.5, row + 0.5], atol=2e-3)
    # In the other view: the ray through the pixel X falls in passes within half a pixel of X.
    uv1, depth1 = _project(s, v1, X)
    flat1 = _flat(s, v1, uv1)
    o1, d1 = s.rays([flat1])
    half_pixel = math.sqrt(0.5) / s.focal * depth1 * 1.01
    assert _point_ray_distance(X, o1[0].astype(np.float64), d1[0].astype(np.float64)) <= half_pixel
    # ... and not the ray of a pixel two columns away.
    o2, d2 = s.rays([flat1 + 2])
    assert _point_ray_distance(X, o2[0].astype(np.float64), d2[0].astype(np.float64)) > half_pixel


def test_lego_cameras_look_at_the_origin(lego3):
    # With the OpenGL -> OpenCV flip, the centre ray of each view passes next to the origin
    # (without it, it would point away from the scene).
    s = lego3["train"]
    for v in range(s.n_views):
        o, d = s.view_rays(v)
        centre = (s.height // 2) * s.width + s.width // 2
        assert _point_ray_distance(np.zeros(3), o[centre].astype(np.float64), d[centre].astype(np.float64)) < 0.05
        assert float(-o[centre] @ d[centre]) > 3.5  # the origin is in front of the camera


def test_batch_matches_views(small_dataset):
    s = small_dataset["train"]
    rng = np.random.default_rng(3)
    idx = rng.integers(0, s.n_rays, 500)
    o, d, rgb = s.batch(idx)
    assert o.shape == d.shape == rgb.shape == (500, 3)
    assert o.dtype == d.dtype == rgb.dtype == np.float32
    view, pix = np.divmod(idx, s.height * s.width)
    row, col = np.divmod(pix, s.width)
    for k in range(0, 500, 37):
        vo, vd = s.view_rays(view[k])
        np.testing.assert_allclose(o[k], vo[pix[k]], atol=1e-6)
        np.testing.assert_allclose(d[k], vd[pix[k]], atol=1e-6)
        np.testing.assert_array_equal(rgb[k], s.rgb(view[k])[row[k], col[k]])
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    with pytest.raises(IndexError):
        s.batch([s.n_rays])


def test_max_views_stride_and_config(small_scene):
    ds = load_blender(small_scene, splits=("train", "test"), max_views={"train": 3}, stride={"test": 2})
    assert ds["train"].n_views == 3 and ds["test"].n_views == 2
    np.testing.assert_array_equal(ds["test"].frame_indices, [0, 2])
    assert ds["test"].frame_names == ["r_0", "r_2"]
    with pytest.raises(DatasetError, match="split 'val' was not loaded"):
        ds["val"]
    cfg = DataConfig(
        downsample=2, test_stride=2, max_test_views=1, near_far=(1.0, 7.0), aabb=(-1, -1, -1, 1, 1, 2)
    )
    ds = load_from_config(small_scene, cfg, splits=("train", "test"))
    assert ds["train"].n_views == 8 and ds["train"].width == 16 and ds["train"].composited
    np.testing.assert_array_equal(ds["test"].frame_indices, [0])
    np.testing.assert_array_equal(ds.near_far, [1.0, 7.0])
    np.testing.assert_array_equal(ds.aabb, [[-1, -1, -1], [1, 1, 2]])


def test_full_resolution_train_split_memory(lego_dir):
    """Loading the full-resolution 100-view train split stays far below 1 GB (fresh process)."""
    code = (
        "import sys\n"
        "from tensorf_common.data.blender import load_blender\n"
        "ds = load_blender(sys.argv[1], splits=('train',))\n"
        "s = ds['train']\n"
        "assert s.n_views == 100 and s.width == 400\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(int(hwm.split()[1]))\n"
    )
    # VmHWM, not getrusage's ru_maxrss: Linux carries the pre-exec high-water mark into ru_maxrss
    # (exec_mmap keeps the old mm's peak), so a child forked from a large pytest process reported
    # the parent's size (1.35 GB in a full-suite run).
    out = subprocess.run(
        [sys.executable, "-c", code, str(lego_dir)], capture_output=True, text=True, check=True, timeout=300
    )
    max_rss_kib = int(out.stdout.strip().splitlines()[-1])
    assert max_rss_kib * 1024 < 1e9, f"peak RSS {max_rss_kib / 1024:.0f} MiB"


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


def _write_dataset(root: Path, n: int = 3, size: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    frames = []
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(root / "train" / f"r_{i}.png", rng.integers(0, 256, (size, size, 4), dtype=np.uint8))
        m = np.eye(4)
        m[:3, 3] = [0.0, -4.0, 0.5 * i]
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": m.tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


def _edit_meta(root: Path, fn) -> None:
    p = root / "transforms_train.json"
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))


def _set(path, value):
    def fn(meta):
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return fn


def _delete(path):
    def fn(meta):
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return fn


BAD_META = {
    "missing camera_angle_x": (_delete(["camera_angle_x"]), "camera_angle_x"),
    "camera_angle_x zero": (_set(["camera_angle_x"], 0.0), "camera_angle_x"),
    "camera_angle_x negative": (_set(["camera_angle_x"], -0.5), "camera_angle_x"),
    "camera_angle_x string": (_set(["camera_angle_x"], "wide"), "camera_angle_x"),
    "missing frames": (_delete(["frames"]), "frames"),
    "empty frames": (_set(["frames"], []), "frames is empty"),
    "frames not a list": (_set(["frames"], {"a": 1}), "frames"),
    "frame missing file_path": (_delete(["frames", 1, "file_path"]), "frames[1]"),
    "frame missing transform": (_delete(["frames", 2, "transform_matrix"]), "frames[2]"),
    "transform 3x4": (_set(["frames", 1, "transform_matrix"], np.eye(4)[:3].tolist()), "frames[1].transform_matrix is not 4x4"),
    "transform nan": (_set(["frames", 2, "transform_matrix", 0, 3], float("nan")), "frames[2].transform_matrix"),
    "transform inf": (_set(["frames", 0, "transform_matrix", 1, 1], float("inf")), "frames[0].transform_matrix"),
    "transform strings": (_set(["frames", 0, "transform_matrix", 1], ["a", "b", "c", "d"]), "frames[0].transform_matrix"),
    "missing image": (_set(["frames", 2, "file_path"], "./train/nope"), "frames[2].file_path"),
    "transform all zero": (_set(["frames", 1, "transform_matrix"], np.zeros((4, 4)).tolist()),
                           "frames[1].transform_matrix: its rotation block (upper-left 3x3) is singular"),
    "transform rank 2": (_set(["frames", 0, "transform_matrix"], np.diag([1.0, 1.0, 0.0, 1.0]).tolist()),
                         "frames[0].transform_matrix: its rotation block"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_bad_metadata_raises_dataset_error(case, tmp_path):
    root = _write_dataset(tmp_path / "ds")
    edit, needle = BAD_META[case]
    _edit_meta(root, edit)
    with pytest.raises(DatasetError) as info:
        load_blender(root, splits=("train",))
    msg = str(info.value)
    assert "\n" not in msg
    assert "transforms_train.json" in msg and needle in msg, msg


def test_bad_files_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_blender(tmp_path / "missing")

    root = _write_dataset(tmp_path / "nojson")
    (root / "transforms_train.json").unlink()
    with pytest.raises(DatasetError, match=r"transforms_train\.json: file not found"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "badjson")
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.7, "frames": [')
    with pytest.raises(DatasetError, match=r"transforms_train\.json: not valid JSON"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "listjson")
    (root / "transforms_train.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="top level"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "garbage")
    (root / "train" / "r_1.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=r"transforms_train\.json: frames\[1\]\.file_path: cannot read image"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "truncated")
    data = (root / "train" / "r_2.png").read_bytes()
    (root / "train" / "r_2.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"frames\[2\]\.file_path: cannot read image"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "mixed")
    write_png(root / "train" / "r_2.png", np.zeros((8, 10, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"frames\[2\]\.file_path: image r_2\.png is 10x8, expected 8x8"):
        load_blender(root, splits=("train",))

    root = _write_dataset(tmp_path / "divide")
    with pytest.raises(DatasetError, match=r"frames\[0\]\.file_path: downsample 3 does not divide .* 8x8"):
        load_blender(root, splits=("train",), downsample=3)
    with pytest.raises(DatasetError, match="downsample"):
        load_blender(root, splits=("train",), downsample=0)
    with pytest.raises(DatasetError, match="near_far"):
        load_blender(root, splits=("train",), near_far=(3.0, 2.0))
    with pytest.raises(DatasetError, match="aabb"):
        load_blender(root, splits=("train",), aabb=[[1, 1, 1], [0, 0, 0]])
    # The dataset itself is fine.
    assert load_blender(root, splits=("train",))["train"].n_views == 3


def _escape_outside(root: Path, kind: str) -> str:
    """A file_path for frame 1 that names an existing PNG outside ``root`` (written beside it)."""
    secret = root.parent / "outside" / "secret.png"
    secret.parent.mkdir(exist_ok=True)
    write_png(secret, np.zeros((8, 8, 4), dtype=np.uint8))
    if kind == "dotdot":
        return "./train/../../outside/secret"
    if kind == "absolute":
        return str(secret.with_suffix(""))
    link = root / "train" / "link.png"  # a symlinked image inside the folder that leads out
    link.symlink_to(secret)
    return "./train/link"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_paths_outside_the_dataset_folder_are_refused(kind, tmp_path):
    """A dataset is untrusted: it must not make the loader read files outside its folder."""
    root = _write_dataset(tmp_path / "ds")
    fp = _escape_outside(root, kind)
    _edit_meta(root, _set(["frames", 1, "file_path"], fp))
    with pytest.raises(DatasetError) as info:
        load_blender(root, splits=("train",))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{root / 'transforms_train.json'}: frames[1].file_path "), msg
    assert "outside the dataset folder" in msg and "secret" in msg, msg


def test_symlinks_inside_the_dataset_folder_are_kept(tmp_path):
    """A symlink that stays inside the folder (and a dataset folder reached through a symlink) loads."""
    root = _write_dataset(tmp_path / "ds")
    (root / "train" / "alias.png").symlink_to(root / "train" / "r_1.png")
    _edit_meta(root, _set(["frames", 1, "file_path"], "./train/alias"))
    (tmp_path / "ds-link").symlink_to(root)
    s = load_blender(tmp_path / "ds-link", splits=("train",))["train"]
    assert s.n_views == 3 and s.frame_names[1] == "alias"


def test_rgb_and_greyscale_pngs_are_opaque(tmp_path):
    root = _write_dataset(tmp_path / "ds", n=2)
    Image.fromarray(np.full((8, 8, 3), 10, dtype=np.uint8)).save(root / "train" / "r_0.png")
    Image.fromarray(np.full((8, 8), 20, dtype=np.uint8)).save(root / "train" / "r_1.png")
    s = load_blender(root, splits=("train",))["train"]
    np.testing.assert_array_equal(s.alpha(0), 1.0)
    np.testing.assert_allclose(s.rgb(1), 20 / 255, atol=1e-7)


# ------------------------------------------------------------------------------------------
# Batch sampler
# ------------------------------------------------------------------------------------------


def _draw(s: BatchSampler, n: int) -> np.ndarray:
    return np.stack([s.next() for _ in range(n)])


def test_sampler_deterministic_and_covers_each_epoch():
    a, b = BatchSampler(100, 10, seed=7), BatchSampler(100, 10, seed=7)
    xa, xb = _draw(a, 25), _draw(b, 25)
    assert xa.dtype == np.int64 and xa.shape == (25, 10)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(np.sort(xa[:10].reshape(-1)), np.arange(100))  # epoch 0
    np.testing.assert_array_equal(np.sort(xa[10:20].reshape(-1)), np.arange(100))  # epoch 1
    assert not np.array_equal(xa[:10], xa[10:20])  # a new permutation per epoch
    assert not np.array_equal(xa, _draw(BatchSampler(100, 10, seed=8), 25))


def test_sampler_batches_straddle_epochs_and_small_pools():
    s = BatchSampler(10, 4, seed=0)
    x = _draw(s, 5).reshape(-1)
    assert x.size == 20
    np.testing.assert_array_equal(np.sort(x[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(x[10:20]), np.arange(10))
    tiny = BatchSampler(3, 8, seed=0).next()
    assert tiny.shape == (8,) and set(tiny.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        BatchSampler(0, 4)
    with pytest.raises(ValueError):
        BatchSampler(10, 0)


def test_sampler_resume_is_bit_identical():
    ref = BatchSampler(1000, 64, seed=3)
    _draw(ref, 7)  # mid-epoch
    state = ref.state_dict()
    expect = _draw(ref, 30)  # crosses epochs
    resumed = BatchSampler(1000, 64, seed=3)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(_draw(resumed, 30), expect)
    # A state survives a JSON round trip of its plain fields.
    fresh = BatchSampler(5, 1, seed=99)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(_draw(fresh, 30), expect)


def test_sampler_restrict():
    s = BatchSampler(1000, 50, seed=1)
    _draw(s, 3)
    keep = np.arange(0, 1000, 3)
    assert s.restrict(keep) == keep.size
    x = _draw(s, 20)
    assert np.isin(x, keep).all()
    # The first epoch of the new pool draws distinct indices (6 full batches of the 334 kept).
    assert np.unique(x[:6].reshape(-1)).size == 300
    # Deterministic: the same history gives the same batches.
    t = BatchSampler(1000, 50, seed=1)
    _draw(t, 3)
    t.restrict(keep)
    np.testing.assert_array_equal(_draw(t, 20), x)
    # Restricting again intersects; a boolean mask is relative to the current (sorted) pool.
    mask = (s.pool() % 2) == 0
    assert s.restrict(mask) == int(mask.sum())
    assert np.all(_draw(s, 10) % 6 == 0)
    with pytest.raises(ValueError, match="no indices"):
        s.restrict(np.array([1, 2, 4]))
    with pytest.raises(ValueError, match="entries"):
        s.restrict(np.ones(3, dtype=bool))


def test_sampler_restricted_state_round_trip():
    s = BatchSampler(5000, 128, seed=11)
    _draw(s, 4)
    s.restrict(np.flatnonzero(np.random.default_rng(0).random(5000) < 0.3))
    _draw(s, 5)
    state = s.state_dict()
    assert state["pool_bits"] is not None and state["pool_bits"].nbytes == 625
    expect = _draw(s, 40)
    r = BatchSampler(5000, 128, seed=11)
    r.load_state_dict(state)
    np.testing.assert_array_equal(_draw(r, 40), expect)
    bad = dict(state, pool_size=3)
    with pytest.raises(ValueError, match="inconsistent"):
        r.load_state_dict(bad)


def test_sampler_from_index_array():
    s = BatchSampler(np.array([5, 9, 9, 2]), 3, seed=0)
    assert s.pool_size == 3 and s.universe == 10
    x = _draw(s, 4).reshape(-1)
    assert set(x.tolist()) == {2, 5, 9}


# ------------------------------------------------------------------------------------------
# resolve_data_dir
# ------------------------------------------------------------------------------------------


def test_resolve_data_dir_given_path(tmp_path):
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        resolve_data_dir(tmp_path / "file")


def test_resolve_data_dir_generates_the_scene_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORF_BENCH_CACHE", str(tmp_path / "cache"))
    kw = {"width": 8, "height": 8, "n_train": 2, "n_val": 1, "n_test": 1}
    target = scene_cache_dir(kw)
    assert target.parent == tmp_path / "cache" and target.name.startswith("scene-")
    assert scene_cache_dir({**kw, "seed": 1}) != target
    assert scene_cache_dir({}) != target
    # A folder left by a killed generation (no marker) is replaced.
    target.mkdir(parents=True)
    (target / "junk").write_text("half")
    p = resolve_data_dir(None, scene_kwargs=kw)
    assert p == target and (p / "scene.json").is_file() and not (p / "junk").exists()
    assert load_blender(p, splits=("train", "val", "test"))["train"].n_views == 2
    stamp = (p / "transforms_train.json").stat().st_mtime_ns
    assert resolve_data_dir(None, scene_kwargs=kw) == p
    assert (p / "transforms_train.json").stat().st_mtime_ns == stamp  # not regenerated
    assert [q.name for q in p.parent.iterdir()] == [p.name]  # no temporary folders left
    with pytest.raises(DatasetError, match="unknown option"):
        resolve_data_dir(None, scene_kwargs={"colour": "red"})


def test_cache_root_default(monkeypatch):
    monkeypatch.delenv("TENSORF_BENCH_CACHE", raising=False)
    assert scene_cache_dir().parent == Path(os.path.expanduser("~")) / ".cache" / "tensorf-bench"


def test_fixtures_and_repr(lego_small, small_dataset):
    assert lego_small["train"].n_views == 10 and lego_small["test"].n_views == 2
    assert (lego_small["train"].width, lego_small["train"].height) == (100, 100)
    r = repr(small_dataset)
    assert "BlenderDataset(" in r and "views=8" in r and "32x32" in r and len(r) < 1000


def test_a_restored_sampler_continues_the_batches_and_refuses_another_dataset():
    s = BatchSampler(1000, 64, seed=3)
    s.restrict(np.arange(0, 1000, 3))
    s.next()
    state = s.state_dict()
    again = BatchSampler.restored(state, 1000)
    for _ in range(8):  # across an epoch of the restricted pool
        np.testing.assert_array_equal(again.next(), s.next())
    with pytest.raises(ValueError, match="trained on 1000 rays, this dataset has 999"):
        BatchSampler.restored(state, 999)
    with pytest.raises(ValueError, match="sampler state"):
        BatchSampler.restored({k: v for k, v in state.items() if k != "epoch"}, 1000)
