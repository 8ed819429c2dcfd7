"""TensorBoard event files for a training run, written into ``RUN_DIR/tensorboard/``.

Watch one run or many with ``tensorboard --logdir runs/`` (the ``tensorboard`` package is a dev
dependency; writing needs only ``tensorboardX``). Both trainers write the same tags, with the
training step as the global step:

- ``train/psnr``, ``train/mse``: train PSNR and MSE over the steps since the previous point;
  ``train/loss``: the total loss (where the trainer reports it)
- ``train/rays_per_s``: training rays per second over those steps
- ``train/lr_grid``, ``train/lr_basis``: learning rates
- ``train/grid_voxels`` (product of ``grid_size``), ``train/n_samples`` (samples per ray)
- ``train/valid_fraction``, ``train/app_fraction``: fraction of samples kept and shaded;
  ``train/sample_overflow``, ``train/app_overflow``: samples beyond the capacities
- ``train/elapsed_seconds`` (the budget clock), ``train/train_seconds`` (the schedule clock)
- ``events/<name>_seconds``: seconds a schedule event (``alpha_mask``, ...) took;
  ``events/<name>_grid_voxels``: the grid after it (``upsample``, the shrinking ``alpha_mask``);
  ``events/<name>_rays_kept``: training rays left by a ray filter;
  ``events/<name>/text_summary``: the event's record as JSON
- ``compile/seconds``, ``compile/cache_hit`` (0 or 1), ``compile/record/text_summary``: a compile
  of the train step
- ``eval/psnr``, ``eval/ssim``, ``eval/lpips_alex``, ``eval/lpips_vgg``: mean test metrics;
  ``eval/render/<frame>``, ``eval/depth/<frame>``: images of the first test view
- ``run/text_summary``: the framework that wrote the file (step 0)

Writes are synchronous (tensorboardX's ``EventsWriter`` and summary protos, flushed at most every
few seconds and at close) rather than tensorboardX's ``SummaryWriter``: that one writes from a
thread fed by a bounded queue, so a failed write kills the thread and later writes block training.
Here a write that raises ``OSError`` turns the writer off with one warning line; training goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

SUBDIR = "tensorboard"
"""Folder of the event files inside the run folder."""

FLUSH_SECONDS = 5.0
"""Longest time a written point waits in the file buffer (a flush also syncs the file to disk)."""

_POINT_TAGS = {
    "psnr": "train/psnr",
    "mse": "train/mse",
    "total": "train/loss",
    "rays_per_s": "train/rays_per_s",
    "lr_grid": "train/lr_grid",
    "lr_basis": "train/lr_basis",
    "n_samples": "train/n_samples",
    "valid_fraction": "train/valid_fraction",
    "app_fraction": "train/app_fraction",
    "sample_overflow": "train/sample_overflow",
    "app_overflow": "train/app_overflow",
    "elapsed": "train/elapsed_seconds",
    "train_seconds": "train/train_seconds",
}
"""Key of a log point -> its scalar tag (keys a trainer does not report are left out)."""

_file_ids = itertools.count()


def _number(v: Any) -> Optional[float]:
    """``v`` as a finite float, or None (missing, non-numeric or non-finite values are not logged)."""
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _voxels(grid_size) -> Optional[float]:
    return float(np.prod([int(g) for g in grid_size])) if grid_size else None


def _import_tensorboardx(block_torch: bool):
    """tensorboardX's event writer and summary module. Importing the package imports torch when torch
    is installed (``tensorboardX.writer`` tries it), which a JAX process should not pay for in time
    and memory; so a JAX run hides torch for the duration of the import (``sys.modules[name] = None``
    makes ``import name`` fail) and leaves it importable afterwards."""
    hide = block_torch and "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
    finally:
        if hide:
            del sys.modules["torch"]
    return EventsWriter, Event, summary


class RunWriter:
    """TensorBoard logging of one training run (see the module docstring for the tags).

    A disabled writer does nothing and imports nothing. A missing ``tensorboardX`` or a write that
    raises ``OSError`` turns the writer off with one warning line, given to ``warn`` (default: printed
    on stderr). ``framework`` ("jax" or "torch") is noted in the file; a JAX writer keeps torch out of
    the process.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, framework: str = "jax",
                 warn: Optional[Callable[[str], None]] = None):
        self.framework = framework
        self.logdir = Path(run_dir) / SUBDIR
        self._warn = warn or (lambda s: print(s, file=sys.stderr))
        self._file = None
        self._last_flush = -math.inf
        self._logged = [0, 0]  # entries of the trainer's events and compiles lists logged so far
        if not enabled:
            return
        try:
            EventsWriter, self._Event, self._summary = _import_tensorboardx(block_torch=framework != "torch")
        except ImportError as e:
            self._off(f"{e} (pip install tensorboardX)")
            return
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            # one file per writer: a resumed run in the same second must not truncate the first file
            suffix = f".{os.getpid()}.{next(_file_ids)}.{framework}"
            self._file = EventsWriter(str(self.logdir / "events"), suffix)
        except OSError as e:
            self._off(str(e))
            return
        self._write(0, [self._summary.text("run", f"framework: {framework}")], flush=True)

    @property
    def enabled(self) -> bool:
        """False once the writer is off (disabled, failed or closed)."""
        return self._file is not None

    def _off(self, reason: str) -> None:
        self._file = None
        self._warn(f"warning: TensorBoard logging off ({self.logdir}): {reason}")

    def _write(self, step: int, summaries: list, flush: bool = False) -> None:
        if self._file is None or not summaries:
            return
        try:
            for s in summaries:
                self._file.write_event(self._Event(summary=s, step=int(step), wall_time=time.time()))
            now = time.monotonic()
            if flush or now - self._last_flush >= FLUSH_SECONDS:
                self._file.flush()
                self._last_flush = now
        except OSError as e:
            self._off(str(e))

    def _scalars(self, values: dict[str, Any]) -> list:
        out = []
        for tag, v in values.items():
            f = _number(v)
            if f is not None:
                out.append(self._summary.scalar(tag, f))
        return out

    def _text(self, tag: str, record: dict):
        # indented: a Markdown code block, so that TensorBoard shows the JSON as it is
        return self._summary.text(tag, "    " + json.dumps(record, default=str))

    def log_point(self, point: dict) -> None:
        """One training log point (``LogPoint`` as a dict, or the torch trainer's history entry)."""
        if self._file is None:
            return
        values = {tag: point.get(key) for key, tag in _POINT_TAGS.items()}
        values["train/grid_voxels"] = _voxels(point.get("grid_size"))
        self._write(point["step"], self._scalars(values))

    def log_event(self, event: dict) -> None:
        """A schedule event as the trainers record it (``{"event": name, "step": ..., ...}``; set-up
        events without a step go to step 0)."""
        if self._file is None:
            return
        name = str(event["event"])
        values = {
            f"events/{name}_seconds": event.get("seconds"),
            f"events/{name}_grid_voxels": _voxels(event.get("grid_size") or event.get("to")),
            f"events/{name}_rays_kept": event.get("rays_kept", event.get("kept")),
        }
        self._write(event.get("step", 0), self._scalars(values) + [self._text(f"events/{name}", event)], flush=True)

    def log_compile(self, info: dict) -> None:
        """A compile record (``step``, ``seconds``, ``grid_size``, ``cache_hit``, ...)."""
        if self._file is None:
            return
        values = {"compile/seconds": info.get("seconds"), "compile/cache_hit": info.get("cache_hit")}
        self._write(info.get("step", 0), self._scalars(values) + [self._text("compile/record", info)], flush=True)

    def log_records(self, events: list, compiles: list) -> None:
        """Log the entries of a trainer's ``events`` and ``compiles`` lists (which only grow) that are
        new since the previous call: call it at every log point and once after training."""
        n_events, n_compiles = self._logged
        for event in events[n_events:]:
            self.log_event(event)
        for info in compiles[n_compiles:]:
            self.log_compile(info)
        self.mark_logged(events, compiles)

    def mark_logged(self, events: list, compiles: list) -> None:
        """Take the entries present now as logged (a resumed run's, which the first process logged)."""
        self._logged = [len(events), len(compiles)]

    def log_eval(self, mean: dict, step: int, images: Optional[dict[str, np.ndarray]] = None) -> None:
        """Mean test metrics (None values left out) and images, each ``(H, W)``, ``(H, W, 1|3|4)``,
        float in [0, 1] or uint8, tagged ``eval/<key>``."""
        if self._file is None:
            return
        summaries = self._scalars({f"eval/{k}": v for k, v in mean.items()})
        for key, img in (images or {}).items():
            img = np.asarray(img)
            summaries.append(self._summary.image(f"eval/{key}", img, dataformats="HW" if img.ndim == 2 else "HWC"))
        self._write(step, summaries, flush=True)

    def follow(self, trainer, forward: Optional[Callable] = None) -> Callable:
        """An ``on_log`` callback for ``trainer.run`` (either framework's): each log point, the
        trainer's events and compiles since the previous one, then ``forward(point)``."""

        def callback(point) -> None:
            self.log_point(point if isinstance(point, dict) else dataclasses.asdict(point))
            self.log_records(trainer.events, trainer.compiles)
            if forward is not None:
                forward(point)

        return callback

    def log_evaluation(self, results, step: int, eval_dir: Path) -> None:
        """The mean metrics of an evaluation (:class:`tensorf_common.evaluation.EvalResults`) and
        the render and depth of its first view, read back from ``eval_dir``."""
        if self.enabled and results.per_image:
            self.log_eval(results.mean, step, eval_images(Path(eval_dir), results.per_image[0]["name"]))

    def close(self) -> None:
        """Flush and close the file; later calls do nothing."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as e:
            self._off(str(e))
        self._file = None


def eval_images(eval_dir: Path, name: str) -> dict[str, np.ndarray]:
    """The render and depth PNGs of one evaluated view (``eval_dir/<name>.png`` and
    ``eval_dir/depth/<name>.png``, as ``evaluate_split`` writes them), keyed ``render/<name>`` and
    ``depth/<name>`` for :meth:`RunWriter.log_eval`; files that are absent are left out."""
    from .images import read_rgba

    out = {}
    for key, path in ((f"render/{name}", Path(eval_dir) / f"{name}.png"),
                      (f"depth/{name}", Path(eval_dir) / "depth" / f"{name}.png")):
        if path.is_file():
            out[key] = read_rgba(path)[..., :3]
    return out
