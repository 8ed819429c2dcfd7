"""tensorf_common.evaluation: per-image and mean metrics, recorded settings, metrics.json / metrics.csv,
and the image reader. LPIPS functions are numpy stand-ins here (the real ones are tested in
tests/test_lpips_*.py and through the CLI in tests/test_cli_metrics.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tensorf_common.errors import TensorfBenchError
from tensorf_common.evaluation import (
    METRIC_KEYS,
    EvalResults,
    ImageInputError,
    evaluate_images,
    load_rgb,
    quantize_u8,
    read_metrics,
    write_metrics,
)
from tensorf_common.metrics import psnr, ssim

REPO_ROOT = Path(__file__).resolve().parents[1]


class FakeLpips:
    """Mean of (first - 0.5 * second): asymmetric, so the argument order shows."""

    source = "fake://weights"

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, gt: np.ndarray, pred: np.ndarray) -> float:
        self.calls.append((gt, pred))
        return float(np.mean(gt - 0.5 * pred))


def _images(n=3, shape=(16, 20, 3), seed=0):
    rng = np.random.default_rng(seed)
    gts = [rng.random(shape) for _ in range(n)]
    preds = [g + 0.1 * rng.standard_normal(shape) for g in gts]  # a little outside [0, 1] too
    return preds, gts


def test_per_image_and_mean_metrics():
    preds, gts = _images()
    alex = FakeLpips()
    res = evaluate_images(preds, gts, ["a", "b", "c"], {"alex": alex, "vgg": "no vgg weights here"})
    assert [r["name"] for r in res.per_image] == ["a", "b", "c"]
    for r, p, g in zip(res.per_image, preds, gts):
        pc = np.clip(p, 0, 1)
        assert r["psnr"] == pytest.approx(psnr(pc, g), abs=1e-12)
        assert r["ssim"] == pytest.approx(ssim(pc, g), abs=1e-12)
        assert r["lpips_alex"] == pytest.approx(np.mean(g - 0.5 * pc), abs=1e-6)  # called as (gt, render)
        assert r["lpips_vgg"] is None
    for k in ("psnr", "ssim", "lpips_alex"):
        assert res.mean[k] == pytest.approx(np.mean([r[k] for r in res.per_image]))
    assert res.mean["lpips_vgg"] is None
    assert all(c[0].dtype == np.float32 and c[1].max() <= 1.0 for c in alex.calls)
    nets = res.settings["lpips"]["nets"]
    assert nets["alex"] == {"source": "fake://weights"}
    assert nets["vgg"] == {"unavailable": "no vgg weights here"}
    assert res.settings["quantize"] is False and res.settings["background"] == "white"
    assert res.settings["ssim"]["filter_size"] == 11


def test_without_lpips_and_extra_settings():
    preds, gts = _images(n=1)
    res = evaluate_images(preds, gts, settings={"backend": "jax", "split": "test"}, background="black")
    assert res.per_image[0]["name"] == "000"
    assert res.mean["lpips_alex"] is None and res.mean["lpips_vgg"] is None
    assert res.settings["lpips"]["nets"]["alex"] == {"unavailable": "not requested"}
    assert res.settings["backend"] == "jax" and res.settings["background"] == "black"


def test_quantize_rounds_renders_only():
    preds, gts = _images(n=2)
    alex = FakeLpips()
    res = evaluate_images(preds, gts, lpips_fns={"alex": alex}, quantize=True)
    for r, p, g in zip(res.per_image, preds, gts):
        q = quantize_u8(p)
        assert r["psnr"] == pytest.approx(psnr(q, g), abs=1e-12)
        assert r["psnr"] != pytest.approx(psnr(np.clip(p, 0, 1), g), abs=1e-6)
    gt_seen, pred_seen = alex.calls[0]
    np.testing.assert_allclose(pred_seen * 255, np.rint(pred_seen * 255), atol=1e-4)
    np.testing.assert_allclose(gt_seen, gts[0].astype(np.float32))
    assert res.settings["quantize"] is True


def test_uint8_inputs_are_scaled():
    preds, gts = _images(n=1)
    p8 = (np.clip(preds[0], 0, 1) * 255).round().astype(np.uint8)
    g8 = (gts[0] * 255).round().astype(np.uint8)
    res = evaluate_images([p8], [g8])
    assert res.per_image[0]["psnr"] == pytest.approx(psnr(p8 / 255.0, g8 / 255.0))


def test_identical_images_inf_one_zero(tmp_path):
    _, gts = _images(n=2)
    res = evaluate_images(gts, gts, ["x", "y"], {"alex": lambda a, b: float(np.abs(a - b).sum())})
    assert res.per_image[0]["psnr"] == math.inf and res.mean["psnr"] == math.inf
    assert res.mean["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert res.mean["lpips_alex"] == 0.0
    json_path, csv_path = write_metrics(tmp_path, res)
    d = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert d["mean"]["psnr"] == "inf" and d["per_image"][1]["psnr"] == "inf"
    assert d["mean"]["lpips_vgg"] == "n/a"
    df = pd.read_csv(csv_path)
    assert float(df.loc[0, "psnr"]) == math.inf
    back = read_metrics(tmp_path)
    assert back.mean["psnr"] == math.inf and back.mean["lpips_vgg"] is None


def test_write_metrics_files(tmp_path):
    preds, gts = _images()
    res = evaluate_images(preds, gts, ["r_0", "r_1", "r_2"], {"alex": FakeLpips()}, settings={"backend": "torch"})
    out = tmp_path / "eval" / "step_100"
    json_path, csv_path = write_metrics(out, res)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]  # no temp files left
    d = json.loads(json_path.read_text())
    assert d["n_images"] == 3 and d["settings"]["backend"] == "torch"
    assert d["settings"]["lpips"]["nets"]["vgg"]["unavailable"] == "not requested"
    assert d["mean"]["psnr"] == pytest.approx(res.mean["psnr"])
    df = pd.read_csv(csv_path, keep_default_na=False)
    assert list(df.columns) == ["name", *METRIC_KEYS]
    assert list(df["name"]) == ["r_0", "r_1", "r_2", "mean"]
    assert float(df.loc[3, "ssim"]) == pytest.approx(res.mean["ssim"], abs=1e-15)
    assert float(df.loc[1, "psnr"]) == pytest.approx(res.per_image[1]["psnr"], abs=1e-12)
    assert set(df["lpips_vgg"]) == {"n/a"}
    back = read_metrics(json_path)
    assert isinstance(back, EvalResults) and back.per_image[2]["name"] == "r_2"
    assert back.per_image[2]["ssim"] == pytest.approx(res.per_image[2]["ssim"], abs=1e-15)


def test_write_metrics_replaces_previous_files(tmp_path):
    preds, gts = _images(n=1)
    write_metrics(tmp_path, evaluate_images(preds, gts, ["first"]))
    write_metrics(tmp_path, evaluate_images(preds, gts, ["second"]))
    assert read_metrics(tmp_path).per_image[0]["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json"]


def test_bad_inputs_name_the_image():
    preds, gts = _images(n=2)
    with pytest.raises(ImageInputError, match="image b: render is"):
        evaluate_images([preds[0], preds[1][:, :-1]], gts, ["a", "b"])
    with pytest.raises(ImageInputError, match="2 renders but 1"):
        evaluate_images(preds, gts[:1])
    with pytest.raises(ImageInputError, match="render 000: expected an HxWx3"):
        evaluate_images([preds[0][..., 0]], [gts[0]])
    with pytest.raises(ImageInputError, match="smaller than the 11x11"):
        evaluate_images([np.zeros((8, 30, 3))], [np.zeros((8, 30, 3))])
    with pytest.raises(ImageInputError, match="non-finite"):
        evaluate_images([np.full((12, 12, 3), np.nan)], [np.zeros((12, 12, 3))])
    assert issubclass(ImageInputError, TensorfBenchError)


def test_read_metrics_bad_file(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(TensorfBenchError, match="metrics.json"):
        read_metrics(tmp_path)


# ---------------------------------------------------------------- load_rgb


def test_load_rgb_composites_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255
    rgba[1, 1, 3] = 51  # alpha 0.2
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_rgb(tmp_path / "a.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], [1, 0, 0])
    np.testing.assert_allclose(img[2, 2], [1, 1, 1])  # transparent -> white
    np.testing.assert_allclose(img[1, 1], [1, 0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(load_rgb(tmp_path / "a.png", background="black")[2, 2], [0, 0, 0])


def test_load_rgb_modes(tmp_path):
    grey = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 10)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    img = load_rgb(tmp_path / "g.png")
    np.testing.assert_allclose(img[..., 1], grey / 255.0, atol=1e-6)
    g16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(load_rgb(tmp_path / "g16.png")[..., 2], g16 / 65535.0, atol=1e-6)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(load_rgb(tmp_path / "c.png"), rgb / 255.0, atol=1e-6)


def test_load_rgb_errors_name_the_file(tmp_path):
    with pytest.raises(ImageInputError, match="nope.png: no such image file"):
        load_rgb(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageInputError, match="bad.png: cannot read image"):
        load_rgb(bad)
    with pytest.raises(ImageInputError, match="background"):
        load_rgb(bad, background="grey")


def test_evaluation_imports_no_framework():
    code = (
        "import sys, tensorf_common.evaluation, tensorf_common.metrics;"
        "bad = [m for m in ('jax', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
