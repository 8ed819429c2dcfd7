"""`tensorf-bench metrics A B`: one JSON object with psnr, ssim, lpips_alex, lpips_vgg; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tensorf_bench.cli import main
from tensorf_common.evaluation import load_rgb
from tensorf_common.lpips_weights import ENV_VAR, LpipsUnavailable, find_lpips_weights
from tensorf_common.metrics import psnr, ssim

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lpips_examples"
KEYS = ["psnr", "ssim", "lpips_alex", "lpips_vgg"]


@pytest.fixture(scope="module")
def ex() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is absent")
    return EXAMPLES


@pytest.fixture
def weights(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    try:
        find_lpips_weights("alex")
        find_lpips_weights("vgg")
    except LpipsUnavailable as exc:
        pytest.skip(f"LPIPS weights not installed: {exc}")


def _run(capsys, *args) -> tuple[int, dict, str]:
    code = main(["metrics", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_reference_pair(capsys, ex, weights, backend):
    code, d, _ = _run(capsys, ex / "ex_ref.png", ex / "ex_p0.png", "--backend", backend)
    assert code == 0
    assert list(d) == KEYS
    ref, p0 = load_rgb(ex / "ex_ref.png"), load_rgb(ex / "ex_p0.png")
    assert d["psnr"] == pytest.approx(psnr(p0, ref), abs=1e-9)
    assert d["ssim"] == pytest.approx(ssim(p0, ref), abs=1e-9)
    assert d["lpips_alex"] == pytest.approx(0.722, abs=1e-3)
    assert d["lpips_vgg"] == pytest.approx(0.569, abs=1e-3)


def test_identical_images(capsys, ex, weights):
    code, d, _ = _run(capsys, ex / "ex_p1.png", ex / "ex_p1.png")
    assert code == 0
    assert d["psnr"] == "inf"
    assert d["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert abs(d["lpips_alex"]) <= 1e-7 and abs(d["lpips_vgg"]) <= 1e-7


def test_missing_weights_print_na_with_reason(capsys, ex, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    code, d, _ = _run(capsys, ex / "ex_ref.png", ex / "ex_p1.png", "--backend", "torch")
    assert code == 0
    assert d["lpips_alex"] == "n/a" and d["lpips_vgg"] == "n/a"
    assert str(tmp_path) in d["lpips_alex_reason"] and "vgg16.ckpt" in d["lpips_vgg_reason"]
    assert isinstance(d["psnr"], float) and isinstance(d["ssim"], float)


def test_alpha_is_composited_on_white(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # LPIPS not needed here
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 30  # colour hidden by alpha 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(tmp_path / "white.png")
    code, d, _ = _run(capsys, tmp_path / "white.png", tmp_path / "clear.png")
    assert code == 0 and d["psnr"] == "inf"


def test_missing_file_exits_2(capsys, ex, tmp_path):
    code, _, err = _run(capsys, ex / "ex_ref.png", tmp_path / "missing.png")
    assert code == 2
    assert err.startswith("error: ") and "missing.png" in err and len(err.strip().splitlines()) == 1


def test_unreadable_file_exits_2(capsys, ex, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, _, err = _run(capsys, bad, ex / "ex_ref.png")
    assert code == 2 and "broken.png" in err


def test_mismatched_sizes_exit_2(capsys, ex, tmp_path):
    Image.fromarray(np.zeros((64, 65, 3), np.uint8)).save(tmp_path / "wide.png")
    code, _, err = _run(capsys, ex / "ex_ref.png", tmp_path / "wide.png")
    assert code == 2 and "wide.png" in err and "ex_ref.png" in err and "65x64" in err


def test_too_small_for_lpips_exits_2(capsys, tmp_path, weights):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / name)
    code, _, err = _run(capsys, tmp_path / "a.png", tmp_path / "b.png")
    assert code == 2 and "a.png" in err and "31x31" in err


def test_help_lists_the_positional_images(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["metrics", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--backend" in out and "composited on white" in out
