"""The `make-scene` and `inspect` subcommands (run in-process through tensorf_bench.cli.main)."""

from __future__ import annotations

import json
import shutil

import pytest

from tensorf_bench.cli import main
from tensorf_common.data.blender import load_blender
from tensorf_common.data.scene_cache import scene_cache_dir


def test_make_scene_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "scene"
    argv = ["make-scene", "--out", str(out), "--width", "16", "--height", "12"]
    argv += ["--n-train", "3", "--n-val", "2", "--n-test", "2", "--seed", "4"]
    assert main(argv) == 0
    assert "wrote 7 views at 16x12" in capsys.readouterr().out
    ds = load_blender(out, splits=("train", "val", "test"))
    assert [ds[s].n_views for s in ("train", "val", "test")] == [3, 2, 2]
    assert (ds["train"].width, ds["train"].height) == (16, 12)
    assert json.loads((out / "scene.json").read_text())["options"]["seed"] == 4


def test_make_scene_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["make-scene", "--out", str(tmp_path), "--width", "8", "--height", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not empty" in err and "\n" not in err
    assert main(["make-scene", "--out", str(tmp_path / "s"), "--width", "0"]) == 2
    assert "width" in capsys.readouterr().err


def test_inspect_prints_a_summary(small_scene, capsys):
    assert main(["inspect", "--data", str(small_scene), "--carve-resolution", "24"]) == 0
    out = capsys.readouterr().out
    for needle in ("train", "val", "test", "32x32", "focal 44.44 px", "aabb", "near/far    2 / 6", "memory", "carved box"):
        assert needle in out, (needle, out)
    assert "   8 views" in out and "   4 views" in out


def test_inspect_downsample_and_splits(small_scene, capsys):
    argv = ["inspect", "--data", str(small_scene), "--downsample", "2", "--splits", "train", "--carve-resolution", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "16x16" in out and "downsample  2" in out and "carved box" not in out
    assert "\n  train " in out and "\n  test " not in out


@pytest.mark.parametrize(
    "breakage, needle",
    [
        ("missing", "does not exist"),
        ("json", "transforms_train.json: not valid JSON"),
        ("downsample", "downsample 3 does not divide"),
    ],
)
def test_inspect_bad_input_is_one_line_exit_2(breakage, needle, small_scene, tmp_path, capsys):
    data = tmp_path / "data"
    extra: list[str] = []
    if breakage == "json":
        shutil.copytree(small_scene, data)
        (data / "transforms_train.json").write_text("{ nope")
    elif breakage == "downsample":
        data = small_scene
        extra = ["--downsample", "3"]
    assert main(["inspect", "--data", str(data), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


def test_inspect_defaults_to_the_cached_procedural_scene(small_scene, tmp_path, monkeypatch, capsys):
    # Seed the cache with the small scene under the default scene's key, so nothing is rendered.
    monkeypatch.setenv("TENSORF_BENCH_CACHE", str(tmp_path / "cache"))
    target = scene_cache_dir()
    target.parent.mkdir(parents=True)
    shutil.copytree(small_scene, target)
    assert main(["inspect", "--carve-resolution", "0"]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and "built-in procedural scene" in out


def test_help_lists_the_data_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "make-scene" in out and "Render the procedural default scene" in out
    assert "Load a Blender-format dataset and print a summary" in out
