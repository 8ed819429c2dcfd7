"""Render whole views of a split with a torch model and evaluate them (PSNR / SSIM / LPIPS).

The twin of :mod:`jax_tensorf.evaluation`: the same metrics (:func:`tensorf_common.evaluation.evaluate_images`
on unquantised float renders), the same files (``<frame>.png``, ``depth/<frame>.png``, ``metrics.json``,
``metrics.csv``) and the same frame names, with LPIPS computed by :mod:`torch_reference.lpips`. Views
are rendered with the official chunked evaluation render (:func:`torch_reference.model.render_batched`,
no jitter, the model's own sample count) and, by default, the official ``weight > 1e-4`` appearance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from tensorf_common.evaluation import EvalResults, evaluate_images, write_metrics, write_view

from .model import TensorBase, render_batched


OFFICIAL_EVAL_CHUNK = 4096
"""Rays per chunk of the official evaluation render (``renderer.py``: ``chunk=4096``); used when a
config leaves ``render.chunk`` to the device (None), which only the JAX renderer sizes."""


@torch.no_grad()
def render_view(model: TensorBase, split, view: int, chunk: Optional[int] = None,
                appearance: Optional[str] = None) -> dict[str, np.ndarray]:
    """``{"rgb": (H, W, 3), "depth": (H, W)}`` of one view of a split (float, rgb in [0, 1]).

    ``appearance`` overrides the model's appearance strategy for this render (default: the official
    ``threshold``, whatever the model was trained with, like the JAX evaluation renderer).
    """
    o, d = split.view_rays(view)
    rays = torch.cat([torch.as_tensor(np.asarray(o, np.float32)), torch.as_tensor(np.asarray(d, np.float32))], -1)
    old = model.appearance
    model.appearance = appearance or "threshold"
    try:
        rgb, depth = render_batched(model, rays.to(model.device), chunk=chunk or OFFICIAL_EVAL_CHUNK, white_bg=bool(split.white_bg))
    finally:
        model.appearance = old
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    H, W = split.height, split.width
    return {"rgb": rgb.cpu().numpy().reshape(H, W, 3), "depth": depth.cpu().numpy().reshape(H, W)}


def lpips_functions(enabled: bool = True, device=None) -> dict:
    """The torch LPIPS nets, or the reasons why not (``evaluate_images`` takes either)."""
    if not enabled:
        return {"alex": "disabled", "vgg": "disabled"}
    from .lpips import available_lpips

    return available_lpips(device=device or "cpu")


def evaluate_split(
    model: TensorBase,
    split,
    out_dir: Optional[Path] = None,
    views: Optional[Sequence[int]] = None,
    *,
    lpips: bool = True,
    write_images: bool = True,
    settings: Optional[dict] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    chunk: Optional[int] = None,
    appearance: Optional[str] = None,
) -> tuple[EvalResults, float]:
    """Render ``views`` (default: all) of ``split``, compute the metrics, and write
    ``out_dir/<frame>.png``, ``out_dir/depth/<frame>.png``, ``metrics.json`` and ``metrics.csv``.
    Returns the results and the render seconds (metrics excluded)."""
    views = list(range(split.n_views)) if views is None else [int(v) for v in views]
    preds, gts, names = [], [], []
    render_s = 0.0
    out_dir = Path(out_dir) if out_dir is not None else None
    near, far = float(model.near_far[0]), float(model.near_far[1])
    for i, v in enumerate(views):
        t0 = time.perf_counter()
        out = render_view(model, split, v, chunk=chunk, appearance=appearance)
        render_s += time.perf_counter() - t0
        name = split.frame_names[v]
        preds.append(out["rgb"])
        gts.append(split.rgb(v))
        names.append(name)
        if out_dir is not None and write_images:
            write_view(out_dir, name, out["rgb"], out["depth"], near, far)
        if progress is not None:
            progress(i + 1, len(views))
    info = {
        "backend": "torch",
        "split": split.name,
        "views": views,
        "render_seconds": round(render_s, 3),
        "samples_per_ray": int(model.nSamples),
        "appearance": appearance or "threshold",
    }
    if settings:
        info.update(settings)
    results = evaluate_images(
        preds, gts, names, lpips_functions(lpips, model.device), background="white" if split.white_bg else "black", settings=info
    )
    if out_dir is not None:
        write_metrics(out_dir, results)
    return results, render_s
