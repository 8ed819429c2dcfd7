"""torch_reference.run.train_run: the run folder (as JAX's), on_log with a dict per log point, and a
resumed run continuing from checkpoint.th."""

from __future__ import annotations

import dataclasses
import json

from tensorf_common.config import preset
from tensorf_common.training_log import LogPoint
from torch_reference.run import train_run


def test_train_run_then_resume(small_scene, tmp_path):
    cfg = preset("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, n_iters=6, log_every=3, upsample_at=(3,),
                                                              alpha_mask_at=()))
    points: list[dict] = []
    out = tmp_path / "run"
    summary = train_run(cfg, small_scene, out, evaluate=False, log=lambda s: None, on_log=points.append, device="cpu")
    assert [p["step"] for p in points] == [3, 4, 6] and set(points[0]) == {f.name for f in dataclasses.fields(LogPoint)}
    assert json.loads((out / "run.json").read_text())["history"] == summary["history"] == points
    assert summary["steps"] == 6 and summary["time_to_first_step"] > 0 and "eval" not in summary
    assert [e["event"] for e in summary["events"]] == ["ray_filter_box", "upsample"]
    assert (out / "model.th").is_file() and (out / "checkpoint.th").is_file()
    # the log points went to TensorBoard too, read back with the tensorboard package's reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train/psnr")] == [(p["step"], round(p["psnr"], 4)) for p in points]
    # resumed with another step budget in the config: the saved config wins, as in JAX; nothing is left to train
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, n_iters=9))
    again = train_run(longer, small_scene, out, resume=True, evaluate=False, log=lambda s: None, device="cpu")
    assert again["steps"] == 6 and again["time_to_first_step"] is None and again["config"]["train"]["n_iters"] == 6
    assert again["history"] == summary["history"] and again["events"] == summary["events"]


def test_ctrl_c_keeps_the_run_and_resume_finishes_it(small_scene, tmp_path):
    """A Ctrl-C (the flag tensorf_common.interrupt's handler sets) seen after step 2: the torch run
    stops between steps, writes checkpoint.th, raises TrainingInterrupted without evaluating, and
    --resume trains the remaining steps."""
    import pytest

    import tensorf_common.interrupt as interrupt

    cfg = preset("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, n_iters=5, log_every=1, alpha_mask_at=(), upsample_at=()))
    out = tmp_path / "run"

    def interrupt_after_step_2(point: dict) -> None:
        if point["step"] == 2:
            interrupt._state.signals = 1  # what the first SIGINT does inside stop_on_interrupt

    with pytest.raises(interrupt.TrainingInterrupted, match=r"interrupted at step 2; .*checkpoint.th holds the run"):
        train_run(cfg, small_scene, out, log=lambda s: None, on_log=interrupt_after_step_2, device="cpu")
    assert not interrupt.stop_requested()  # the flag does not outlive the run
    assert (out / "checkpoint.th").is_file() and not (out / "eval").exists() and not (out / "model.th").exists()
    summary = train_run(cfg, small_scene, out, resume=True, evaluate=False, log=lambda s: None, device="cpu")
    assert summary["steps"] == 5 and [h["step"] for h in summary["history"]] == [1, 2, 3, 4, 5]
