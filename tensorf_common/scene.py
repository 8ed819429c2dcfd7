"""The procedural default scene: a Blender-format dataset rendered analytically with numpy.

A small still life stands on a finite checkered slab: a striped sphere, a glossy sphere, a
checkered box turned about the vertical axis and a ringed pillar. It is lit by one directional
light with hard shadows, Lambertian diffuse shading and a Blinn-Phong specular highlight, so the
colour depends on the view direction and a radiance field has real work to do.

Geometry is fixed (it does not depend on the seed; :func:`true_bounds` gives its exact box). It
sits off-centre inside the Blender box +-1.5 and fills only part of it, and stays within a radius of
1.3 of the origin so that it is always fully in frame from the orbits below.

Cameras follow the NeRF-Synthetic layout: radius 4.031 (that of lego), looking at the origin,
``camera_angle_x`` 0.6911 (that of lego), +z up. Train and val cameras are drawn uniformly over the
upper hemisphere (elevations 8 to 85 degrees) from the seed (different streams per split); test
cameras are a separate orbit, evenly spaced azimuths at a fixed elevation (30 degrees).

Images are RGBA PNGs with a transparent background. Pixels where anything changes within their
3x3 neighbourhood (a silhouette, a checker edge, a shadow edge, another object) are supersampled
``supersample x supersample`` times, so alpha is fractional on edges like real Blender renders and
textures do not alias; colour is stored straight (not premultiplied), like Blender's PNGs.

The dataset is written into a temporary sibling folder and renamed into place when complete, so a
killed generation never leaves a half-written scene. ``scene.json`` (written last) records the
options, the renderer version and the true bounds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import DatasetError

SCENE_VERSION = 2
"""Bumped whenever the rendered images change; part of the cache key of the default scene."""
SCENE_MARKER = "scene.json"
"""Written last into a generated scene folder: its presence means the scene is complete."""

LEGO_CAMERA_ANGLE_X = 0.6911112070083618
LEGO_RADIUS = 4.031128874

DEFAULT_SCENE: dict[str, Any] = {
    "seed": 0,
    "width": 200,
    "height": 200,
    "n_train": 100,
    "n_val": 100,
    "n_test": 200,
    "camera_angle_x": LEGO_CAMERA_ANGLE_X,
    "radius": LEGO_RADIUS,
    "test_elevation_deg": 30.0,
    "supersample": 3,
}
"""Options of :func:`make_scene` and their defaults (the built-in scene)."""

_EPS = 1e-4
_AMBIENT = 0.28
_DIFFUSE = 0.72
_LIGHT = np.array([0.45, -0.35, 1.0]) / np.linalg.norm([0.45, -0.35, 1.0])


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------

# Small-matrix helpers written out per column: numpy's (N, 3) @ (3, 3) matmul and reductions over a
# length-3 last axis are several times slower than these elementwise expressions.


def _matmul3(v: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``v @ M`` for ``v`` (N, 3) and ``M`` (3, 3)."""
    return v[:, 0:1] * M[0] + v[:, 1:2] * M[1] + v[:, 2:3] * M[2]


def _max3(a: np.ndarray) -> np.ndarray:
    """Row maximum of an (N, 3) array, ignoring NaN like ``np.fmax``."""
    return np.fmax(np.fmax(a[:, 0], a[:, 1]), a[:, 2])


def _min3(a: np.ndarray) -> np.ndarray:
    """Row minimum of an (N, 3) array, ignoring NaN like ``np.fmin``."""
    return np.fmin(np.fmin(a[:, 0], a[:, 1]), a[:, 2])



@dataclass(frozen=True)
class Material:
    """Albedo texture and specular response of a primitive."""

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float] = (1.0, 1.0, 1.0)
    texture: str = "solid"
    """solid; checker (cubic cells of ``scale`` in the primitive's local frame); checker_xy (square
    cells on world x/y); stripes (smooth
    sinusoidal bands of period ``scale`` along ``axis``)."""
    scale: float = 0.2
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ks: float = 0.3
    """Specular strength."""
    shininess: float = 32.0


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    material: Material

    def bounds(self) -> np.ndarray:
        c = np.asarray(self.center)
        return np.stack([c - self.radius, c + self.radius])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - np.asarray(self.center, dtype=o.dtype)
        b = np.einsum("ij,ij->i", oc, d)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - c
        hit = disc >= 0
        sq = np.sqrt(np.where(hit, disc, 0))
        t0, t1 = -b - sq, -b + sq
        t = np.where(t0 > _EPS, t0, np.where(t1 > _EPS, t1, np.inf))
        return np.where(hit, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        return (p - np.asarray(self.center, dtype=p.dtype)) / np.float32(self.radius)

    def local(self, p: np.ndarray) -> np.ndarray:
        return p - np.asarray(self.center, dtype=p.dtype)


@dataclass(frozen=True)
class Box:
    """An oriented box: ``center``, ``half`` extents, rotated by ``yaw_deg`` about +z."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    material: Material
    yaw_deg: float = 0.0

    @property
    def rot(self) -> np.ndarray:
        """Local-to-world rotation."""
        a = math.radians(self.yaw_deg)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def bounds(self) -> np.ndarray:
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        corners = (signs * np.asarray(self.half)) @ self.rot.T + np.asarray(self.center)
        return np.stack([corners.min(0), corners.max(0)])

    def local(self, p: np.ndarray) -> np.ndarray:
        return _matmul3(p - np.asarray(self.center, dtype=p.dtype), self.rot.astype(p.dtype))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        R = self.rot.astype(o.dtype)
        lo = _matmul3(o - np.asarray(self.center, dtype=o.dtype), R)
        ld = _matmul3(d, R)
        h = np.asarray(self.half, dtype=o.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / ld
            t1 = (-h - lo) * inv
            t2 = (h - lo) * inv
        tn = _max3(np.fmin(t1, t2))
        tf = _min3(np.fmax(t1, t2))
        hit = tf >= np.maximum(tn, _EPS)
        t = np.where(tn > _EPS, tn, tf)
        return np.where(hit, t, np.inf)

    def normal(self, p: np.ndarray) -> np.ndarray:
        lp = self.local(p)
        h = np.asarray(self.half, dtype=p.dtype)
        k = np.argmax(np.abs(lp) / h, axis=1)
        n = np.zeros_like(lp)
        n[np.arange(lp.shape[0]), k] = np.sign(lp[np.arange(lp.shape[0]), k])
        return _matmul3(n, self.rot.T.astype(p.dtype))


def primitives() -> list:
    """The scene's primitives (fixed; the seed only moves cameras)."""
    return [
        # Ground slab, checkered on world x/y.
        Box(
            (-0.1, 0.1, -0.6),
            (0.7, 0.7, 0.05),
            Material((0.88, 0.86, 0.80), (0.22, 0.28, 0.40), "checker_xy", 0.2, ks=0.15, shininess=16),
        ),
        # Striped sphere resting on the slab.
        Sphere(
            (-0.35, 0.3, -0.1),
            0.45,
            Material((0.85, 0.18, 0.12), (0.95, 0.85, 0.35), "stripes", 0.18, (0.3, -0.2, 0.93), 0.4, 32),
        ),
        # Small glossy sphere.
        Sphere((0.3, 0.5, -0.35), 0.2, Material((0.18, 0.32, 0.85), ks=0.7, shininess=80)),
        # Checkered box, turned 25 degrees.
        Box(
            (0.2, -0.25, -0.2),
            (0.2, 0.15, 0.35),
            Material((0.20, 0.60, 0.25), (0.92, 0.92, 0.90), "checker", 0.1, ks=0.25, shininess=24),
            yaw_deg=25.0,
        ),
        # Ringed pillar.
        Box(
            (-0.55, -0.35, 0.0),
            (0.08, 0.08, 0.55),
            Material((0.80, 0.55, 0.20), (0.35, 0.20, 0.10), "stripes", 0.12, (0.0, 0.0, 1.0), 0.3, 32),
            yaw_deg=10.0,
        ),
    ]


def true_bounds() -> np.ndarray:
    """The exact ``(2, 3)`` box around every primitive of the scene."""
    b = np.stack([p.bounds() for p in primitives()])
    return np.stack([b[:, 0].min(0), b[:, 1].max(0)]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Ray tracing
# --------------------------------------------------------------------------------------------


def _albedo(prim, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo ``(N, 3)`` and the texture cell parity ``(N,)`` (checker only, else 0)."""
    m = prim.material
    ca = np.asarray(m.color_a, dtype=np.float32)
    cb = np.asarray(m.color_b, dtype=np.float32)
    n = p.shape[0]
    if m.texture in ("checker", "checker_xy"):
        # Cell edges are offset by a quarter cell so that no face of a box lies on a cell edge
        # (where rounding noise would flip the parity pixel by pixel).
        if m.texture == "checker_xy":  # 2D cells on world x/y (the slab)
            cells = np.floor(p[:, :2] / m.scale + 0.25).astype(np.int64)
        else:  # 3D cells in the local frame
            cells = np.floor(prim.local(p) / m.scale + 0.25).astype(np.int64)
        parity = cells.sum(axis=1) & 1
        return np.where(parity[:, None] == 1, cb, ca), parity
    if m.texture == "stripes":
        axis = np.asarray(m.axis, dtype=np.float32)
        axis = axis / np.linalg.norm(axis)
        w = 0.5 + 0.5 * np.sin(2 * np.pi * (prim.local(p) @ axis) / m.scale)
        return ca + (cb - ca) * w[:, None].astype(np.float32), np.zeros(n, dtype=np.int64)
    return np.broadcast_to(ca, (n, 3)).copy(), np.zeros(n, dtype=np.int64)


def _nearest(prims, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ts = np.stack([p.intersect(o, d) for p in prims], axis=1)
    k = np.argmin(ts, axis=1)
    return ts[np.arange(ts.shape[0]), k], k


def _occluded(prims, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    occ = np.zeros(o.shape[0], dtype=bool)
    for p in prims:
        occ |= np.isfinite(p.intersect(o, d))
    return occ


def _ray_box(o: np.ndarray, d: np.ndarray, box: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (box[0] - o) * inv
        t2 = (box[1] - o) * inv
    tn = _max3(np.fmin(t1, t2))
    tf = _min3(np.fmax(t1, t2))
    return tf >= np.maximum(tn, 0)


def trace(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shade rays ``(N, 3)`` (unit directions). Returns ``(rgb (N, 3) float32, hit (N,) bool,
    shading id (N,) int64)``; the id is -1 for a miss and otherwise encodes the object, the
    checker parity and the shadow bit (a change of id between neighbours marks an edge)."""
    prims = primitives()
    o = np.asarray(o, dtype=np.float32)
    d = np.asarray(d, dtype=np.float32)
    n_rays = o.shape[0]
    rgb = np.zeros((n_rays, 3), dtype=np.float32)
    sid = np.full(n_rays, -1, dtype=np.int64)
    box = true_bounds() + np.array([[-1e-3], [1e-3]], dtype=np.float32)
    cand = np.flatnonzero(_ray_box(o, d, box))
    if cand.size == 0:
        return rgb, sid >= 0, sid
    oc, dc = o[cand], d[cand]
    t, k = _nearest(prims, oc, dc)
    hit = np.isfinite(t)
    cand, oc, dc, t, k = cand[hit], oc[hit], dc[hit], t[hit], k[hit]
    p = oc + dc * t[:, None]
    normal = np.empty_like(p)
    albedo = np.empty_like(p)
    parity = np.zeros(p.shape[0], dtype=np.int64)
    ks = np.empty(p.shape[0], dtype=np.float32)
    shin = np.empty(p.shape[0], dtype=np.float32)
    for i, prim in enumerate(prims):
        sel = k == i
        if not sel.any():
            continue
        normal[sel] = prim.normal(p[sel])
        albedo[sel], parity[sel] = _albedo(prim, p[sel])
        ks[sel] = prim.material.ks
        shin[sel] = prim.material.shininess
    light = _LIGHT.astype(np.float32)
    ndl = normal @ light
    lit = ndl > 0
    shadow_o = p + normal * np.float32(1e-3)
    in_shadow = np.zeros(p.shape[0], dtype=bool)
    if lit.any():
        in_shadow[lit] = _occluded(prims, shadow_o[lit], np.broadcast_to(light, (int(lit.sum()), 3)))
    vis = (lit & ~in_shadow).astype(np.float32)
    half = light[None, :] - dc
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = ks * np.maximum(np.einsum("ij,ij->i", normal, half), 0) ** shin * vis
    col = albedo * (_AMBIENT + _DIFFUSE * np.maximum(ndl, 0) * vis)[:, None] + spec[:, None]
    rgb[cand] = np.clip(col, 0.0, 1.0)
    sid[cand] = (k * 2 + parity) * 2 + (vis > 0)
    return rgb, sid >= 0, sid


def look_at_c2w(position) -> np.ndarray:
    """Blender/OpenGL camera-to-world ``(4, 4)`` float64 of a camera at ``position`` looking at the
    origin with +z up (x right, y up, looking along -z)."""
    pos = np.asarray(position, dtype=np.float64)
    z = pos / np.linalg.norm(pos)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, pos
    return c2w


def camera_positions(split: str, n: int, seed: int, radius: float, test_elevation_deg: float) -> np.ndarray:
    """``(n, 3)`` camera centres: random on the upper hemisphere (train/val) or an orbit (test)."""
    if split == "test":
        az = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        el = np.full(n, math.radians(test_elevation_deg))
    else:
        stream = {"train": 0, "val": 1}[split]
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), stream]))
        # Uniform over the spherical band: z = sin(elevation) uniform.
        z = rng.uniform(math.sin(math.radians(8.0)), math.sin(math.radians(85.0)), n)
        el = np.arcsin(z)
        az = rng.uniform(0.0, 2 * np.pi, n)
    return radius * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)


def _camera_rays(c2w_gl: np.ndarray, cols: np.ndarray, rows: np.ndarray, focal: float, cx: float, cy: float):
    """World rays through sub-pixel positions (``cols``/``rows`` are continuous pixel coordinates)."""
    c2w = (c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0])).astype(np.float32)  # OpenCV, as the loader
    d = np.stack([(cols - cx) / focal, (rows - cy) / focal, np.ones_like(cols)], axis=1).astype(np.float32)
    d = _matmul3(d, c2w[:3, :3].T)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape), d


def render_view(c2w_gl: np.ndarray, width: int, height: int, focal: float, supersample: int = 3) -> np.ndarray:
    """Render one view as straight-alpha uint8 RGBA ``(H, W, 4)``.

    Every pixel gets a ray through its centre; pixels whose 3x3 neighbourhood is not uniform (by
    shading id: object, checker cell, shadow, background) are re-rendered with ``supersample**2``
    stratified sub-pixel rays and averaged (coverage becomes alpha).
    """
    H, W = int(height), int(width)
    cx, cy = W / 2.0, H / 2.0
    jj, ii = np.mgrid[0:H, 0:W]
    cols = ii.reshape(-1).astype(np.float32) + 0.5
    rows = jj.reshape(-1).astype(np.float32) + 0.5
    o, d = _camera_rays(c2w_gl, cols, rows, focal, cx, cy)
    rgb, hit, sid = trace(o, d)
    premult = rgb * hit[:, None]
    alpha = hit.astype(np.float32)

    sid_img = np.pad(sid.reshape(H, W), 1, mode="edge")
    edge = np.zeros((H, W), dtype=bool)
    centre = sid_img[1:-1, 1:-1]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                edge |= sid_img[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] != centre
    s = max(1, int(supersample))
    e = np.flatnonzero(edge.reshape(-1))
    if s > 1 and e.size:
        offs = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
        oy, ox = np.meshgrid(offs, offs, indexing="ij")
        sub_c = (cols[e][:, None] + ox.reshape(1, -1)).reshape(-1)
        sub_r = (rows[e][:, None] + oy.reshape(1, -1)).reshape(-1)
        so, sd = _camera_rays(c2w_gl, sub_c, sub_r, focal, cx, cy)
        srgb, shit, _ = trace(so, sd)
        premult[e] = (srgb * shit[:, None]).reshape(e.size, s * s, 3).mean(axis=1)
        alpha[e] = shit.reshape(e.size, s * s).mean(axis=1)
    straight = np.where(alpha[:, None] > 0, premult / np.maximum(alpha, 1e-8)[:, None], 0.0)
    rgba = np.concatenate([straight, alpha[:, None]], axis=1).reshape(H, W, 4)
    return np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------


def scene_params(**overrides: Any) -> dict[str, Any]:
    """The full option set of :func:`make_scene`: :data:`DEFAULT_SCENE` updated with ``overrides``.

    Unknown names raise :class:`DatasetError`; values are validated.
    """
    unknown = set(overrides) - set(DEFAULT_SCENE)
    if unknown:
        raise DatasetError(f"make_scene: unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULT_SCENE)}")
    p = {**DEFAULT_SCENE, **overrides}
    for name in ("width", "height", "supersample"):
        if isinstance(p[name], bool) or int(p[name]) != p[name] or int(p[name]) < 1:
            raise DatasetError(f"make_scene: {name} must be a positive integer, got {p[name]!r}")
        p[name] = int(p[name])
    for name in ("n_train", "n_val", "n_test"):
        if isinstance(p[name], bool) or int(p[name]) != p[name] or int(p[name]) < 1:
            raise DatasetError(f"make_scene: {name} must be a positive integer, got {p[name]!r}")
        p[name] = int(p[name])
    p["seed"] = int(p["seed"])
    if p["seed"] < 0:
        raise DatasetError(f"make_scene: seed must be >= 0, got {p['seed']}")
    p["camera_angle_x"] = float(p["camera_angle_x"])
    if not 0 < p["camera_angle_x"] < math.pi:
        raise DatasetError(f"make_scene: camera_angle_x must be in (0, pi), got {p['camera_angle_x']}")
    p["radius"] = float(p["radius"])
    if not p["radius"] > 2.0:
        raise DatasetError(f"make_scene: radius must be > 2 (cameras outside the scene), got {p['radius']}")
    p["test_elevation_deg"] = float(p["test_elevation_deg"])
    if not 0 < p["test_elevation_deg"] < 89:
        raise DatasetError(f"make_scene: test_elevation_deg must be in (0, 89), got {p['test_elevation_deg']}")
    return p


def make_scene(out_dir: str | os.PathLike, overwrite: bool = False, **options: Any) -> Path:
    """Render the procedural scene into ``out_dir`` as a Blender-format dataset and return it.

    Options (see :data:`DEFAULT_SCENE`): ``seed=0, width=200, height=200, n_train=100, n_val=100,
    n_test=200, camera_angle_x=0.6911, radius=4.031, test_elevation_deg=30, supersample=3``.
    Writes ``transforms_{train,val,test}.json``, ``{train,val,test}/r_<i>.png`` and
    ``scene.json``. An existing non-empty ``out_dir`` raises :class:`DatasetError` unless
    ``overwrite``. Deterministic: the same options give byte-identical images.
    """
    p = scene_params(**options)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"{out}: already exists and is not empty (use overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_scene(tmp, p)
        info = {
            "generator": "tensorf_common.scene",
            "version": SCENE_VERSION,
            "options": p,
            "true_bounds": true_bounds().tolist(),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / SCENE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        _move_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    old: Optional[Path] = None
    if out.exists() and overwrite:
        old = out.parent / f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(out, old)
    try:
        os.rename(tmp, out)  # atomic; also replaces an empty directory
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
        raise DatasetError(f"{out}: cannot move the generated scene into place ({exc.strerror or exc})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    os.chmod(out, 0o755)


def _write_scene(folder: Path, p: dict[str, Any]) -> None:
    from .images import write_png

    W, H = p["width"], p["height"]
    focal = 0.5 * W / math.tan(0.5 * p["camera_angle_x"])

    def write_view(path: Path, c2w: np.ndarray) -> None:
        write_png(path, render_view(c2w, W, H, focal, p["supersample"]))

    # numpy's array operations and zlib release the GIL: threads render views in parallel (2.1x on
    # 2 cores), each view's bytes the same as rendered alone
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = []
        for split in ("train", "val", "test"):
            (folder / split).mkdir()
            pos = camera_positions(split, p[f"n_{split}"], p["seed"], p["radius"], p["test_elevation_deg"])
            frames = []
            for i, c in enumerate(pos):
                c2w = look_at_c2w(c)
                jobs.append(pool.submit(write_view, folder / split / f"r_{i}.png", c2w))
                frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
            meta = {"camera_angle_x": p["camera_angle_x"], "frames": frames}
            (folder / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            for job in jobs:
                job.result()  # the first failure raises (make_scene removes the half-written folder)
        except BaseException:  # Ctrl-C or a failed view: the views not started yet are not rendered
            pool.shutdown(cancel_futures=True)
            raise
