"""Blender (NeRF-Synthetic) datasets: the loader and the split that makes rays and colours on demand.

Format (that of the official TensoRF ``dataLoader/blender.py``):

* ``transforms_{split}.json`` holds ``camera_angle_x`` and ``frames[]`` with ``file_path`` (no
  extension: ``.png`` is appended) and ``transform_matrix``, a camera-to-world matrix in
  Blender/OpenGL axes (x right, y up, the camera looks along -z). Poses are converted to the OpenCV
  convention (x right, y down, the camera looks along +z) with ``c2w @ diag(1, -1, -1, 1)``; rays
  follow :mod:`tensorf_common.data.rays`.
* RGBA images are composited on white, ``rgb * a + (1 - a)`` (on black, ``rgb * a``, when
  ``white_bg`` is false).

Storage. Rays are never materialised for the whole dataset: a split keeps its images as uint8 RGBA
``(V, H, W, 4)`` (100 views at 400x400 hold 64 MB) and produces rays and colours for a batch of flat
pixel indices on demand (``flat = view * H * W + row * W + col``).

* ``downsample == 1``: the PNG bytes are kept as they are (straight, not composited, alpha) and
  compositing happens in float32 when colours are asked for, exactly like the official loader.
* ``downsample > 1``: each image is composited in float at full resolution, then both the
  composited RGB and the alpha are area-averaged over ``d x d`` blocks (the correct downsample:
  the official code's ``--downsample_train`` is ignored by a bug) and stored rounded to uint8;
  ``SplitData.composited`` is then true and the RGB channels are already the final colour (the
  rounding error is at most 0.5 / 255). Compositing before averaging is what a render at the lower
  resolution would show; averaging straight RGB would darken edges.

Bad input raises :class:`tensorf_common.errors.DatasetError` with a one-line message that names the
file and the field. A dataset is untrusted input: an image path that resolves outside the dataset
folder (``..``, an absolute path, a symlink that leads out) is refused, as is a camera matrix whose
rotation block is singular.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import DatasetError
from ..geometry import BLENDER_AABB, BLENDER_NEAR_FAR, as_aabb
from .rays import get_ray_directions, get_rays, normalize

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)
"""Right-multiplied onto a Blender/OpenGL camera-to-world matrix to get the OpenCV convention."""

SPLITS = ("train", "val", "test")
"""The splits a Blender dataset may have."""

PathLike = Union[str, os.PathLike]


def composite(rgba_u8: np.ndarray, white_bg: bool = True) -> np.ndarray:
    """Straight-alpha uint8 RGBA ``(..., 4)`` to float32 RGB composited on white (or black)."""
    x = rgba_u8.astype(np.float32) / np.float32(255.0)
    rgb, a = x[..., :3], x[..., 3:4]
    return rgb * a + (np.float32(1.0) - a) if white_bg else rgb * a


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an ``(H, W, C)`` or ``(H, W)`` array (float32 result).

    ``factor`` must divide ``H`` and ``W``. Block ``(r, c)`` of the result is the mean of
    ``image[r*factor:(r+1)*factor, c*factor:(c+1)*factor]`` (accumulated in float32 as
    ``factor**2`` strided sums, which is several times faster than a reshape-mean).
    """
    H, W = image.shape[:2]
    factor = int(factor)
    if factor < 1 or H % factor or W % factor:
        raise ValueError(f"downsample {factor} does not divide the image size {W}x{H}")
    x = np.asarray(image, dtype=np.float32)
    if factor == 1:
        return x.copy()
    acc = np.zeros((H // factor, W // factor) + x.shape[2:], dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            acc += x[i::factor, j::factor]
    acc *= np.float32(1.0 / (factor * factor))
    return acc


@dataclass(eq=False, repr=False)
class SplitData:
    """The views of one split, kept as uint8 images; rays and colours are made on demand.

    See the module docstring for the storage choice (``composited``).
    """

    name: str
    """Split name (train, val, test)."""
    images: np.ndarray
    """uint8 ``(V, H, W, 4)``: straight RGBA, or (``composited``) final RGB plus averaged alpha."""
    c2w: np.ndarray
    """float32 ``(V, 4, 4)`` camera-to-world matrices, OpenCV convention."""
    focal: float
    """Focal length in pixels at the loaded resolution."""
    width: int
    height: int
    cx: float
    """Principal point, x (pixels from the left edge): ``width / 2``."""
    cy: float
    """Principal point, y (pixels from the top edge): ``height / 2``."""
    frame_names: list[str]
    """Basename of each frame's ``file_path`` (e.g. ``r_0``)."""
    white_bg: bool = True
    """Background the RGBA is composited on: white (true) or black."""
    composited: bool = False
    """True when ``images[..., :3]`` already is the composited colour (``downsample > 1``)."""
    downsample: int = 1
    """Integer factor the images were area-averaged by."""
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Index of each loaded view in the JSON ``frames`` list (after stride / max_views)."""
    camera_angle_x: float = float("nan")
    """Horizontal field of view from the JSON (radians)."""

    def __post_init__(self) -> None:
        if self.frame_indices.size == 0 and self.n_views:
            self.frame_indices = np.arange(self.n_views, dtype=np.int64)
        self._dirs_cam: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return (
            f"SplitData(name={self.name!r}, views={self.n_views}, size={self.width}x{self.height}, "
            f"focal={self.focal:.3f}, downsample={self.downsample}, composited={self.composited})"
        )

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_pixels(self) -> int:
        """Pixels per view, ``H * W``."""
        return self.height * self.width

    @property
    def n_rays(self) -> int:
        """Rays (pixels) in the split, ``V * H * W``."""
        return self.n_views * self.n_pixels

    @property
    def intrinsics(self) -> np.ndarray:
        """The ``(3, 3)`` float32 pinhole matrix K (pixel centres at integer + 0.5)."""
        return np.array(
            [[self.focal, 0.0, self.cx], [0.0, self.focal, self.cy], [0.0, 0.0, 1.0]], dtype=np.float32
        )

    def memory_bytes(self) -> int:
        """Bytes held by the split's arrays (images, poses, cached directions)."""
        n = self.images.nbytes + self.c2w.nbytes + self.frame_indices.nbytes
        if self._dirs_cam is not None:
            n += self._dirs_cam.nbytes
        return int(n)

    # -- per view ------------------------------------------------------------------------------
    def _check_view(self, view: int) -> int:
        v = int(view)
        if not 0 <= v < self.n_views:
            raise IndexError(f"{self.name}: view {view} out of range [0, {self.n_views})")
        return v

    def _colour(self, rgba: np.ndarray) -> np.ndarray:
        if self.composited:
            return rgba[..., :3].astype(np.float32) / np.float32(255.0)
        return composite(rgba, self.white_bg)

    def rgb(self, view: int) -> np.ndarray:
        """Composited colour of one view, ``(H, W, 3)`` float32 in [0, 1]."""
        return self._colour(self.images[self._check_view(view)])

    def alpha(self, view: int) -> np.ndarray:
        """Alpha (coverage) of one view, ``(H, W)`` float32 in [0, 1]."""
        return self.images[self._check_view(view), ..., 3].astype(np.float32) / np.float32(255.0)

    def directions(self) -> np.ndarray:
        """Camera-frame pixel-centre directions ``(H, W, 3)`` (z = 1), cached."""
        if self._dirs_cam is None:
            self._dirs_cam = get_ray_directions(self.height, self.width, self.focal, self.cx, self.cy)
        return self._dirs_cam

    def view_rays(self, view: int) -> tuple[np.ndarray, np.ndarray]:
        """All rays of one view in row-major pixel order: ``(origins, dirs)``, each ``(H*W, 3)``."""
        return get_rays(self.directions(), self.c2w[self._check_view(view)])

    # -- batches of flat indices ---------------------------------------------------------------
    def unravel(self, flat_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(view, row, col)`` int64 arrays of flat pixel indices (``view*H*W + row*W + col``)."""
        idx = np.asarray(flat_idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rays):
            raise IndexError(f"{self.name}: flat pixel index out of range [0, {self.n_rays})")
        view, pix = np.divmod(idx, self.n_pixels)
        row, col = np.divmod(pix, self.width)
        return view, row, col

    def rays(self, flat_idx) -> tuple[np.ndarray, np.ndarray]:
        """Rays of the given flat pixel indices: ``(origins (B, 3), unit dirs (B, 3))`` float32."""
        view, row, col = self.unravel(flat_idx)
        f = np.float32(self.focal)
        d = np.empty(view.shape + (3,), dtype=np.float32)
        d[..., 0] = (col.astype(np.float32) + np.float32(0.5) - np.float32(self.cx)) / f
        d[..., 1] = (row.astype(np.float32) + np.float32(0.5) - np.float32(self.cy)) / f
        d[..., 2] = 1.0
        c2w = self.c2w[view]
        dw = np.einsum("...ij,...j->...i", c2w[..., :3, :3], d)
        dw = normalize(dw).astype(np.float32, copy=False)
        o = np.ascontiguousarray(c2w[..., :3, 3])
        return o, dw

    def rgb_at(self, flat_idx) -> np.ndarray:
        """Composited colours of the given flat pixel indices, ``(B, 3)`` float32."""
        idx = np.asarray(flat_idx, dtype=np.int64)
        return self._colour(self.images.reshape(-1, 4)[idx])

    def batch(self, flat_idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(origins (B, 3), dirs (B, 3), rgb (B, 3))`` float32 for flat pixel indices."""
        o, d = self.rays(flat_idx)
        return o, d, self.rgb_at(flat_idx)


@dataclass(eq=False, repr=False)
class BlenderDataset:
    """The loaded splits of one Blender-format dataset, with the scene bounds."""

    root: Path
    splits: dict[str, SplitData]
    aabb: np.ndarray
    """Scene box ``(2, 3)`` float32: ``[min, max]``."""
    near_far: np.ndarray
    """``(2,)`` float32 near and far distances along rays."""
    white_bg: bool = True
    downsample: int = 1

    def __repr__(self) -> str:
        return (
            f"BlenderDataset(root={str(self.root)!r}, splits={list(self.splits.values())}, "
            f"aabb={self.aabb.tolist()}, near_far={self.near_far.tolist()}, white_bg={self.white_bg})"
        )

    def __getitem__(self, name: str) -> SplitData:
        try:
            return self.splits[name]
        except KeyError:
            raise DatasetError(
                f"{self.root}: split {name!r} was not loaded (loaded: {', '.join(self.splits) or 'none'})"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.splits

    def memory_bytes(self) -> int:
        """Bytes held by all loaded splits."""
        return int(sum(s.memory_bytes() for s in self.splits.values()))


def _per_split(value, split: str):
    if isinstance(value, Mapping):
        return value.get(split)
    return value


def _fmt_path(p: Path) -> str:
    return str(p)


def _read_transforms(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{_fmt_path(path)}: file not found")
    try:
        with open(path, "rb") as fh:
            meta = json.loads(fh.read().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{_fmt_path(path)}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{_fmt_path(path)}: not valid JSON (not UTF-8 text: {exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{_fmt_path(path)}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{_fmt_path(path)}: expected a JSON object at the top level, got {type(meta).__name__}")
    return meta


def _parse_camera_angle(meta: dict, where: str) -> float:
    if "camera_angle_x" not in meta:
        raise DatasetError(f"{where}: missing key 'camera_angle_x'")
    v = meta["camera_angle_x"]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DatasetError(f"{where}: camera_angle_x must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or not 0.0 < v < math.pi:
        raise DatasetError(f"{where}: camera_angle_x must be in (0, pi) radians, got {v!r}")
    return v


def _parse_frames(meta: dict, where: str) -> list:
    if "frames" not in meta:
        raise DatasetError(f"{where}: missing key 'frames'")
    frames = meta["frames"]
    if not isinstance(frames, list):
        raise DatasetError(f"{where}: frames must be a list, got {type(frames).__name__}")
    if not frames:
        raise DatasetError(f"{where}: frames is empty")
    return frames


def _parse_frame(frame, k: int, where: str) -> tuple[str, np.ndarray]:
    if not isinstance(frame, dict):
        raise DatasetError(f"{where}: frames[{k}] must be an object, got {type(frame).__name__}")
    for key in ("file_path", "transform_matrix"):
        if key not in frame:
            raise DatasetError(f"{where}: frames[{k}] is missing key '{key}'")
    fp = frame["file_path"]
    if not isinstance(fp, str) or not fp.strip():
        raise DatasetError(f"{where}: frames[{k}].file_path must be a non-empty string, got {fp!r}")
    try:
        m = np.array(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: frames[{k}].transform_matrix is not a 4x4 matrix of numbers") from None
    if m.shape != (4, 4):
        raise DatasetError(f"{where}: frames[{k}].transform_matrix is not 4x4 (shape {m.shape})")
    if not np.all(np.isfinite(m)):
        raise DatasetError(f"{where}: frames[{k}].transform_matrix has non-finite values")
    rot = m[:3, :3]
    sv = np.linalg.svd(rot, compute_uv=False)
    if not sv[0] > 0 or sv[-1] <= 1e-6 * sv[0]:
        # rays take their directions from this block: a singular one (an all-zero matrix) gives
        # zero-length or coplanar directions, normalised into NaN or a flat fan
        raise DatasetError(
            f"{where}: frames[{k}].transform_matrix: its rotation block (upper-left 3x3) is singular "
            f"(singular values {np.round(sv, 6).tolist()}), not a camera orientation"
        )
    return fp, m


def _image_path(root: Path, file_path: str) -> Path:
    """``root / (file_path + '.png')``; a file_path that already names an existing image is kept."""
    p = root / (file_path + ".png")
    if not p.exists():
        q = root / file_path
        if q.suffix.lower() in (".png", ".jpg", ".jpeg") and q.is_file():
            return q
    return p


def _require_inside(root: Path, img_path: Path, file_path: str, where: str, field_name: str) -> None:
    """Refuse an image path that resolves outside the dataset folder (``..``, an absolute path, a
    symlink out of it): a dataset is untrusted input and must not make the loader read other files."""
    base = root.resolve()
    target = img_path.resolve()
    if not target.is_relative_to(base):
        raise DatasetError(
            f"{where}: {field_name} {file_path!r} resolves to {target}, outside the dataset folder {base}; refused"
        )


def _select(n: int, stride: int, max_views: Optional[int]) -> np.ndarray:
    idx = np.arange(0, n, stride, dtype=np.int64)
    if max_views is not None:
        idx = idx[: max(0, int(max_views))]
    return idx


def load_split(
    root: PathLike,
    split: str,
    downsample: int = 1,
    white_bg: bool = True,
    max_views: Optional[int] = None,
    stride: int = 1,
) -> SplitData:
    """Load one split (``transforms_{split}.json`` and its images). See :func:`load_blender`."""
    from ..images import read_image_size, read_rgba

    root = Path(root)
    if isinstance(downsample, bool) or int(downsample) != downsample or downsample < 1:
        raise DatasetError(f"downsample: must be a positive integer, got {downsample!r}")
    downsample = int(downsample)
    if int(stride) < 1:
        raise DatasetError(f"stride: must be a positive integer, got {stride!r}")
    json_path = root / f"transforms_{split}.json"
    where = _fmt_path(json_path)
    meta = _read_transforms(json_path)
    angle = _parse_camera_angle(meta, where)
    frames = _parse_frames(meta, where)
    parsed = [_parse_frame(fr, k, where) for k, fr in enumerate(frames)]
    sel = _select(len(parsed), int(stride), max_views)
    if sel.size == 0:
        raise DatasetError(f"{where}: no frames selected (max_views={max_views}, stride={stride})")

    images: Optional[np.ndarray] = None
    full_wh: Optional[tuple[int, int]] = None
    c2w = np.empty((sel.size, 4, 4), dtype=np.float32)
    names: list[str] = []
    for out_i, k in enumerate(sel.tolist()):
        fp, m = parsed[k]
        field_name = f"frames[{k}].file_path"
        img_path = _image_path(root, fp)
        _require_inside(root, img_path, fp, where, field_name)
        if not img_path.is_file():
            raise DatasetError(f"{where}: {field_name}: image {img_path} not found")
        try:
            wh = read_image_size(img_path)
        except Exception as exc:  # PIL raises many types for broken files
            raise DatasetError(f"{where}: {field_name}: cannot read image {img_path} ({_one_line(exc)})") from None
        if full_wh is None:
            full_wh = wh
            W0, H0 = wh
            if W0 % downsample or H0 % downsample:
                raise DatasetError(
                    f"{where}: {field_name}: downsample {downsample} does not divide the image size "
                    f"{W0}x{H0} of {img_path.name}"
                )
            H, W = H0 // downsample, W0 // downsample
            images = np.empty((sel.size, H, W, 4), dtype=np.uint8)
        elif wh != full_wh:
            raise DatasetError(
                f"{where}: {field_name}: image {img_path.name} is {wh[0]}x{wh[1]}, "
                f"expected {full_wh[0]}x{full_wh[1]} like the first frame"
            )
        try:
            rgba = read_rgba(img_path)
        except Exception as exc:
            raise DatasetError(f"{where}: {field_name}: cannot read image {img_path} ({_one_line(exc)})") from None
        if rgba.shape[:2] != (full_wh[1], full_wh[0]):  # pragma: no cover - header and data disagree
            raise DatasetError(f"{where}: {field_name}: image {img_path.name} decoded to an unexpected size")
        assert images is not None
        if downsample == 1:
            images[out_i] = rgba
        else:
            x = rgba.astype(np.float32) / np.float32(255.0)
            x[..., :3] = composite(rgba, white_bg)  # composite at full resolution, then average
            images[out_i] = _round_u8(area_downsample(x, downsample))
        c2w[out_i] = (m @ OPENGL_TO_OPENCV.astype(np.float64)).astype(np.float32)
        names.append(Path(fp).name.removesuffix(".png"))

    assert images is not None and full_wh is not None
    H, W = images.shape[1:3]
    focal = 0.5 * W / math.tan(0.5 * angle)
    return SplitData(
        name=split,
        images=images,
        c2w=c2w,
        focal=float(focal),
        width=int(W),
        height=int(H),
        cx=W / 2.0,
        cy=H / 2.0,
        frame_names=names,
        white_bg=bool(white_bg),
        composited=downsample > 1,
        downsample=downsample,
        frame_indices=sel,
        camera_angle_x=angle,
    )


def _round_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


def load_blender(
    root: PathLike,
    splits: Sequence[str] = ("train", "test"),
    downsample: int = 1,
    white_bg: bool = True,
    near_far: Optional[Sequence[float]] = None,
    aabb=None,
    max_views: Union[int, Mapping[str, int], None] = None,
    stride: Union[int, Mapping[str, int]] = 1,
) -> BlenderDataset:
    """Load a Blender-format (NeRF-Synthetic) dataset.

    Args:
        root: the folder holding ``transforms_{split}.json`` and the images.
        splits: which splits to load (each needs its JSON file).
        downsample: integer factor; images are area-averaged (it must divide the image size).
        white_bg: composite on white (Blender scenes) or black.
        near_far: ``(near, far)``; None = the Blender default ``(2, 6)``.
        aabb: scene box, ``(2, 3)`` or 6 numbers; None = the Blender default +-1.5.
        max_views: load only the first n selected frames (a number, or a mapping split -> number).
        stride: load every n-th frame (a number, or a mapping split -> number).

    Raises:
        DatasetError: a missing or malformed file or field (the message names both).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{_fmt_path(root)}: dataset directory does not exist")
    if not root.is_dir():
        raise DatasetError(f"{_fmt_path(root)}: not a directory")
    if isinstance(splits, str):
        splits = (splits,)
    if not splits:
        raise DatasetError(f"{_fmt_path(root)}: no splits requested")
    try:
        box = as_aabb(BLENDER_AABB if aabb is None else aabb)
    except ValueError as exc:
        raise DatasetError(f"aabb: {exc}") from None
    nf = np.asarray(BLENDER_NEAR_FAR if near_far is None else near_far, dtype=np.float32).reshape(-1)
    if nf.shape != (2,) or not np.all(np.isfinite(nf)) or not 0 <= nf[0] < nf[1]:
        raise DatasetError(f"near_far: need 0 <= near < far, got {near_far!r}")
    loaded: dict[str, SplitData] = {}
    for s in dict.fromkeys(splits):  # keep order, drop duplicates
        st = _per_split(stride, s)
        loaded[s] = load_split(
            root,
            s,
            downsample=downsample,
            white_bg=white_bg,
            max_views=_per_split(max_views, s),
            stride=1 if st is None else st,
        )
    return BlenderDataset(
        root=root, splits=loaded, aabb=box, near_far=nf, white_bg=bool(white_bg), downsample=int(downsample)
    )


def load_from_config(root: PathLike, data_cfg, splits: Sequence[str] = ("train", "test")) -> BlenderDataset:
    """:func:`load_blender` with the options of a :class:`tensorf_common.config.DataConfig`.

    ``test_stride`` and ``max_test_views`` are applied to the ``test`` split while loading (so only
    the evaluated views are read); ``SplitData.frame_indices`` records which frames they are.
    Callers must therefore not apply them a second time.
    """
    aabb = None if data_cfg.aabb is None else np.asarray(data_cfg.aabb, dtype=np.float32).reshape(2, 3)
    return load_blender(
        root,
        splits=splits,
        downsample=data_cfg.downsample,
        white_bg=data_cfg.white_bg,
        near_far=data_cfg.near_far,
        aabb=aabb,
        max_views={"test": data_cfg.max_test_views} if data_cfg.max_test_views is not None else None,
        stride={"test": data_cfg.test_stride},
    )
