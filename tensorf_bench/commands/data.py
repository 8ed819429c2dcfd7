"""Data subcommands: ``make-scene`` (render the procedural scene) and ``inspect`` (load a dataset
and print a summary). Only numpy code is used (``tensorf_common``), imported inside ``run()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class MakeScene:
    """Render the procedural default scene as a Blender-format dataset (numpy ray tracer)."""

    out: Path
    """Folder to write (transforms_{train,val,test}.json, PNGs, scene.json); must be new or empty."""
    width: int = 200
    """Image width in pixels."""
    height: int = 200
    """Image height in pixels."""
    n_train: int = 100
    """Training views (random on the upper hemisphere)."""
    n_val: int = 100
    """Validation views (random on the upper hemisphere, another stream)."""
    n_test: int = 200
    """Test views (an orbit at 30 degrees elevation)."""
    seed: int = 0
    """Seed of the train/val camera positions (the geometry is fixed)."""
    overwrite: bool = False
    """Replace an existing non-empty folder."""

    def run(self) -> int:
        import time

        from tensorf_common.scene import make_scene

        t0 = time.perf_counter()
        out = make_scene(
            self.out,
            overwrite=self.overwrite,
            seed=self.seed,
            width=self.width,
            height=self.height,
            n_train=self.n_train,
            n_val=self.n_val,
            n_test=self.n_test,
        )
        n = self.n_train + self.n_val + self.n_test
        print(f"wrote {n} views at {self.width}x{self.height} to {out} in {time.perf_counter() - t0:.1f} s")
        return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _box(b) -> str:
    lo, hi = b
    return "[" + ", ".join(f"{x:+.3f}" for x in lo) + "] .. [" + ", ".join(f"{x:+.3f}" for x in hi) + "]"


@dataclass
class Inspect:
    """Load a Blender-format dataset and print a summary (splits, cameras, bounds, memory, carved box)."""

    data: Optional[str] = None
    """Dataset folder; default: the built-in procedural scene (generated once into the cache)."""
    downsample: int = 1
    """Integer downsample factor (area averaging); must divide the image size."""
    splits: tuple[str, ...] = ("train", "val", "test")
    """Splits to load (each needs its transforms_<split>.json)."""
    carve_resolution: int = 128
    """Voxels per side of the visual-hull grid carved from the train split's alpha (0: skip)."""

    def run(self) -> int:
        import time

        import numpy as np

        from tensorf_common.bounds import carve_visual_hull
        from tensorf_common.data.blender import load_blender
        from tensorf_common.data.scene_cache import resolve_data_dir
        from tensorf_common.errors import DatasetError

        if self.carve_resolution == 1 or self.carve_resolution < 0:
            raise DatasetError(f"--carve-resolution: must be 0 (skip) or >= 2, got {self.carve_resolution}")
        if self.data is None:
            from tensorf_common.data.scene_cache import scene_cache_dir
            from tensorf_common.scene import SCENE_MARKER

            cached = scene_cache_dir()
            if not (cached / SCENE_MARKER).is_file():
                print(f"rendering the built-in procedural scene into {cached} (once; about a minute)", flush=True)
        root = resolve_data_dir(self.data)
        t0 = time.perf_counter()
        ds = load_blender(root, splits=self.splits, downsample=self.downsample)
        load_s = time.perf_counter() - t0
        print(f"dataset     {root}{'' if self.data else '  (built-in procedural scene)'}")
        print(f"downsample  {ds.downsample}   white_bg {ds.white_bg}   loaded in {load_s:.2f} s")
        for name, s in ds.splits.items():
            centres = s.c2w[:, :3, 3]
            dist = np.linalg.norm(centres, axis=1)
            print(
                f"  {name:<6} {s.n_views:4d} views  {s.width}x{s.height}  focal {s.focal:.2f} px  "
                f"fov_x {np.degrees(s.camera_angle_x):.2f} deg  camera distance "
                f"{dist.min():.3f}..{dist.max():.3f}  rays {s.n_rays:,}  {_mb(s.memory_bytes())}"
            )
        print(f"aabb        {_box(ds.aabb)}")
        print(f"near/far    {ds.near_far[0]:g} / {ds.near_far[1]:g}")
        print(f"memory      {_mb(ds.memory_bytes())} held by the loaded splits")
        if self.carve_resolution > 0 and "train" in ds.splits:
            t0 = time.perf_counter()
            occ, tight = carve_visual_hull(ds["train"], ds.aabb, self.carve_resolution)
            carve_s = time.perf_counter() - t0
            print(
                f"carved box  {_box(tight)}  ({occ.mean() * 100:.1f}% of {self.carve_resolution}^3 voxels "
                f"kept, {carve_s:.2f} s)"
            )
        return 0
