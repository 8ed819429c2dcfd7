"""TensorBoard logging (``tensorf_common.tensorboard``): what a ``RunWriter`` writes reads back with the
tensorboard package's event reader (tags, steps, values, text, images); a disabled writer writes and
imports nothing; a failing disk turns the writer off with one warning instead of raising; and a smoke
``tensorf-bench train`` run leaves event files whose train PSNR matches run.json."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tensorf_common.tensorboard import SUBDIR, RunWriter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The subprocess check runs here, so that ``-c`` imports this checkout's packages."""


def _read(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / SUBDIR), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc, tag) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def _point(step, psnr, grid):
    return {"step": step, "elapsed": 0.5 * step, "train_seconds": 0.4 * step, "mse": 10 ** (-psnr / 10),
            "psnr": psnr, "lr_grid": 0.02 / step, "rays_per_s": 1000.0 + step, "n_samples": 3 * step,
            "grid_size": grid, "valid_fraction": 0.25}


def test_written_scalars_text_and_images_read_back(tmp_path):
    w = RunWriter(tmp_path, framework="torch")
    w.log_point(_point(10, 12.5, [4, 5, 6]))
    w.log_point(_point(20, 17.25, [8, 8, 8]))
    upsample = {"event": "upsample", "step": 20, "train_seconds": 8.0, "from": [4, 5, 6], "to": [8, 8, 8]}
    mask = {"event": "alpha_mask", "step": 20, "seconds": 0.75, "rays_kept": 1234, "grid_size": [6, 6, 7]}
    carve = {"event": "carve", "aabb": [[-1, -1, -1], [1, 1, 1]]}  # set-up: no step
    for e in (carve, upsample, mask):
        w.log_event(e)
    w.log_compile({"step": 0, "seconds": 2.5, "grid_size": [4, 5, 6], "cache_hit": False})
    w.log_compile({"step": 20, "seconds": 1.5, "grid_size": [8, 8, 8], "cache_hit": True})
    rng = np.random.default_rng(0)
    render = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    depth = np.linspace(0.0, 1.0, 42).reshape(6, 7)  # float, (H, W)
    w.log_eval({"psnr": 21.5, "ssim": 0.875, "lpips_alex": None}, 20, {"render/r_0": render, "depth/r_0": depth})
    w.close()
    w.log_point(_point(30, 1.0, [1, 1, 1]))  # after close: nothing, no error

    files = list((tmp_path / SUBDIR).iterdir())
    assert len(files) == 1 and ".tfevents." in files[0].name
    acc = _read(tmp_path)
    assert _scalars(acc, "train/psnr") == [(10, 12.5), (20, 17.25)]
    assert _scalars(acc, "train/grid_voxels") == [(10, 120.0), (20, 512.0)]
    assert _scalars(acc, "train/n_samples") == [(10, 30.0), (20, 60.0)]
    assert [(s, pytest.approx(v)) for s, v in _scalars(acc, "train/lr_grid")] == [(10, 0.002), (20, 0.001)]
    assert [v for _, v in _scalars(acc, "train/rays_per_s")] == [1010.0, 1020.0]
    assert _scalars(acc, "train/elapsed_seconds") == [(10, 5.0), (20, 10.0)]
    assert "train/lr_basis" not in acc.Tags()["scalars"]  # keys the trainer did not report are left out
    assert _scalars(acc, "events/alpha_mask_seconds") == [(20, 0.75)]
    assert _scalars(acc, "events/alpha_mask_rays_kept") == [(20, 1234.0)]
    assert _scalars(acc, "events/alpha_mask_grid_voxels") == [(20, 252.0)]
    assert _scalars(acc, "events/upsample_grid_voxels") == [(20, 512.0)]
    assert _scalars(acc, "compile/seconds") == [(0, 2.5), (20, 1.5)]
    assert _scalars(acc, "compile/cache_hit") == [(0, 0.0), (20, 1.0)]
    assert _scalars(acc, "eval/psnr") == [(20, 21.5)] and _scalars(acc, "eval/ssim") == [(20, 0.875)]
    assert "eval/lpips_alex" not in acc.Tags()["scalars"]
    for tag, event, step in (("events/upsample", upsample, 20), ("events/carve", carve, 0)):
        [(s, text)] = _texts(acc, f"{tag}/text_summary")
        assert s == step and json.loads(text) == event
    assert [json.loads(t)["seconds"] for _, t in _texts(acc, "compile/record/text_summary")] == [2.5, 1.5]
    assert _texts(acc, "run/text_summary") == [(0, "framework: torch")]

    from PIL import Image

    [img] = acc.Images("eval/render/r_0")
    assert (img.step, img.width, img.height) == (20, 7, 6)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.encoded_image_string))), render)
    [img] = acc.Images("eval/depth/r_0")
    got = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    assert got.shape[:2] == (6, 7) and got.reshape(-1)[0] == 0 and got.reshape(-1)[-1] == 255


def test_log_records_logs_each_new_entry_once(tmp_path):
    """A trainer's events and compiles lists grow during the run; each entry is logged once, and a
    resumed run's restored entries (logged by the first process) not again."""
    events = [{"event": "carve", "aabb": [0]}, {"event": "upsample", "step": 5, "to": [2, 2, 2]}]
    compiles = [{"step": 0, "seconds": 1.0, "cache_hit": False}]
    w = RunWriter(tmp_path)
    w.mark_logged(events[:1], [])  # as if resumed after the carve
    w.log_records(events, compiles)
    events.append({"event": "upsample", "step": 9, "to": [3, 3, 3]})
    compiles.append({"step": 9, "seconds": 2.0, "cache_hit": True})
    w.log_records(events, compiles)
    w.log_records(events, compiles)  # nothing new
    w.close()
    acc = _read(tmp_path)
    assert "events/carve/text_summary" not in acc.Tags()["tensors"]
    assert [s for s, _ in _texts(acc, "events/upsample/text_summary")] == [5, 9]
    assert _scalars(acc, "events/upsample_grid_voxels") == [(5, 8.0), (9, 27.0)]
    assert _scalars(acc, "compile/seconds") == [(0, 1.0), (9, 2.0)]


def test_a_disabled_writer_writes_and_imports_nothing_and_a_jax_writer_no_torch(tmp_path):
    """In a fresh interpreter: a disabled writer leaves no folder and does not import tensorboardX; an
    enabled JAX writer imports tensorboardX without loading torch (installed here), and torch stays
    importable afterwards (nothing left in sys.modules)."""
    code = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from tensorf_common.tensorboard import RunWriter
        off = RunWriter(Path(sys.argv[1]) / "off", enabled=False)
        off.log_point({"step": 1, "psnr": 1.0}); off.log_event({"event": "x"}); off.close()
        after_off = sorted(m for m in sys.modules if m.split(".")[0] == "tensorboardX")
        on = RunWriter(Path(sys.argv[1]) / "on", framework="jax")
        on.log_point({"step": 1, "psnr": 1.0, "grid_size": [2, 2, 2]}); on.close()
        print(json.dumps({"after_off": after_off, "tbx": "tensorboardX" in sys.modules,
                          "torch": "torch" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res == {"after_off": [], "tbx": True, "torch": False}, res
    assert not (tmp_path / "off").exists()
    assert len(list((tmp_path / "on" / SUBDIR).iterdir())) == 1


def test_a_write_error_turns_the_writer_off_with_one_warning(tmp_path, monkeypatch):
    warnings: list[str] = []
    w = RunWriter(tmp_path, warn=warnings.append)
    w.log_point(_point(10, 12.5, [4, 4, 4]))

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the event file is synced at every flush
    w.log_event({"event": "upsample", "step": 20, "to": [8, 8, 8]})  # events flush at once
    assert not w.enabled
    w.log_point(_point(30, 13.0, [8, 8, 8]))
    w.log_eval({"psnr": 1.0}, 30, {"render/r_0": np.zeros((2, 2, 3))})
    w.close()
    assert len(warnings) == 1 and warnings[0].startswith("warning: TensorBoard logging off")
    assert "No space left" in warnings[0]

    # a run folder whose tensorboard/ cannot be created: off from the start, training goes on
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / SUBDIR).write_text("a file, not a folder")
    warnings.clear()
    w = RunWriter(blocked, warn=warnings.append)
    w.log_point(_point(10, 12.5, [4, 4, 4]))
    w.close()
    assert not w.enabled and len(warnings) == 1 and str(blocked / SUBDIR) in warnings[0]


def _cli(args):
    from tensorf_bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.slow  # a 30-step smoke training with an upsample: two compiles
def test_train_writes_event_files_that_match_run_json(small_scene, tmp_path):
    """``tensorf-bench train --preset smoke --steps 30`` on the small procedural scene: train/psnr at the
    logged steps with run.json's values, the compiles and schedule events at their steps, the test
    metrics and the first test view's render."""
    run = tmp_path / "run"
    rc, _, err = _cli(["train", "--data", small_scene, "--preset", "smoke", "--steps", 30, "--out", run,
                       "--no-progress", "--no-lpips"])
    assert rc == 0, err
    summary = json.loads((run / "run.json").read_text())
    acc = _read(run)
    history = summary["history"]
    assert history[-1]["step"] == 30 and len(history) >= 3  # log_every 10, plus a point at each upsample
    got = _scalars(acc, "train/psnr")
    assert [s for s, _ in got] == [h["step"] for h in history]
    assert [v for _, v in got] == pytest.approx([h["psnr"] for h in history], rel=1e-6)
    assert [v for _, v in _scalars(acc, "train/grid_voxels")] == [float(np.prod(h["grid_size"])) for h in history]
    assert len(summary["compiles"]) >= 2  # the smoke preset upsamples at step 20
    assert [(s, pytest.approx(v, abs=1e-3)) for s, v in _scalars(acc, "compile/seconds")] == [
        (c["step"], c["seconds"]) for c in summary["compiles"]
    ]
    assert "upsample" in [e["event"] for e in summary["events"]]
    for event in summary["events"]:
        texts = [(s, json.loads(t)) for s, t in _texts(acc, f"events/{event['event']}/text_summary")]
        assert (event.get("step", 0), event) in texts
    assert _scalars(acc, "eval/psnr") == [(30, pytest.approx(summary["eval"]["mean"]["psnr"], rel=1e-6))]
    [img] = acc.Images("eval/render/r_0")
    assert (img.step, img.width, img.height) == (30, 32, 32)


def test_no_tensorboard_option_reaches_the_run(small_scene, tmp_path, monkeypatch):
    """``--tensorboard`` is on by default and ``--no-tensorboard`` turns it off (the run itself is faked)."""
    import jax_tensorf.run

    calls = []

    def fake_train_run(cfg, data_dir, out, **kw):
        calls.append(kw["tensorboard"])
        return {"steps": 0, "train_seconds": 0.0, "rays_per_s": None, "grid_size": [1, 1, 1], "peak_rss_bytes": 0}

    monkeypatch.setattr(jax_tensorf.run, "train_run", fake_train_run)
    for flag in ([], ["--no-tensorboard"]):
        rc, _, err = _cli(["train", "--data", small_scene, "--preset", "smoke", "--out", tmp_path / "x", "--no-eval"] + flag)
        assert rc == 0, err
    assert calls == [True, False]
