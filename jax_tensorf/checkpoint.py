"""Checkpoints of JAX models and of whole training runs.

One ``.npz`` file (no pickle) holds every array under a ``/``-joined path (``params/density/planes/0``,
``opt/mu/...``, ``state/mask`` ...) plus a JSON document under ``__meta__`` with the configs, the
schedule position, the sampler position and the run's logs. Files are written to a temporary name in
the same folder and renamed into place, so a killed writer never leaves a half file. A resumed run
continues bit-identically on the CPU (same batches, same keys, same compiled steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.atomic import atomic_path
from tensorf_common.config import ExperimentConfig
from tensorf_common.errors import CheckpointError

FORMAT = "tensorf-bench-jax"
VERSION = 1


def _path_str(path) -> str:
    parts = []
    for k in path:
        if hasattr(k, "key"):
            parts.append(str(k.key))
        elif hasattr(k, "idx"):
            parts.append(str(k.idx))
        elif hasattr(k, "name"):
            parts.append(str(k.name))
        else:  # pragma: no cover
            parts.append(str(k))
    return "/".join(parts)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix/path: array}`` for every leaf of a pytree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[f"{prefix}/{_path_str(path)}"] = np.asarray(leaf)
    return out


def unflatten(template, arrays: dict[str, np.ndarray], prefix: str, where: str):
    """Rebuild a pytree shaped like ``template`` (structure only; shapes come from the file)."""
    leaves = []
    for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = f"{prefix}/{_path_str(path)}"
        if name not in arrays:
            raise CheckpointError(f"{where}: missing array {name!r}")
        leaves.append(jnp.asarray(arrays[name]))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write arrays + JSON metadata atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **payload)
    return path


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path}: missing '__meta__' (not a {FORMAT} checkpoint)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: '__meta__' is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("version", -1)) != VERSION:
        raise CheckpointError(f"{path}: version {meta.get('version')} is not {VERSION}")
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def model_arrays(model) -> dict[str, np.ndarray]:
    arrays = flatten(model.params, "params")
    st = model.state
    arrays.update(
        {
            "state/aabb": np.asarray(st.aabb),
            "state/step_size": np.asarray(st.step_size),
            "state/mask": np.asarray(st.mask),
            "state/mask_aabb": np.asarray(st.mask_aabb),
        }
    )
    return arrays


def model_meta(model, cfg: Optional[ExperimentConfig] = None) -> dict:
    from tensorf_common.config import DataConfig, TrainConfig

    exp = cfg or ExperimentConfig(field=model.field_cfg, render=model.render_cfg, train=TrainConfig(), data=DataConfig())
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": exp.to_dict(),
        "near_far": list(model.near_far),
        "white_bg": bool(model.white_bg),
        "mask_grid_size": model.mask_grid_size,
        "grid_size": list(model.grid_size),
    }


def save_model(model, path: Path, cfg: Optional[ExperimentConfig] = None, extra: Optional[dict] = None) -> Path:
    meta = model_meta(model, cfg)
    meta["kind"] = "model"
    if extra:
        meta.update(extra)
    return write_npz(path, model_arrays(model), meta)


def model_from_arrays(arrays: dict, meta: dict, where: str):
    from .model import FieldState, TensoRF, init_params

    try:
        cfg = ExperimentConfig.from_dict(meta["config"])
    except KeyError:
        raise CheckpointError(f"{where}: '__meta__' has no 'config'") from None
    # the tree structure only (jax.eval_shape: no arrays are built, no per-op compilation)
    template = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg.field, [2, 2, 2]))
    params = unflatten(template, arrays, "params", where)
    try:
        state = FieldState(
            jnp.asarray(arrays["state/aabb"]),
            jnp.asarray(arrays["state/step_size"]),
            jnp.asarray(arrays["state/mask"]),
            jnp.asarray(arrays["state/mask_aabb"]),
        )
    except KeyError as exc:
        raise CheckpointError(f"{where}: missing array {exc.args[0]!r}") from None
    model = TensoRF(
        cfg.field, cfg.render, params, state, tuple(meta.get("near_far", (2.0, 6.0))), bool(meta.get("white_bg", True))
    )
    model.mask_grid_size = meta.get("mask_grid_size")
    _check_model_shapes(model, where)
    return model, cfg


def _check_model_shapes(model, where: str) -> None:
    """Every plane and line must agree with the grid size read from the lines."""
    from . import fields

    gs = model.grid_size
    cfg = model.field_cfg
    for name, comps in (("density", cfg.density_components), ("app", cfg.app_components)):
        grid = model.params[name]
        for k in range(3):
            want = fields.line_shape(gs, k, comps[k] if cfg.model == "VM" else comps[0])
            got = tuple(grid["lines"][k].shape)
            if got != want:
                raise CheckpointError(f"{where}: params/{name}/lines/{k} has shape {got}, expected {want}")
            if cfg.model == "VM":
                want = fields.plane_shape(gs, k, comps[k])
                got = tuple(grid["planes"][k].shape)
                if got != want:
                    raise CheckpointError(f"{where}: params/{name}/planes/{k} has shape {got}, expected {want}")


def load_model(path: Path):
    """``(model, config)`` from a model or trainer checkpoint."""
    arrays, meta = read_npz(path)
    return model_from_arrays(arrays, meta, str(path))


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


def save_trainer(trainer, path: Path) -> Path:
    import dataclasses

    from .training import ScaledState

    arrays = model_arrays(trainer.model)
    opt = trainer.opt_state
    if isinstance(opt, ScaledState):
        arrays["opt/loss_scale"] = np.asarray(opt.scale.scale)
        arrays["opt/loss_scale_fin_steps"] = np.asarray(opt.scale.fin_steps)
        opt = opt.adam
    arrays["opt/count"] = np.asarray(opt.count)
    arrays.update(flatten(opt.mu, "opt/mu"))
    arrays.update(flatten(opt.nu, "opt/nu"))
    sampler = dict(trainer.sampler.state_dict())
    bits = sampler.pop("pool_bits")
    if bits is not None:
        arrays["sampler/pool_bits"] = np.asarray(bits)
    meta = model_meta(trainer.model, trainer.cfg)
    meta.update(
        kind="trainer",
        schedule=trainer.sched.to_json(),
        sampler=sampler,
        history=[dataclasses.asdict(p) for p in trainer.history],
        events=trainer.events,
        compiles=trainer.compiles,
        setup_seconds=trainer.setup_seconds,
    )
    return write_npz(path, arrays, meta)


def load_trainer(path: Path, dataset, **trainer_kwargs):
    """Rebuild a :class:`jax_tensorf.training.Trainer` from a checkpoint, ready to ``run()`` on."""
    from .training import LogPoint, ScaledState, ScheduleState, Trainer, init_optimizer_state
    from tensorf_common.data import BatchSampler

    arrays, meta = read_npz(path)
    where = str(path)
    if meta.get("kind") != "trainer":
        raise CheckpointError(f"{where}: kind {meta.get('kind')!r} is a model, not a resumable training run")
    model, cfg = model_from_arrays(arrays, meta, where)
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.tc = cfg, cfg.train
    trainer.dataset = dataset
    trainer.train_split = dataset["train"]
    trainer.out_dir = trainer_kwargs.get("out_dir", Path(path).parent)
    trainer.log = trainer_kwargs.get("log", lambda s: None)
    trainer.progress = trainer_kwargs.get("progress", False)
    trainer._init_runtime()
    trainer.compiles = list(meta.get("compiles", []))
    trainer.history = [LogPoint(**p) for p in meta.get("history", [])]
    trainer.events = list(meta.get("events", []))
    trainer._compiled = {}
    trainer._pending_recompile = False
    trainer.sched = ScheduleState(**meta["schedule"])
    trainer.key = jax.random.PRNGKey(cfg.train.seed)
    trainer.setup_seconds = float(meta.get("setup_seconds", 0.0))
    trainer.model = model
    model.mesh = trainer.mesh
    template = jax.eval_shape(lambda: init_optimizer_state(trainer.adam, model.params, trainer.policy))
    adam_template = template.adam if isinstance(template, ScaledState) else template
    adam_state = adam_template._replace(
        count=jnp.asarray(arrays["opt/count"]),
        mu=unflatten(model.params, arrays, "opt/mu", where),
        nu=unflatten(model.params, arrays, "opt/nu", where),
    )
    if isinstance(template, ScaledState):
        if "opt/loss_scale" not in arrays:
            raise CheckpointError(f"{where}: missing array 'opt/loss_scale' for a loss-scaled (fp16) run")
        scale = template.scale.replace(
            scale=jnp.asarray(arrays["opt/loss_scale"]), fin_steps=jnp.asarray(arrays["opt/loss_scale_fin_steps"])
        )
        trainer.opt_state = ScaledState(adam_state, scale)
    else:
        trainer.opt_state = adam_state
    sampler_state: dict[str, Any] = dict(meta["sampler"])
    sampler_state["pool_bits"] = arrays.get("sampler/pool_bits")
    sampler = BatchSampler(trainer.train_split.n_rays, cfg.train.batch_size, cfg.train.seed)
    try:
        sampler.load_state_dict(sampler_state)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if sampler.universe != trainer.train_split.n_rays:
        raise CheckpointError(
            f"{where}: the run was trained on {sampler.universe} rays, this dataset has {trainer.train_split.n_rays}"
        )
    trainer.sampler = sampler
    return trainer
