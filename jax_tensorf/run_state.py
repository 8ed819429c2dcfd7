"""What a JAX training run's checkpoint holds: the model, Adam's state, the sampler, the schedule
position, the step's shapes and the run's logs, as ``{"arrays": {name: np.ndarray}, "meta": {...}}``.

:meth:`jax_tensorf.training.Trainer.state_dict` and :meth:`~jax_tensorf.training.Trainer.from_state`
are built on these two functions; :mod:`jax_tensorf.checkpoint` writes and reads the file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from tensorf_common.config import ExperimentConfig
from tensorf_common.errors import CheckpointError
from tensorf_common.schedule import SchedulePosition
from tensorf_common.training_log import LogPoint

from . import checkpoint as ckpt
from . import static_grid as sg
from .capacities import StepShape
from .step import map_adam_moments, optimizer_arrays

LOGS = ("skipped_steps", "events", "compiles", "setup_seconds")
"""The run's logs kept in ``meta`` (a resumed run's ``run.json`` holds the whole run)."""


@dataclasses.dataclass
class RunParts:
    """A checkpoint's contents, checked and typed (the optimizer state stays in ``arrays``: it needs
    the trainer's optimizer to be rebuilt)."""

    model: Any
    cfg: ExperimentConfig
    arrays: dict
    pos: SchedulePosition
    shape: StepShape
    history: list
    sampler: dict
    """:meth:`BatchSampler.state_dict` (with ``pool_bits``)."""
    logs: dict
    buffers: Optional[tuple]
    """Static shapes: the grid and mask buffer sizes."""


def run_state(model, opt_state, sampler, cfg: ExperimentConfig, pos: SchedulePosition, shape: StepShape,
              history: list, logs: dict, buffers: Optional[tuple] = None) -> dict:
    """The checkpoint of a run (arrays at their exact sizes also when they live in ``buffers``)."""
    exact = model.exact()
    arrays = ckpt.model_arrays(exact)
    if buffers is not None:
        opt_state = map_adam_moments(opt_state, lambda g: sg.slice_grid(g, model.grid_size))
    arrays.update(optimizer_arrays(opt_state))
    sampler_state = dict(sampler.state_dict())
    bits = sampler_state.pop("pool_bits")
    if bits is not None:
        arrays["sampler/pool_bits"] = np.asarray(bits)
    meta = ckpt.model_meta(exact, cfg)
    if buffers is not None:
        meta["static_buffers"] = {"grid": list(buffers[0]), "mask": list(buffers[1])}
    meta.update(kind="trainer", schedule=dataclasses.asdict(pos), shape=dataclasses.asdict(shape),
                sampler=sampler_state, history=[dataclasses.asdict(p) for p in history],
                **{k: logs[k] for k in LOGS})
    return {"arrays": arrays, "meta": meta}


def read_run_state(state: dict, where: str) -> RunParts:
    """:func:`run_state`'s output checked field by field (CheckpointError naming ``where``)."""
    arrays, meta = state["arrays"], state["meta"]
    if meta.get("kind") != "trainer":
        raise CheckpointError(f"{where}: kind {meta.get('kind')!r} is a model, not a resumable training run")
    model, cfg = ckpt.model_from_arrays(arrays, meta, where)
    try:
        pos = SchedulePosition(**meta["schedule"])
        shape = StepShape(**meta["shape"])
        history = [LogPoint(**p) for p in meta["history"]]
        sampler = dict(meta["sampler"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: '__meta__' has no valid schedule, shape, history or sampler ({exc})") from None
    sampler["pool_bits"] = arrays.get("sampler/pool_bits")
    logs = {"skipped_steps": int(meta.get("skipped_steps", 0)), "events": list(meta.get("events", [])),
            "compiles": list(meta.get("compiles", [])), "setup_seconds": float(meta.get("setup_seconds", 0.0))}
    buffers = None
    if cfg.train.static_shapes:
        try:
            buffers = (list(meta["static_buffers"]["grid"]), list(meta["static_buffers"]["mask"]))
        except (KeyError, TypeError):
            raise CheckpointError(f"{where}: '__meta__' has no valid 'static_buffers' for a static-shape run") from None
    return RunParts(model, cfg, arrays, pos, shape, history, sampler, logs, buffers)
