"""Checkpoint files of JAX models and of whole training runs (this module reads and writes files;
what a training run's state holds is :meth:`jax_tensorf.training.Trainer.state_dict`).

One ``.npz`` file (no pickle) holds every array under a ``/``-joined path (``params/density/planes/0``,
``opt/mu/...``, ``state/mask`` ...) plus a JSON document under ``__meta__`` with the configs, the
schedule position, the sampler position and the run's logs. Files are written to a temporary name in
the same folder and renamed into place, so a killed writer never leaves a half file. A resumed run
continues bit-identically on the CPU (same batches, same keys, same compiled steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.atomic import atomic_path
from tensorf_common.config import ExperimentConfig
from tensorf_common.errors import CheckpointError
from tensorf_common.geometry import BLENDER_NEAR_FAR

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
        cfg.field, cfg.render, params, state, tuple(meta.get("near_far", BLENDER_NEAR_FAR)), bool(meta.get("white_bg", True))
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


def save_checkpoint(path: Path, state: dict) -> Path:
    """Write a training run's state (``jax_tensorf.training.Trainer.state_dict()``: ``{"arrays",
    "meta"}``) to ``path``, atomically."""
    return write_npz(path, state["arrays"], state["meta"])


def load_checkpoint(path: Path) -> dict:
    """The state of a training run saved by :func:`save_checkpoint` (``{"arrays", "meta"}``);
    a model file is refused, naming the file."""
    arrays, meta = read_npz(path)
    if meta.get("kind") != "trainer":
        raise CheckpointError(f"{path}: kind {meta.get('kind')!r} is a model, not a resumable training run")
    return {"arrays": arrays, "meta": meta}
