"""Evaluation of rendered images against ground truth: per-image and mean metrics, JSON and CSV files.

Framework-neutral: PSNR and SSIM come from :mod:`tensorf_common.metrics` (numpy); LPIPS functions
are injected by the caller (``jax_tensorf.lpips.available_lpips()`` or
``torch_reference.lpips.available_lpips()``), so this module imports neither jax nor torch.

What is computed (the official TensoRF ``evaluation``):

- renders are clamped to [0, 1]; with ``quantize=True`` they are then rounded to 8 bits
  (``round(255 x) / 255``, what metrics recomputed from saved PNGs see, as the official
  ``extra/compute_metrics.py``); the ground truth is used as given (clamped to [0, 1]);
- per image: PSNR, SSIM, and LPIPS for each net given (``lpips_alex``, ``lpips_vgg``);
- the reported figures are the means over images of the per-image values.

Missing values: a net whose LPIPS function is a string (the reason it is unavailable) or that was
not given is reported as ``"n/a"``, its reason recorded in the settings. ``inf`` (PSNR of an
identical pair) is kept as ``float('inf')`` in memory, makes the mean ``inf``, and is written as
the string ``"inf"`` to JSON and CSV (see :func:`tensorf_common.metrics.json_number`);
:func:`read_metrics` turns it back into a float.

Files (:func:`write_metrics`), each written to a temporary file in the same folder and renamed
into place:

- ``metrics.json``: ``{"mean": {...}, "per_image": [{"name": ..., "psnr": ...}, ...],
  "n_images": N, "settings": {...}}``;
- ``metrics.csv``: header ``name,psnr,ssim,lpips_alex,lpips_vgg``, one row per image, then a
  last row named ``mean``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import write_text
from .errors import TensorfBenchError
from .lpips_weights import NETS, canonical_net
from .metrics import NOT_AVAILABLE, json_number, mean_metric, psnr, ssim

LpipsFn = Callable[[np.ndarray, np.ndarray], float]
"""An LPIPS distance of two HxWx3 float images in [0, 1] (``jax_tensorf.lpips.LPIPS`` and the
torch twin are such callables; a ``source`` attribute, when present, is recorded)."""

SSIM_SETTINGS: dict[str, Any] = {
    "formula": "mip-NeRF compute_ssim (official TensoRF rgb_ssim)",
    "filter_size": 11,
    "filter_sigma": 1.5,
    "k1": 0.01,
    "k2": 0.03,
    "max_val": 1.0,
    "region": "valid",
}

METRIC_KEYS: tuple[str, ...] = ("psnr", "ssim") + tuple(f"lpips_{n}" for n in NETS)
"""Metric names in file order."""

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"


class ImageInputError(TensorfBenchError, ValueError):
    """An image cannot be read or compared (missing, unreadable, wrong shape, mismatched sizes).
    The message names the file or the image."""


@dataclass
class EvalResults:
    """Per-image and mean metrics of one evaluation, with the settings that produced them.

    ``per_image``: one dict per image, ``{"name": str, "psnr": float, "ssim": float,
    "lpips_alex": float | None, "lpips_vgg": float | None}`` (None = n/a).
    ``mean``: the means over images, same metric keys (None = n/a).
    ``settings``: how they were computed (JSON-ready).
    """

    per_image: list[dict[str, Any]]
    mean: dict[str, Optional[float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (non-finite and missing values converted)."""
        return {
            "mean": {k: json_number(v) for k, v in self.mean.items()},
            "per_image": [
                {k: (v if k == "name" else json_number(v)) for k, v in row.items()} for row in self.per_image
            ],
            "n_images": len(self.per_image),
            "settings": self.settings,
        }


def _as_float_image(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    else:
        a = a.astype(np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ImageInputError(f"{what}: expected an HxWx3 RGB image, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ImageInputError(f"{what}: holds non-finite values")
    return a


def quantize_u8(x: np.ndarray) -> np.ndarray:
    """Round float values in [0, 1] to the nearest of the 256 8-bit levels (still float)."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0) / 255.0


def evaluate_images(
    preds: Sequence[Any],
    gts: Sequence[Any],
    names: Optional[Sequence[str]] = None,
    lpips_fns: Optional[Mapping[str, Union[LpipsFn, str]]] = None,
    *,
    quantize: bool = False,
    background: str = "white",
    settings: Optional[Mapping[str, Any]] = None,
) -> EvalResults:
    """Per-image and mean PSNR, SSIM and LPIPS of renders ``preds`` against ``gts``.

    ``preds``, ``gts``: sequences (or stacked arrays) of HxWx3 images, float in [0, 1] or uint8.
    ``names``: one per image (default ``"000"``, ``"001"``, ...).
    ``lpips_fns``: ``{"alex": fn, "vgg": fn}``; a string value is the reason that net is
    unavailable (reported "n/a"); None computes no LPIPS (both nets "n/a", "not requested").
    ``quantize``: evaluate on 8-bit-rounded renders. ``background``: how the images were
    composited (recorded only). ``settings``: extra entries recorded as given (e.g. backend,
    checkpoint, split).

    Mismatched or malformed images raise :class:`ImageInputError` naming the image.
    """
    if len(preds) != len(gts):
        raise ImageInputError(f"evaluate_images: {len(preds)} renders but {len(gts)} ground-truth images")
    n = len(preds)
    names = [f"{i:03d}" for i in range(n)] if names is None else [str(s) for s in names]
    if len(names) != n:
        raise ImageInputError(f"evaluate_images: {len(names)} names for {n} images")

    fns: dict[str, LpipsFn] = {}
    lpips_info: dict[str, dict[str, str]] = {}
    given = {} if lpips_fns is None else {canonical_net(k): v for k, v in lpips_fns.items()}
    for net in NETS:
        fn = given.get(net)
        if fn is None:
            lpips_info[net] = {"unavailable": "not requested"}
        elif isinstance(fn, str):
            lpips_info[net] = {"unavailable": fn}
        else:
            fns[net] = fn
            lpips_info[net] = {"source": str(getattr(fn, "source", "<callable>"))}

    per_image: list[dict[str, Any]] = []
    for name, pred, gt in zip(names, preds, gts):
        p = np.clip(_as_float_image(pred, f"render {name}"), 0.0, 1.0)
        g = np.clip(_as_float_image(gt, f"ground truth {name}"), 0.0, 1.0)
        if p.shape != g.shape:
            raise ImageInputError(f"image {name}: render is {p.shape} but ground truth is {g.shape}")
        if min(p.shape[:2]) < SSIM_SETTINGS["filter_size"]:
            raise ImageInputError(
                f"image {name}: {p.shape[0]}x{p.shape[1]} is smaller than the 11x11 SSIM window"
            )
        if quantize:
            p = quantize_u8(p)
        row: dict[str, Any] = {"name": name, "psnr": psnr(p, g), "ssim": ssim(p, g)}
        p32, g32 = p.astype(np.float32), g.astype(np.float32)
        for net in NETS:
            # Official order: lpips(gt, render).
            row[f"lpips_{net}"] = float(fns[net](g32, p32)) if net in fns else None
        per_image.append(row)

    mean = {k: mean_metric(r[k] for r in per_image) for k in METRIC_KEYS}
    recorded: dict[str, Any] = {
        "psnr": "per image on float images clamped to [0, 1], -10 log10(MSE); mean over images",
        "ssim": dict(SSIM_SETTINGS),
        "lpips": {"version": "0.1", "inputs": "[0, 1] mapped to [-1, 1] (normalize=True)", "nets": lpips_info},
        "background": background,
        "quantize": bool(quantize),
        "quantization": "renders rounded to 8 bits before the metrics" if quantize else "none (float renders)",
        "non_finite": 'inf is written as the string "inf"; missing values as "n/a"',
    }
    if settings:
        recorded.update(dict(settings))
    return EvalResults(per_image=per_image, mean=mean, settings=recorded)


def _csv_cell(v: Any) -> str:
    j = json_number(v)
    if j is None:
        return "nan"
    return j if isinstance(j, str) else repr(float(j))


def write_metrics(out_dir: Union[str, os.PathLike], results: EvalResults) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir`` (created if missing), each
    atomically. Returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / METRICS_JSON, out / METRICS_CSV
    write_text(json_path, json.dumps(results.to_json_dict(), indent=2, allow_nan=False) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("name",) + METRIC_KEYS)
    for row in results.per_image:
        writer.writerow([row["name"]] + [_csv_cell(row.get(k)) for k in METRIC_KEYS])
    writer.writerow(["mean"] + [_csv_cell(results.mean.get(k)) for k in METRIC_KEYS])
    write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def _from_json_number(v: Any) -> Any:
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    if v == NOT_AVAILABLE:
        return None
    return v


def read_metrics(path: Union[str, os.PathLike]) -> EvalResults:
    """Read a ``metrics.json`` (or the folder holding it) back: ``"inf"`` becomes ``float('inf')``
    and ``"n/a"`` becomes None. An unreadable or malformed file raises ``TensorfBenchError``
    naming it."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_JSON
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        per_image = [
            {k: (v if k == "name" else _from_json_number(v)) for k, v in row.items()} for row in d["per_image"]
        ]
        mean = {k: _from_json_number(v) for k, v in d["mean"].items()}
        return EvalResults(per_image=per_image, mean=mean, settings=dict(d.get("settings", {})))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TensorfBenchError(f"{p}: cannot read metrics ({type(exc).__name__}: {exc})") from None


def load_rgb(path: Union[str, os.PathLike], background: str = "white") -> np.ndarray:
    """An image file as a float32 HxWx3 array in [0, 1].

    8-bit RGB, RGBA, greyscale and palette images are read (16-bit greyscale too, divided by
    65535). Alpha is composited onto ``background`` ("white" or "black") in float, as the Blender
    loader does: ``rgb * a + bg * (1 - a)``. Missing or unreadable files raise
    :class:`ImageInputError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    if background not in ("white", "black"):
        raise ImageInputError(f"background: expected 'white' or 'black', got {background!r}")
    p = Path(path)
    if not p.is_file():
        raise ImageInputError(f"{p}: no such image file")
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(im, dtype=np.float64) / 65535.0
                rgba = np.concatenate([np.repeat(grey[..., None], 3, axis=-1), np.ones_like(grey)[..., None]], -1)
            elif mode != "F":
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageInputError(f"{p}: cannot read image ({type(exc).__name__}: {exc})") from None
    if mode == "F":
        raise ImageInputError(f"{p}: floating-point images are not supported")
    rgba = np.clip(rgba, 0.0, 1.0)
    bg = 1.0 if background == "white" else 0.0
    rgb, a = rgba[..., :3], rgba[..., 3:]
    return (rgb * a + bg * (1.0 - a)).astype(np.float32)


def write_view(out_dir: Path, name: str, rgb: np.ndarray, depth: np.ndarray, near: float, far: float) -> None:
    """A rendered view as ``out_dir/name.png`` and its depth (near..far) as ``out_dir/depth/name.png``."""
    from .images import to_uint8, write_depth_png, write_png

    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    write_png(out_dir / f"{name}.png", to_uint8(rgb))
    write_depth_png(out_dir / "depth" / f"{name}.png", depth, near, far)
