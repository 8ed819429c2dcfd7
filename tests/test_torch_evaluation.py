"""torch_reference.evaluation: whole-view renders, metrics and files, as the JAX twin writes them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from tensorf_common.config import SMALL_FIELD, RenderConfig
from tensorf_common.evaluation import read_metrics
from tensorf_common.images import read_rgba
from tensorf_common.metrics import psnr
from torch_reference.evaluation import evaluate_split, render_view
from torch_reference.model import TensorBase

FIELD = dataclasses.replace(SMALL_FIELD, density_shift=-2.0)


def _model(ds, appearance="topk"):
    torch.manual_seed(0)
    return TensorBase.from_config(FIELD, RenderConfig(appearance=appearance), ds.aabb, [12, 12, 12], ds.near_far)


def test_render_view_shapes_and_official_appearance(small_dataset):
    split = small_dataset["test"]
    model = _model(small_dataset, appearance="topk")
    out = render_view(model, split, 0, chunk=300)
    assert out["rgb"].shape == (split.height, split.width, 3) and out["depth"].shape == (split.height, split.width)
    assert np.all(np.isfinite(out["rgb"])) and out["rgb"].min() >= 0 and out["rgb"].max() <= 1
    assert model.appearance == "topk"  # restored after the threshold render
    # chunking does not change the render, nor does leaving the chunk to the default (a config's
    # render.chunk=None, as the cpu preset has)
    for chunk in (1024, RenderConfig().chunk):
        again = render_view(model, split, 0, chunk=chunk)
        np.testing.assert_allclose(out["rgb"], again["rgb"], atol=1e-6)


def test_evaluate_split_writes_named_renders_and_metrics(small_dataset, tmp_path):
    split = small_dataset["test"]
    model = _model(small_dataset)
    calls = []
    results, seconds = evaluate_split(model, split, tmp_path, views=[0, 2], lpips=False,
                                      progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 2), (2, 2)] and seconds > 0
    names = [split.frame_names[0], split.frame_names[2]]
    assert [r["name"] for r in results.per_image] == names
    for n in names:
        assert (tmp_path / f"{n}.png").is_file() and (tmp_path / "depth" / f"{n}.png").is_file()
    # the metric is the one of the saved render (up to 8-bit rounding) against the ground truth
    saved = read_rgba(tmp_path / f"{names[0]}.png")[..., :3].astype(np.float64) / 255.0
    assert abs(psnr(saved, split.rgb(0)) - results.per_image[0]["psnr"]) < 0.1
    back = read_metrics(tmp_path)
    assert back.mean["lpips_alex"] is None and back.settings["backend"] == "torch"
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["views"] == [0, 2]

