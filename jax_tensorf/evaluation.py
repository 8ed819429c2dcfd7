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

from tensorf_common.evaluation import EvalResults, evaluate_images, write_metrics
from tensorf_common.images import to_uint8, write_png

from .model import TensoRF


def render_view(model: TensoRF, split, view: int, chunk: Optional[int] = None) -> dict[str, np.ndarray]:
    """``{"rgb": (H, W, 3), "depth": (H, W), "acc": (H, W)}`` of one view of a split."""
    o, d = split.view_rays(view)
    out = model.render_chunks(o, d, chunk=chunk, want_depth=True)
    H, W = split.height, split.width
    return {k: v.reshape(H, W, *v.shape[1:]) for k, v in out.items()}


def depth_to_u8(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Distance -> 8-bit grey, near white, far black."""
    t = np.clip((np.asarray(depth) - near) / max(far - near, 1e-6), 0.0, 1.0)
    return np.round((1.0 - t) * 255.0).astype(np.uint8)


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
    Returns the results and the render seconds."""
    views = list(range(split.n_views)) if views is None else [int(v) for v in views]
    preds, gts, names = [], [], []
    render_s = 0.0
    out_dir = Path(out_dir) if out_dir is not None else None
    for i, v in enumerate(views):
        t0 = time.perf_counter()
        out = render_view(model, split, v)
        render_s += time.perf_counter() - t0
        name = split.frame_names[v]
        preds.append(out["rgb"])
        gts.append(split.rgb(v))
        names.append(name)
        if out_dir is not None and write_images:
            (out_dir / "depth").mkdir(parents=True, exist_ok=True)
            write_png(out_dir / f"{name}.png", to_uint8(out["rgb"]))
            d8 = depth_to_u8(out["depth"], *model.near_far)
            write_png(out_dir / "depth" / f"{name}.png", np.repeat(d8[..., None], 3, axis=-1))
        if progress is not None:
            progress(i + 1, len(views))
    info = {
        "backend": "jax",
        "split": split.name,
        "views": views,
        "render_seconds": round(render_s, 3),
        "samples_per_ray": int(model.render_cfg.n_samples_eval or model.n_samples),
    }
    if settings:
        info.update(settings)
    results = evaluate_images(preds, gts, names, lpips_functions(lpips), background="white" if split.white_bg else "black", settings=info)
    if out_dir is not None:
        write_metrics(out_dir, results)
    return results, render_s
