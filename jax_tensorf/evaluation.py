"""Render whole views of a split and evaluate them (PSNR / SSIM / LPIPS), write PNGs and metrics.

Renders are float images; the metrics use them unquantised (official). PNGs are written with the
ground truth's frame names (``r_0.png``, ...) so that renders and ground truth pair by name. Depth
images are the expected distance mapped to 8 bits over the near/far range.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tensorf_common.evaluation import EvalResults, evaluate_images, write_metrics, write_view

from .eval_render import RenderStats, camera_rays, render_chunked
from .model import TensoRF


def render_view(model: TensoRF, split, view: int, chunk: Optional[int] = None) -> dict[str, np.ndarray]:
    """``{"rgb": (H, W, 3), "depth": (H, W), "acc": (H, W)}`` of one view of a split."""
    return render_views(model, split, [view], chunk=chunk)[0]


MAX_GROUP_RAYS = 1 << 21
"""Views are rendered together up to this many rays: 16 chunks of the largest chunk size
(:data:`jax_tensorf.eval_render.CHUNK_LIMITS`), so that padding the last chunk costs little, while the
group's rays, indices and outputs (under 100 bytes per ray) stay near 200 MB."""


def render_views(
    model: TensoRF, split, views: Sequence[int], chunk: Optional[int] = None, stats: Optional[RenderStats] = None
) -> list[dict[str, np.ndarray]]:
    """Render views of a split in one :func:`jax_tensorf.eval_render.render_chunked` call: their rays
    are made on the device from the split's pixel directions and cameras, and the chunks span view
    boundaries. Returns one ``render_view`` dict per view."""
    views = [split._check_view(v) for v in views]
    H, W = split.height, split.width
    source = camera_rays(split.directions(), split.c2w[views])
    out = render_chunked(model, source, chunk=chunk, want_depth=True, stats=stats)
    return [{k: v[i * H * W : (i + 1) * H * W].reshape(H, W, *v.shape[1:]) for k, v in out.items()}
            for i in range(len(views))]


def lpips_functions(enabled: bool = True) -> dict:
    """The JAX LPIPS nets, or reasons why not (``evaluate_images`` takes either)."""
    if not enabled:
        return {"alex": "disabled", "vgg": "disabled"}
    from .lpips import available_lpips

    return available_lpips()


def evaluate_split(
    model: TensoRF,
    split,
    out_dir: Optional[Path] = None,
    views: Optional[Sequence[int]] = None,
    *,
    lpips: bool = True,
    write_images: bool = True,
    settings: Optional[dict] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[EvalResults, float]:
    """Render ``views`` (default: all) of ``split``, compute the metrics, and write
    ``out_dir/<frame>.png``, ``out_dir/depth/<frame>.png``, ``metrics.json`` and ``metrics.csv``.
    Returns the results and the render seconds. Views are rendered in groups of up to
    :data:`MAX_GROUP_RAYS` rays (``progress`` is called per view as its group is done); the render
    seconds exclude compilation, which the settings record apart (``eval_compile_seconds``)."""
    views = list(range(split.n_views)) if views is None else [int(v) for v in views]
    preds, gts, names = [], [], []
    stats = RenderStats()
    wall = 0.0
    out_dir = Path(out_dir) if out_dir is not None else None
    per_group = max(1, MAX_GROUP_RAYS // split.n_pixels)
    done = 0
    for g in range(0, len(views), per_group):
        group = views[g : g + per_group]
        t0 = time.perf_counter()
        outs = render_views(model, split, group, stats=stats)
        wall += time.perf_counter() - t0
        for v, out in zip(group, outs):
            name = split.frame_names[v]
            preds.append(out["rgb"])
            gts.append(split.rgb(v))
            names.append(name)
            if out_dir is not None and write_images:
                write_view(out_dir, name, out["rgb"], out["depth"], *model.near_far)
            done += 1
            if progress is not None:
                progress(done, len(views))
    render_s = wall - stats.compile_seconds
    info = {
        "backend": "jax",
        "split": split.name,
        "views": views,
        "render_seconds": round(render_s, 3),
        **stats.as_settings(),
        "samples_per_ray": int(model.render_cfg.n_samples_eval or model.n_samples),
    }
    if settings:
        info.update(settings)
    results = evaluate_images(preds, gts, names, lpips_functions(lpips), background="white" if split.white_bg else "black", settings=info)
    if out_dir is not None:
        write_metrics(out_dir, results)
    return results, render_s
