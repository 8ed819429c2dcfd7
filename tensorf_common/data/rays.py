"""Camera rays (numpy only), with the conventions of the official TensoRF ``ray_utils.py``.

* Camera-to-world matrices are in the OpenCV convention (x right, y down, the camera looks along
  +z); :data:`tensorf_common.data.blender.OPENGL_TO_OPENCV` converts Blender poses.
* ``focal = 0.5 * W / tan(0.5 * camera_angle_x)`` at the loaded width; the principal point is the
  image centre, ``(cx, cy) = (W / 2, H / 2)``.
* Rays go through pixel centres: the camera-frame direction of column ``i``, row ``j`` is
  ``((i + 0.5 - cx) / f, (j + 0.5 - cy) / f, 1)``; world directions are unit vectors and origins
  are the camera centre.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _focal_pair(focal) -> tuple[float, float]:
    f = np.atleast_1d(np.asarray(focal, dtype=np.float64))
    if f.size == 1:
        return float(f[0]), float(f[0])
    if f.size == 2:
        return float(f[0]), float(f[1])
    raise ValueError(f"focal: expected a number or (fx, fy), got {focal!r}")


def get_ray_directions(
    H: int, W: int, focal, cx: Optional[float] = None, cy: Optional[float] = None
) -> np.ndarray:
    """Camera-frame (OpenCV) directions through every pixel centre, ``(H, W, 3)`` float32.

    ``dirs[j, i] = ((i + 0.5 - cx) / fx, (j + 0.5 - cy) / fy, 1)``: not normalised (z = 1), as in the
    official ``get_ray_directions``; :func:`get_rays` normalises. ``focal`` is a number or
    ``(fx, fy)``; ``cx, cy`` default to ``W / 2, H / 2``.
    """
    fx, fy = _focal_pair(focal)
    cx = W / 2.0 if cx is None else float(cx)
    cy = H / 2.0 if cy is None else float(cy)
    i = (np.arange(W, dtype=np.float32) + np.float32(0.5) - np.float32(cx)) / np.float32(fx)
    j = (np.arange(H, dtype=np.float32) + np.float32(0.5) - np.float32(cy)) / np.float32(fy)
    dirs = np.empty((H, W, 3), dtype=np.float32)
    dirs[..., 0] = i[None, :]
    dirs[..., 1] = j[:, None]
    dirs[..., 2] = 1.0
    return dirs


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def get_rays(dirs_cam: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays of one camera: ``(origins (N, 3), unit directions (N, 3))`` float32.

    ``dirs_cam`` is ``(..., 3)`` in the camera frame (e.g. from :func:`get_ray_directions`), ``c2w``
    a ``(3, 4)`` or ``(4, 4)`` OpenCV camera-to-world matrix. Directions are rotated with
    ``dirs @ c2w[:3, :3].T`` and normalised; every origin is the camera centre ``c2w[:3, 3]``.
    """
    c2w = np.asarray(c2w, dtype=np.float32)
    d = np.asarray(dirs_cam, dtype=np.float32).reshape(-1, 3) @ c2w[:3, :3].T
    d = normalize(d).astype(np.float32, copy=False)
    o = np.broadcast_to(c2w[:3, 3], d.shape).astype(np.float32)
    return o, d

