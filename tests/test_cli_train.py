"""`tensorf-bench train / eval / render` in-process on the small procedural scene: the files a run
writes (named like the ground truth), the last line, run.json, the smoke training's PSNR rise, resume
and preset errors (exit 2, one line), and eval/render of the trained run."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest

from tensorf_bench.cli import main

STEPS = 20
SMOKE_OVERRIDES = ["--config.train.lr-init", 0.2, "--config.train.lr-basis", 0.02, "--config.train.log-every", 5]
"""The smoke preset at a raised learning rate, so that 20 steps (no upsample yet: the preset's first is
after step 20) visibly train: about +7 dB measured between the first and last log points."""


def _cli(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(small_scene, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "RUN"
    rc, out, err = _cli(
        ["train", "--data", small_scene, "--preset", "smoke", "--out", run, "--steps", STEPS, "--no-progress", "--no-lpips"]
        + SMOKE_OVERRIDES
    )
    assert rc == 0, err
    return run, out, err


def test_train_writes_the_run_files(trained, small_dataset):
    run, out, _ = trained
    for name in ("checkpoint.npz", "model.npz", "run.json", "eval/metrics.json", "eval/metrics.csv"):
        assert (run / name).is_file(), name
    # the smoke preset evaluates at most 2 test views; renders are named like the ground truth frames
    names = small_dataset["test"].frame_names[:2]
    assert names[0] == "r_0"
    for n in names:
        assert (run / "eval" / f"{n}.png").is_file() and (run / "eval" / "depth" / f"{n}.png").is_file()
    from PIL import Image

    img = np.asarray(Image.open(run / "eval" / f"{names[0]}.png"))
    assert img.shape[:2] == (small_dataset["test"].height, small_dataset["test"].width)
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_train_run_json_and_last_line(trained):
    run, out, _ = trained
    summary = json.loads((run / "run.json").read_text())
    assert summary["framework"] == "jax" and summary["steps"] == STEPS
    assert summary["config"]["train"]["n_iters"] == STEPS
    assert summary["config"]["train"]["batch_size"] == 256  # the smoke preset
    assert summary["config"]["train"]["lr_init"] == 0.2  # the override
    assert len(summary["compiles"]) == 1 and summary["compiles"][0]["grid_size"] == [16, 16, 16]
    assert summary["eval"]["n_images"] == 2
    assert summary["cpu_dispatch"] in ("sync", "async")  # recorded: it changes host memory (jax_tensorf.xla)
    mean = summary["eval"]["mean"]["psnr"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["mean"]["psnr"] == pytest.approx(mean)
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"mean test PSNR ([0-9.]+) dB .*", last)
    assert m, last
    assert float(m.group(1)) == pytest.approx(mean, abs=0.005)


def test_smoke_training_psnr_rises(trained):
    """The smoke training on the procedural scene: the train PSNR rises measurably (bound 3 dB)."""
    run, _, _ = trained
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    psnr = [h["psnr"] for h in history]
    assert all(np.isfinite(psnr))
    assert psnr[-1] - psnr[0] >= 3.0, psnr
    assert history[-1]["grid_size"] == [16, 16, 16]


@pytest.mark.parametrize(("framework", "checkpoint"), [("jax", "checkpoint.npz"), ("torch", "checkpoint.th")])
def test_resume_without_checkpoint_exits_2_with_one_line(small_scene, tmp_path, framework, checkpoint):
    rc, out, err = _cli(["train", "--framework", framework, "--data", small_scene, "--preset", "smoke",
                         "--out", tmp_path / "empty", "--resume", "--no-progress"])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and checkpoint in lines[0]
    assert not (tmp_path / "empty" / "run.json").exists()


def test_unknown_preset_exits_2(small_scene, tmp_path):
    rc, out, err = _cli(["train", "--data", small_scene, "--preset", "no-such-preset", "--out", tmp_path / "x"])
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-preset" in lines[0]
    assert not (tmp_path / "x").exists()


def test_a_repeated_preset_exits_2_with_one_line(small_scene, tmp_path):
    """The preset's defaults came from the first --preset and the run's label from the last."""
    rc, out, err = _cli(["train", "--data", small_scene, "--preset", "smoke", "--preset", "bogus", "--out", tmp_path / "x"])
    assert rc == 2 and err.strip() == "error: --preset: given 2 times (smoke, bogus); give it once"
    assert not (tmp_path / "x").exists()
    rc, _, err = _cli(["report", "--preset=smoke", "--preset", "quick", "--out", tmp_path / "r"])
    assert rc == 2 and err.strip() == "error: --preset: given 2 times (smoke, quick); give it once"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("command", "names"), [("train", "PRESETS"), ("report", "REPORT_PRESETS")])
def test_help_lists_every_preset_the_command_accepts(command, names, capsys):
    from tensorf_bench.report import presets as report_presets
    from tensorf_common import config

    accepted = getattr(config if names == "PRESETS" else report_presets, names)
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    preset_help = text[text.index("--preset STR"):].split(" --", 1)[0]
    missing = [name for name in accepted if not re.search(rf"\b{name} \(", preset_help)]
    assert not missing, preset_help


@pytest.mark.slow  # a subprocess that compiles a bf16 train step
def test_precision_option_and_a_redirected_log_without_progress_bars(small_scene, tmp_path):
    """``train --precision bf16 --preset smoke`` in a process whose stderr is a file (as ``cmd 2> log``):
    the run trains in bf16, and the log holds the periodic step lines but no progress bar."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    log = tmp_path / "train.log"
    with open(log, "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "tensorf_bench.cli", "train", "--data", str(small_scene), "--preset", "smoke",
             "--precision", "bf16", "--steps", "4", "--config.train.log-every", "2", "--no-eval",
             "--out", str(tmp_path / "run")],
            stdout=subprocess.PIPE, stderr=err, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
            env=dict(os.environ),
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["config"]["train"]["precision"] == "bf16" and summary["steps"] == 4
    bars = [ln for ln in re.split(r"[\r\n]", text) if re.search(r"\d+%\||\d+it \[|it/s\]|s/it\]", ln)]
    assert not bars, bars[:3]
    assert re.search(r"^step +2 .*psnr", text, re.M) and re.search(r"^step +4 .*psnr", text, re.M), text[-2000:]


def test_eval_run_dir_reproduces_the_training_evaluation(trained):
    run, _, _ = trained
    rc, out, err = _cli(["eval", "--run-dir", run, "--max-views", 2, "--no-lpips"])
    assert rc == 0, err
    out_dir = run / "eval-test"
    assert (out_dir / "r_0.png").is_file() and (out_dir / "metrics.json").is_file()
    got = json.loads((out_dir / "metrics.json").read_text())
    want = json.loads((run / "eval" / "metrics.json").read_text())
    # the saved model renders exactly what the trained one did
    assert got["mean"]["psnr"] == pytest.approx(want["mean"]["psnr"], abs=1e-6)
    assert out.strip().splitlines()[-1].startswith("mean test PSNR")


def test_render_views_and_orbit(trained):
    run, _, _ = trained
    rc, out, err = _cli(["render", "--run-dir", run, "--views", 0, "--orbit", 3])
    assert rc == 0, err
    out_dir = run / "render"
    assert (out_dir / "r_0.png").is_file() and (out_dir / "depth" / "r_0.png").is_file()
    import imageio.v2 as imageio

    frames = imageio.mimread(out_dir / "orbit.gif")
    assert len(frames) == 3 and frames[0].shape[:2] == (32, 32)
    rc, _, err = _cli(["render", "--run-dir", run, "--views", 99])
    assert rc == 2 and err.strip().startswith("error: ") and "99" in err


@pytest.fixture(scope="module")
def trained_torch(small_scene, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli-torch") / "RUN"
    rc, out, err = _cli(
        ["train", "--framework", "torch", "--data", small_scene, "--preset", "smoke", "--out", run, "--steps", 10,
         "--no-progress", "--no-lpips", "--config.train.log-every", 5, "--config.render.vmap-variant", "gather"]
    )
    assert rc == 0, err
    return run, out, err


def test_train_torch_writes_the_jax_run_layout(trained_torch, small_dataset):
    """``train --framework torch``: run.json with the JAX run's keys, eval/ named like the ground
    truth, the official-layout model.th and a resumable checkpoint.th; the JAX-only speed knob given
    is recorded as ignored."""
    from tensorf_common.run_summary import SHARED_KEYS
    from torch_reference.checkpoint import load_checkpoint

    run, out, _ = trained_torch
    for name in ("run.json", "model.th", "checkpoint.th", "eval/metrics.json", "eval/metrics.csv", "eval/r_0.png",
                 "eval/depth/r_0.png"):
        assert (run / name).is_file(), name
    assert not (run / "model.npz").exists() and not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    summary = json.loads((run / "run.json").read_text())
    assert set(SHARED_KEYS) | {"eval", "eval_render_seconds"} <= set(summary)
    assert summary["framework"] == "torch" and summary["steps"] == 10 and summary["compiles"] == []
    assert [h["step"] for h in summary["history"]] == [5, 10]
    assert summary["ignored_config"]["render.vmap_variant"] == "gather"
    assert summary["eval"]["n_images"] == 2 and (summary["device"] == "cpu" or summary["device"].startswith("cuda:"))
    model = load_checkpoint(run / "model.th")  # the official layout, read by the safe loader
    assert model.gridSize.tolist() == summary["grid_size"] == [16, 16, 16]
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"mean test PSNR ([0-9.]+) dB .*", last)
    assert m and float(m.group(1)) == pytest.approx(summary["eval"]["mean"]["psnr"], abs=0.005)


def test_eval_and_render_read_a_torch_run(trained_torch):
    run, _, _ = trained_torch
    rc, out, err = _cli(["eval", "--run-dir", run, "--max-views", 2, "--no-lpips"])
    assert rc == 0, err
    got = json.loads((run / "eval-test" / "metrics.json").read_text())
    want = json.loads((run / "eval" / "metrics.json").read_text())
    # the saved model.th renders exactly what the trained model did
    assert got["mean"]["psnr"] == pytest.approx(want["mean"]["psnr"], abs=1e-6)
    assert got["settings"]["backend"] == "torch"
    rc, out, err = _cli(["render", "--ckpt", run / "model.th", "--views", 1, "--orbit", 2, "--out", run / "r"])
    assert rc == 0, err
    assert (run / "r" / "r_1.png").is_file() and (run / "r" / "depth" / "r_1.png").is_file()
    import imageio.v2 as imageio

    assert len(imageio.mimread(run / "r" / "orbit.gif")) == 2
    rc, _, err = _cli(["eval", "--framework", "jax", "--run-dir", run, "--no-lpips"])
    assert rc == 2 and err.strip() == f"error: --framework: jax given, but {run} holds a torch model"


@pytest.mark.parametrize(("option", "field"), [(["--precision", "bf16"], "train.precision"),
                                               (["--config.train.devices", 2], "train.devices")])
def test_train_torch_refuses_what_it_cannot_honour(small_scene, tmp_path, option, field):
    rc, out, err = _cli(["train", "--framework", "torch", "--data", small_scene, "--preset", "smoke",
                         "--out", tmp_path / "x", "--no-progress"] + option)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: the torch reference")
    assert not (tmp_path / "x").exists()


def test_train_help_explains_the_framework_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--framework {jax,torch}" in text and "official checkpoint layout" in text
def test_eval_of_a_converted_safetensors_model(trained, small_scene, tmp_path):
    """``eval --ckpt m.safetensors`` evaluates the converted model (it said "contains pickled
    (object) data"): the same PSNR as the JAX checkpoint it was converted from."""
    run, _, _ = trained
    rc, _, err = _cli(["convert", run / "model.npz", tmp_path / "m.safetensors"])
    assert rc == 0, err
    psnr = {}
    for ckpt in (run / "model.npz", tmp_path / "m.safetensors"):
        out_dir = tmp_path / f"eval-{ckpt.suffix[1:]}"
        rc, _, err = _cli(["eval", "--ckpt", ckpt, "--data", small_scene, "--max-views", 1, "--no-lpips", "--out", out_dir])
        assert rc == 0, err
        psnr[ckpt.suffix] = json.loads((out_dir / "metrics.json").read_text())["mean"]["psnr"]
    assert psnr[".safetensors"] == pytest.approx(psnr[".npz"], abs=1e-4)


@pytest.mark.parametrize("cause", ["box", "cameras"])
def test_no_ray_meets_the_box_exits_2_with_one_line(cause, small_scene, tmp_path):
    """A box outside every view, or cameras whose rays spread sideways (camera_angle_x near pi): one
    line naming the box, the cameras and the cause (it was `ValueError: restrict: ...`, exit 1),
    and no run folder left behind."""
    import shutil

    data, extra = small_scene, []
    if cause == "box":
        extra = ["--config.data.aabb", 10, 10, 10, 11, 11, 11]
    else:
        data = tmp_path / "wide"
        shutil.copytree(small_scene, data)
        meta = json.loads((data / "transforms_train.json").read_text())
        meta["camera_angle_x"] = 3.14159
        (data / "transforms_train.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    rc, _, err = _cli(["train", "--data", data, "--preset", "smoke", "--out", run, "--steps", 2, "--no-progress"] + extra)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: transforms_train.json: none of the 8192 training rays"), line
    want = ("[[10.0, 10.0, 10.0], [11.0, 11.0, 11.0]] (data.aabb)" if cause == "box"
            else "[[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]] (the dataset's default box)")
    assert f"meets the box {want}" in line and "camera_angle_x" in line
    assert ("camera_angle_x 3.1416" in line) == (cause == "cameras")
    assert not run.exists()  # the folder the failed run created is gone


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # the NaN render's PNG, never kept
def test_an_out_folder_holding_a_run_is_refused_unless_resume_or_overwrite(trained, small_scene, tmp_path, monkeypatch):
    """``train --out RUN`` over an earlier run replaced its model silently beside the old
    evaluation; now it is refused, ``--overwrite`` clears the old run first, a folder holding other
    files is refused either way. An evaluation that fails on a non-finite render (here the second
    view's) leaves no renders."""
    import shutil

    import jax_tensorf.evaluation as evaluation

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = _listing(run)
    args = ["train", "--data", small_scene, "--preset", "smoke", "--out", run, "--steps", 2, "--no-progress", "--no-lpips"]
    rc, _, err = _cli(args)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "already holds a run (checkpoint.npz, model.npz, run.json)" in err and "--resume" in err and "--overwrite" in err
    rc, _, err = _cli(args + ["--resume", "--overwrite"])
    assert rc == 2 and "give one" in err
    assert _listing(run) == before

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    rc, _, err = _cli(args[:6] + [other] + args[7:] + ["--overwrite"])
    assert rc == 2 and "holds no run" in err and (other / "todo.txt").read_text() == "keep me"

    real = evaluation.render_views

    def second_view_not_finite(model, split, views, **kw):
        outs = real(model, split, views, **kw)
        for view, out in zip(views, outs):
            if view == 1:
                out["rgb"] = out["rgb"] * np.nan
        return outs

    monkeypatch.setattr(evaluation, "render_views", second_view_not_finite)
    rc, _, err = _cli(args + ["--overwrite"])
    assert rc == 2 and "non-finite" in err, err
    # the old run's files are gone (its evaluation included), the new model is kept, no render of it
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "model.npz", "tensorboard"]
    from jax_tensorf.checkpoint import read_npz

    assert read_npz(run / "checkpoint.npz")[1]["schedule"]["step"] == 2


def _train_until_interrupted(args, cwd):
    """Start `tensorf-bench train ARGS` (log at every step), send SIGINT once a step line is out,
    return (exit status, output)."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorf_bench.cli", "train", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash would print where it happened
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step "):
                proc.send_signal(signal.SIGINT)
                break
        lines.append(proc.stdout.read())
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, "".join(lines)


@pytest.mark.slow  # three processes that each load, set up, compile and train a step
def test_ctrl_c_exits_130_keeps_the_run_and_resume_continues_it(small_scene, tmp_path, sigint_default):
    """Ctrl-C once a step has run: exit 130 every time (it was SIGSEGV in 4 of 5 runs), the run
    folder holds the checkpoint of the last finished step and nothing else (no evaluation, no
    temporary file), and ``--resume`` continues from it; three interrupts in a row (a fresh run,
    then two resumes), enough to catch a failure that happens 4 times in 5."""
    from pathlib import Path

    from jax_tensorf.checkpoint import read_npz

    run = tmp_path / "run"
    base = ["--data", small_scene, "--preset", "smoke", "--steps", 400, "--out", run, "--no-lpips", "--no-progress",
            "--config.train.log-every", 1]
    step = 0
    for attempt in range(3):
        rc, out = _train_until_interrupted(base + (["--resume"] if attempt else []), Path(__file__).resolve().parents[1])
        assert rc == 130, out[-3000:]
        if attempt:
            assert f"resumed {run / 'checkpoint.npz'} at step {step} " in out, out[-3000:]
        saved = read_npz(run / "checkpoint.npz")[1]["schedule"]["step"]
        assert saved > step, (saved, step)
        last = out.strip().splitlines()[-1]
        assert last == f"error: interrupted at step {saved}; {run / 'checkpoint.npz'} holds the run (continue with --resume)"
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "tensorboard"], out[-3000:]
        step = saved
