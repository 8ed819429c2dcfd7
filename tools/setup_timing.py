"""Time the training set-up's carving, box ray filter and alpha-mask ray filter: the host versions
(numpy carving; host rays through ``ray_box_hit``; host rays through ``alpha_mask.rays_hit_mask``
in 8192-ray chunks, as the trainer did) against the device ones (``jax_tensorf.carving``,
``jax_tensorf.ray_filter``), on the default device, and check that they keep the same voxels and
rays.

    PYTHONPATH=. python tools/setup_timing.py --data DIR [--skip-old-mask] [--json OUT]

The state is the cpu preset's at the start of a run: the hull carved at 128^3 over the dataset
box, the tight box, the box filter's pool, and (for the mask filter) the hull as the mask with the
step of a 160^3 grid in the tight box. A device function's first call includes its compilation;
``compile_s`` is the first call's time less the second's. Wall and process CPU seconds are both
printed (the CPU time counts every thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_tensorf import alpha_mask as am
from jax_tensorf import carving, ray_filter
from tensorf_common.bounds import carve_visual_hull, ray_box_hit
from tensorf_common.data import load_blender
from tensorf_common.geometry import n_to_reso, step_size_and_n_samples


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)


def host_box_filter(split, aabb, chunk: int = 1 << 18) -> np.ndarray:
    keep = np.zeros(split.n_rays, dtype=bool)
    for start in range(0, split.n_rays, chunk):
        idx = np.arange(start, min(start + chunk, split.n_rays))
        keep[idx] = ray_box_hit(*split.rays(idx), aabb)
    return np.flatnonzero(keep)


def host_mask_filter(split, pool, aabb, step, mask, mask_aabb, near, far, chunk: int = 8192) -> np.ndarray:
    fn = jax.jit(lambda o, d, a, s, m, ma: am.rays_hit_mask(o, d, a, near, far, s, m, ma, 256))
    state = (jnp.asarray(aabb), jnp.float32(step), jnp.asarray(mask), jnp.asarray(mask_aabb))
    keep = np.zeros(pool.size, dtype=bool)
    for start in range(0, pool.size, 1 << 18):
        o, d = split.rays(pool[start : start + (1 << 18)])
        for c in range(0, o.shape[0], chunk):
            oo, dd = o[c : c + chunk], d[c : c + chunk]
            m = oo.shape[0]
            if m < chunk:
                oo = np.concatenate([oo, np.repeat(oo[-1:], chunk - m, 0)])
                dd = np.concatenate([dd, np.repeat(dd[-1:], chunk - m, 0)])
            keep[start + c : start + c + m] = np.asarray(fn(oo, dd, *state))[:m]
    return pool[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="Blender-format scene folder (its train split is used)")
    ap.add_argument("--skip-old-mask", action="store_true", help="do not time the host mask filter (minutes on a CPU)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    ds = load_blender(args.data, splits=("train",))
    split, box = ds["train"], np.asarray(ds.aabb, np.float32)
    near, far = (float(v) for v in ds.near_far)
    rows: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_name()} x{os.cpu_count()}, default device {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "rays": split.n_rays,
    }

    (occ, tight), *old = timed(lambda: carve_visual_hull(split, box, 128))
    new1 = timed(lambda: carving.carve_visual_hull(split, box, 128))
    new2 = timed(lambda: carving.carve_visual_hull(split, box, 128))
    same = bool(np.array_equal(new2[0][0], occ) and np.array_equal(new2[0][1], tight))
    rows["carve"] = dict(old=old, new_first=new1[1:], new=new2[1:], compile_s=round(new1[1] - new2[1], 2), equal=same)

    pool, *old = timed(lambda: host_box_filter(split, tight))
    new1 = timed(lambda: ray_filter.filter_rays_by_box(split, tight))
    new2 = timed(lambda: ray_filter.filter_rays_by_box(split, tight))
    rows["box_filter"] = dict(old=old, new_first=new1[1:], new=new2[1:], compile_s=round(new1[1] - new2[1], 2),
                              equal=bool(np.array_equal(new2[0], pool)), kept=int(pool.size))

    reso = n_to_reso(160**3, tight)
    step, _ = step_size_and_n_samples(tight, reso, 0.5)
    mask = np.ascontiguousarray(occ.transpose(2, 1, 0))
    state = (tight, np.float32(step), mask, box, near, far)
    new1 = timed(lambda: ray_filter.filter_rays_by_mask(split, pool, *state))
    new2 = timed(lambda: ray_filter.filter_rays_by_mask(split, pool, *state))
    mask_row = dict(new_first=new1[1:], new=new2[1:], compile_s=round(new1[1] - new2[1], 2), kept=int(new2[0].size))
    if not args.skip_old_mask:
        want, *old = timed(lambda: host_mask_filter(split, pool, *state))
        mask_row.update(old=old, equal=bool(np.array_equal(new2[0], want)))
    rows["mask_filter"] = mask_row

    print(json.dumps(rows, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
