"""Scene bounds from the training views' alpha: space carving of the visual hull (numpy only).

A voxel of a grid over the dataset box is removed when some training view in which it projects
inside the image sees (almost) no coverage there. The result is conservative: every point of the
true object lies inside a kept voxel (cell) and inside the returned tight box, because

* each view's silhouette (``alpha >= alpha_thres``) is dilated by the projected radius of a voxel
  plus one pixel before a voxel centre is tested against it, so a voxel that touches the object
  anywhere survives, as does an object point on a soft (fractional-alpha) edge;
* the kept set is then dilated by ``margin`` voxels in 3D.

The grid is corner-aligned (``align_corners=True``, like the official dense grids): voxel centres
are ``linspace(aabb[0], aabb[1], n)`` per axis, and the occupancy array is indexed ``[x, y, z]``.
The tight box is the box of the kept voxel centres, the way the official ``updateAlphaMask``
computes ``new_aabb``.

Cost: views are processed one after another over the voxels still alive, so after the first few
views only the hull's neighbourhood is projected (100 views over 128^3 take a few seconds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .config import TrainConfig
from .errors import DatasetError
from .geometry import as_aabb


def grid_axes(aabb, resolution: Union[int, Sequence[int]]) -> list[np.ndarray]:
    """Voxel-centre coordinates per axis, ``linspace(aabb[0][k], aabb[1][k], n_k)`` (float32)."""
    a = as_aabb(aabb)
    res = _resolution(resolution)
    return [np.linspace(a[0, k], a[1, k], res[k], dtype=np.float64).astype(np.float32) for k in range(3)]


def _resolution(resolution: Union[int, Sequence[int]]) -> tuple[int, int, int]:
    res = (int(resolution),) * 3 if np.ndim(resolution) == 0 else tuple(int(r) for r in resolution)
    if len(res) != 3 or min(res) < 2:
        raise ValueError(f"resolution: need one or three sizes >= 2, got {resolution!r}")
    return res  # type: ignore[return-value]


def _dilate_2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square (a superset of the disc)."""
    if radius <= 0:
        return mask
    from scipy.ndimage import maximum_filter

    return maximum_filter(mask, size=2 * radius + 1, mode="constant", cval=False)


def _dilate_3d(occ: np.ndarray, margin: int) -> np.ndarray:
    if margin <= 0:
        return occ
    from scipy.ndimage import maximum_filter

    return maximum_filter(occ, size=2 * margin + 1, mode="constant", cval=False)


@dataclass(frozen=True)
class CarvePlan:
    """What a carving of a split needs besides the per-view work (shared by this numpy carving and
    ``jax_tensorf.carving``, so that both read the same views, thresholds and radii)."""

    box: np.ndarray
    """The carved box, ``(2, 3)`` float32."""
    res: tuple[int, int, int]
    """Voxels per axis."""
    view_ids: list[int]
    """The views used, in carving order."""
    thres_u8: int
    """Pixels with alpha below this uint8 value count as empty."""
    trivial: bool
    """No used pixel is below the threshold (no alpha information): the whole box is kept."""
    voxel_radius: float
    """Half the voxel diagonal."""
    radius_scale: float
    """``focal * voxel_radius * stretch``: a view's dilation radius is
    ``ceil(radius_scale / max(zmin - voxel_radius, 1e-3)) + 1`` pixels, with ``zmin`` the smallest
    camera depth of a live voxel in front of it (see :func:`dilation_radius`)."""


def carve_plan(
    split, aabb, resolution: Union[int, Sequence[int]], alpha_thres: float, views: Optional[Sequence[int]]
) -> CarvePlan:
    """The :class:`CarvePlan` of ``carve_visual_hull``'s arguments (checks them)."""
    box = as_aabb(aabb)
    res = _resolution(resolution)
    view_ids = list(range(split.n_views)) if views is None else [int(v) for v in views]
    thres_u8 = int(np.ceil(float(alpha_thres) * 255.0))
    trivial = thres_u8 <= 0 or not any(bool((split.images[v, ..., 3] < thres_u8).any()) for v in view_ids)
    voxel = (box[1] - box[0]) / (np.asarray(res, dtype=np.float32) - 1)
    voxel_radius = float(np.linalg.norm(voxel)) / 2.0  # half the voxel diagonal
    H, W = split.height, split.width
    f = float(split.focal)
    stretch = float(np.sqrt(1.0 + (max(split.cx, W - split.cx) ** 2 + max(split.cy, H - split.cy) ** 2) / f**2))
    return CarvePlan(box, res, view_ids, thres_u8, trivial, voxel_radius, f * voxel_radius * stretch)


def dilation_radius(plan: CarvePlan, zmin: float) -> int:
    """Pixels by which a view's silhouette is dilated when the nearest live voxel centre in front of
    it is at depth ``zmin``.

    A point within ``voxel_radius`` of a centre at depth >= ``zmin - voxel_radius`` that projects
    inside the image moves by at most ``f * r * sqrt(1 + tan_max^2) / (zmin - r)`` pixels; one more
    pixel covers soft (fractional-alpha) silhouette edges."""
    return int(np.ceil(plan.radius_scale / max(float(zmin) - plan.voxel_radius, 1e-3))) + 1


def camera_projection(c2w) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera (OpenCV) of a camera-to-world matrix, ``R^T (p - t)`` as ``A p + b``:
    ``(A (3, 3), b (3,))`` float32, computed in float64."""
    c2w = np.asarray(c2w, dtype=np.float64)
    R, t = c2w[:3, :3], c2w[:3, 3]
    return R.T.astype(np.float32), (-R.T @ t).astype(np.float32)


def _carve(split, plan: CarvePlan) -> np.ndarray:
    """Flat indices (into the ``res`` grid) of the voxels that survive every view."""
    res = plan.res
    axes = grid_axes(plan.box, res)
    # Flat indices of the voxels still alive, and their centres (float32 to keep memory small).
    alive = np.arange(int(np.prod(res)), dtype=np.int64)
    ix, iy, iz = np.unravel_index(alive, res)
    pts = np.stack([axes[0][ix], axes[1][iy], axes[2][iz]])  # (3, N): contiguous coordinate rows
    del ix, iy, iz
    H, W = split.height, split.width
    f = float(split.focal)
    for v in plan.view_ids:
        if alive.size == 0:
            break
        # world -> camera written out per coordinate (a (N,3) @ (3,3) matmul is an order of
        # magnitude slower here)
        A, b = camera_projection(split.c2w[v])
        x, y, zz = pts
        z = x * A[2, 0] + y * A[2, 1] + zz * A[2, 2] + b[2]
        front = z > 1e-6
        inv_z = np.float32(f) / np.where(front, z, np.float32(1.0))
        # continuous pixel coordinates (pixel centres at +0.5)
        u = (x * A[0, 0] + y * A[0, 1] + zz * A[0, 2] + b[0]) * inv_z + np.float32(split.cx)
        w = (x * A[1, 0] + y * A[1, 1] + zz * A[1, 2] + b[1]) * inv_z + np.float32(split.cy)
        inside = front & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        if not inside.any():
            continue
        radius_px = dilation_radius(plan, float(z[front].min()))
        sil = _dilate_2d(split.images[v, ..., 3] >= plan.thres_u8, radius_px).reshape(-1)
        keep = ~inside
        idx = np.flatnonzero(inside)
        keep[idx] = sil[w[idx].astype(np.int64) * W + u[idx].astype(np.int64)]  # floor: both >= 0
        if not keep.all():
            alive = alive[keep]
            pts = pts[:, keep]
    return alive


def carve_visual_hull(
    split,
    aabb,
    resolution: Union[int, Sequence[int]] = 128,
    alpha_thres: float = 0.05,
    margin: int = 1,
    views: Optional[Sequence[int]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Carve the visual hull of a split's alpha inside ``aabb``.

    Args:
        split: a :class:`tensorf_common.data.blender.SplitData` (usually the train split).
        aabb: the box to carve, ``(2, 3)`` or 6 numbers.
        resolution: voxels per axis (one number or ``(X, Y, Z)``), corner-aligned.
        alpha_thres: pixels with alpha below this count as empty.
        margin: voxels of 3D dilation added around the carved hull.
        views: which views to use (default: all).

    Returns:
        ``(occupancy, tight_aabb)``: a bool ``(X, Y, Z)`` array indexed ``[x, y, z]`` and the
        ``(2, 3)`` float32 box of the kept voxel centres. When no pixel of any used view has alpha
        below ``alpha_thres`` (no alpha information, e.g. a real capture) the whole box is kept.

    Raises:
        DatasetError: carving removed every voxel (the poses and the alpha disagree).
    """
    plan = carve_plan(split, aabb, resolution, alpha_thres, views)
    if plan.trivial:
        return np.ones(plan.res, dtype=bool), plan.box.copy()
    return finish_hull(split.name, _carve(split, plan), plan, margin)


def finish_hull(split_name: str, alive: np.ndarray, plan: CarvePlan, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """``(occupancy, tight_aabb)`` from the flat indices of the voxels that survived carving: the
    occupancy grid dilated by ``margin`` voxels and the box of its voxel centres.

    Raises:
        DatasetError: no voxel survived.
    """
    occ = np.zeros(plan.res, dtype=bool)
    occ.reshape(-1)[np.asarray(alive, dtype=np.int64)] = True
    if not occ.any():
        raise DatasetError(
            f"{split_name}: carving the visual hull removed every voxel of the box "
            f"{plan.box.tolist()} (do the poses and the alpha channel agree?)"
        )
    occ = _dilate_3d(occ, int(margin))
    return occ, occupancy_bounds(occ, plan.box)


def occupancy_bounds(occ: np.ndarray, aabb) -> np.ndarray:
    """The ``(2, 3)`` float32 box of the True voxel centres of a corner-aligned ``[x, y, z]`` grid."""
    box = as_aabb(aabb)
    axes = grid_axes(box, occ.shape)
    lo, hi = [], []
    for k in range(3):
        other = tuple(a for a in range(3) if a != k)
        idx = np.flatnonzero(occ.any(axis=other))
        if idx.size == 0:
            raise ValueError("occupancy_bounds: the grid is empty")
        lo.append(axes[k][idx[0]])
        hi.append(axes[k][idx[-1]])
    return np.array([lo, hi], dtype=np.float32)


def ray_box_hit(origins: np.ndarray, dirs: np.ndarray, aabb) -> np.ndarray:
    """Whether each ray ``(N, 3)`` meets the box in front of its origin (slab test), ``(N,)`` bool."""
    box = as_aabb(aabb).astype(np.float64)
    o = np.asarray(origins, dtype=np.float64)
    d = np.asarray(dirs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (box[0] - o) * inv
        t2 = (box[1] - o) * inv
    tn = np.fmin(t1, t2).max(axis=-1)
    tf = np.fmax(t1, t2).min(axis=-1)
    return tf >= np.maximum(tn, 0.0)


@dataclasses.dataclass
class TrainingBox:
    """Where training starts: its box, an optional initial alpha mask and the set-up event."""

    aabb: np.ndarray
    """``(2, 3)`` float32 box the grid spans."""
    mask: Optional[np.ndarray] = None
    """``(Z, Y, X)`` bool initial alpha mask (the carved hull, ``carve_as_mask``), or None."""
    mask_aabb: Optional[np.ndarray] = None
    """The box the mask spans (the dataset's box, which was carved)."""
    event: Optional[dict] = None
    """``{"event": "carve", "aabb": ..., "from": ...}`` when the box was carved."""


def training_box(split, aabb, tc: TrainConfig, carve=None) -> TrainingBox:
    """The box a trainer starts from: the dataset's (``train.box='dataset'``), or the visual hull of
    ``split``'s alpha carved at ``train.carve_resolution`` (``'carve'``), with the hull as the
    initial alpha mask over the dataset box when ``train.carve_as_mask``. ``carve``: a twin of
    :func:`carve_visual_hull` (the JAX trainer passes the one that runs on its device)."""
    box = as_aabb(aabb)
    if tc.box != "carve":
        return TrainingBox(box)
    occ, tight = (carve or carve_visual_hull)(split, box, tc.carve_resolution)
    event = {"event": "carve", "aabb": np.asarray(tight).tolist(), "from": box.tolist()}
    mask = np.ascontiguousarray(np.transpose(occ, (2, 1, 0))) if tc.carve_as_mask else None
    return TrainingBox(np.asarray(tight, np.float32), mask, box if mask is not None else None, event)
def require_rays_in_box(n_kept: int, split, aabb, source: str = "data.aabb") -> None:
    """Raise a one-line :class:`DatasetError` when no training ray meets the box (``n_kept`` rays
    of ``split`` do; the box lies outside every camera's view, or the cameras look away from it,
    e.g. a ``camera_angle_x`` near pi spreads the rays sideways): the trainers' batch samplers
    would have nothing to draw from. ``source`` says where the box came from."""
    if n_kept > 0:
        return
    box = np.round(as_aabb(aabb).astype(np.float64), 4).tolist()
    centres = np.asarray(split.c2w)[:, :3, 3].astype(np.float64)
    lo, hi = (np.round(c, 3).tolist() for c in (centres.min(axis=0), centres.max(axis=0)))
    raise DatasetError(
        f"transforms_{split.name}.json: none of the {split.n_rays} training rays of its {split.n_views} cameras "
        f"(centres within {lo} .. {hi}, camera_angle_x {split.camera_angle_x:.4f}) meets the box {box} ({source}): "
        "the box is outside every view; check the box and the cameras"
    )


__all__ = [
    "CarvePlan",
    "TrainingBox",
    "camera_projection",
    "carve_plan",
    "carve_visual_hull",
    "dilation_radius",
    "finish_hull",
    "grid_axes",
    "occupancy_bounds",
    "ray_box_hit",
    "training_box",
    "require_rays_in_box",
]
