"""``run.json``: the summary of one training run, the same keys for both frameworks, one writer.

``jax_tensorf.run.train_run`` and ``torch_reference.run.train_run`` build the shared part with
:func:`training_summary` from their trainer (duck-typed: ``cfg``, ``pos`` (a
:class:`tensorf_common.schedule.SchedulePosition`), ``setup_seconds``, ``first_step_at``,
``compiles``, ``events``, ``history`` (dataclasses)), add the evaluation
(:func:`evaluation_summary`) and what only their framework knows (device, compilation cache, device
memory), and write it with :func:`write_run_summary`.

The shared keys:

- ``framework`` (``jax`` / ``torch``), ``data`` (the dataset folder), ``config`` (every setting);
- ``steps``; ``train_seconds``: the budget clock (set-up, compilation, events and steps);
  ``step_seconds``: the training clock (steps only, what time-fraction schedules run on);
  ``load_seconds``, ``setup_seconds``; ``time_to_first_step``: from the start of ``train_run`` to
  the end of the first step (None for a resumed run);
- ``compiles`` (one entry per compilation; ``[]`` for torch), ``compile_seconds``;
- ``grid_size``, ``aabb`` (the final ones), ``events`` (carving, ray filters, mask updates,
  upsamples), ``history`` (one entry per log point);
- ``rays_per_s``: training rays per second of ``step_seconds``;
- ``peak_rss_train_bytes`` (after training), ``peak_rss_bytes`` (at the end);
- after an evaluation ``eval`` (metrics per view and mean) and ``eval_render_seconds``;
- ``device``, and on an accelerator its peak memory (``device_peak_bytes`` / ``cuda_peak_bytes``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from .atomic import write_strict_json
from .runtime import peak_rss_bytes

RUN_JSON = "run.json"

SHARED_KEYS = (
    "framework", "data", "config", "steps", "train_seconds", "step_seconds", "load_seconds", "setup_seconds",
    "time_to_first_step", "compile_seconds", "grid_size", "aabb", "compiles", "events", "history", "rays_per_s",
    "peak_rss_train_bytes", "peak_rss_bytes", "device",
)
"""Keys every run.json has, whichever framework wrote it (``eval`` and ``eval_render_seconds`` too
after an evaluation)."""


def rays_per_s(steps: int, batch_size: int, step_seconds: float) -> Optional[float]:
    """Training rays per second of training-step time (set-up, compilation and events excluded)."""
    if steps <= 0 or step_seconds <= 0:
        return None
    return round(steps * batch_size / step_seconds, 1)


def training_summary(
    framework: str,
    data_dir,
    trainer: Any,
    *,
    grid_size: Sequence[int],
    aabb: Sequence[Sequence[float]],
    load_seconds: float,
    t_start: float,
    resumed: bool,
) -> dict:
    """The shared keys of a finished training (see the module docstring). ``t_start`` is the
    ``time.perf_counter()`` at the start of ``train_run``."""
    p = trainer.pos
    compiles = list(trainer.compiles)
    first = trainer.first_step_at
    return {
        "framework": framework,
        "data": str(data_dir),
        "config": trainer.cfg.to_dict(),
        "steps": p.step,
        "train_seconds": round(p.elapsed, 3),
        "step_seconds": round(p.train_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "setup_seconds": round(trainer.setup_seconds, 3),
        "time_to_first_step": None if resumed or first is None else round(first - t_start, 3),
        "compile_seconds": round(sum(c["seconds"] for c in compiles), 3),
        "grid_size": [int(g) for g in grid_size],
        "aabb": [[float(v) for v in row] for row in aabb],
        "compiles": compiles,
        "events": list(trainer.events),
        "history": [dataclasses.asdict(h) for h in trainer.history],
        "rays_per_s": rays_per_s(p.step, trainer.cfg.train.batch_size, p.train_seconds),
        "peak_rss_train_bytes": peak_rss_bytes(),
    }


def evaluation_summary(results, render_seconds: float) -> dict:
    """``eval`` (a :class:`tensorf_common.evaluation.EvalResults`) and ``eval_render_seconds``."""
    return {"eval": results.to_json_dict(), "eval_render_seconds": round(render_seconds, 3)}


def write_run_summary(out_dir, summary: dict) -> Path:
    """Write ``out_dir/run.json`` atomically as strict JSON, with ``peak_rss_bytes`` (this
    process's peak so far) unless the summary has it already."""
    summary.setdefault("peak_rss_bytes", peak_rss_bytes())
    return write_strict_json(Path(out_dir) / RUN_JSON, summary)


__all__ = ["RUN_JSON", "SHARED_KEYS", "evaluation_summary", "rays_per_s", "training_summary", "write_run_summary"]
