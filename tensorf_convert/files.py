"""Model files: the framework-neutral safetensors + JSON format, official ``.th`` and JAX ``.npz``.

**safetensors + JSON** (``model.safetensors`` and ``model.json`` beside it):

- tensors: the official ``state_dict`` keys and layout (``density_plane.0`` (1, C, H, W), ...), so
  ``safetensors.torch.load_file`` feeds ``load_state_dict`` directly and JAX readers convert with the
  key table; plus ``alphaMask.mask`` ((Z, Y, X) uint8 0/1, unpacked) and ``alphaMask.aabb`` (2, 3)
  when the model has a mask;
- config: a JSON document ``{"format", "version", "model_name", "kwargs" (official constructor
  kwargs), "extra" (render config, background)}``, stored both in the safetensors header metadata
  (key ``tensorf_bench``; authoritative) and in the sidecar ``.json`` (for people and for tools that
  do not read safetensors headers; read only when the header has none).

Readers: ``safetensors.numpy`` (default), ``safetensors.torch`` and ``safetensors.flax`` all give the
same bits (:func:`read_safetensors_tensors`).

**Official ``.th``**: read with :func:`torch_reference.checkpoint.read_checkpoint` (``weights_only``
and an explicit numpy allowlist: no pickled code runs), written with the official dict layout.

**JAX ``.npz``**: :mod:`jax_tensorf.checkpoint` model (or trainer) checkpoints.

Every writer writes a temporary file in the target folder and renames it into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np

from tensorf_common.atomic import write_bytes
from tensorf_common.errors import CheckpointError, ConversionError

from .model import PortableModel

PathLike = Union[str, os.PathLike]
FileFormat = Literal["th", "safetensors", "npz"]

FORMAT = "tensorf-bench-safetensors"
VERSION = 1
METADATA_KEY = "tensorf_bench"
MASK_KEY = "alphaMask.mask"
MASK_AABB_KEY = "alphaMask.aabb"

SUFFIXES: dict[str, FileFormat] = {".th": "th", ".pth": "th", ".safetensors": "safetensors", ".npz": "npz"}
"""File suffix -> format."""
FORMAT_NAMES: dict[str, str] = {
    "th": "official .th",
    "safetensors": "safetensors + JSON",
    "npz": "JAX .npz checkpoint",
}


def format_of(path: PathLike, override: Optional[str] = None) -> FileFormat:
    """The format named by ``override`` or by the file suffix; ConversionError when neither tells."""
    if override is not None:
        if override not in FORMAT_NAMES:
            raise ConversionError(f"format: expected one of {sorted(FORMAT_NAMES)}, got {override!r}")
        return override  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ConversionError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
            f"use one of {sorted(SUFFIXES)} or name the format ({', '.join(FORMAT_NAMES)})"
        )
    return SUFFIXES[suffix]


def config_path(path: PathLike) -> Path:
    """The JSON sidecar of a safetensors file: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")


# ---------------------------------------------------------------------------------------------
# safetensors + JSON
# ---------------------------------------------------------------------------------------------


def config_document(pm: PortableModel) -> dict[str, Any]:
    """The JSON config of a model (what the header metadata and the sidecar hold)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_name": pm.model_name,
        "kwargs": pm.kwargs,
        "alpha_mask": None if pm.alpha_mask is None else {"shape_zyx": list(pm.alpha_mask.shape)},
        "extra": pm.extra,
    }


def safetensors_arrays(pm: PortableModel) -> dict[str, np.ndarray]:
    """The tensors of the file: the state_dict plus the unpacked mask and its box."""
    arrays = {k: np.ascontiguousarray(v) for k, v in pm.state_dict.items()}
    if pm.alpha_mask is not None:
        arrays[MASK_KEY] = np.ascontiguousarray(pm.alpha_mask.astype(np.uint8))
        arrays[MASK_AABB_KEY] = np.ascontiguousarray(np.asarray(pm.mask_aabb, np.float32))
    return arrays


def write_safetensors(pm: PortableModel, path: PathLike) -> Path:
    """Write ``path`` (safetensors, config in the header) and its JSON sidecar, both atomically."""
    from safetensors.numpy import save

    pm.validate()
    path = Path(path)
    doc = json.dumps(config_document(pm), indent=2, sort_keys=True)
    data = save(safetensors_arrays(pm), metadata={METADATA_KEY: doc})
    write_bytes(config_path(path), (doc + "\n").encode("utf-8"), fsync=True)
    return write_bytes(path, data, fsync=True)


def _read_config(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any unreadable header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    text = meta.get(METADATA_KEY)
    where = f"{path} (header metadata {METADATA_KEY!r})"
    if text is None:
        side = config_path(path)
        if not side.is_file():
            raise CheckpointError(f"{path}: no {METADATA_KEY!r} header metadata and no config file {side.name}")
        text, where = side.read_text(encoding="utf-8"), str(side)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{where}: 'format' is {doc.get('format') if isinstance(doc, dict) else None!r}, not {FORMAT!r}")
    if int(doc.get("version", -1)) != VERSION:
        raise CheckpointError(f"{where}: version {doc.get('version')!r} is not {VERSION}")
    for key in ("model_name", "kwargs"):
        if key not in doc:
            raise CheckpointError(f"{where}: missing {key!r}")
    return doc


def read_safetensors_tensors(path: PathLike, framework: Literal["numpy", "torch", "flax"] = "numpy") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, config)``: the file's tensors as numpy arrays, torch tensors or jax arrays (read
    with ``safetensors.numpy`` / ``.torch`` / ``.flax``) and its JSON config."""
    path = Path(path)
    _require_file(path)
    doc = _read_config(path)
    try:
        if framework == "numpy":
            from safetensors.numpy import load_file
        elif framework == "torch":
            from safetensors.torch import load_file  # type: ignore[no-redef]
        elif framework == "flax":
            from safetensors.flax import load_file  # type: ignore[no-redef]
        else:
            raise ConversionError(f"framework: expected numpy, torch or flax, got {framework!r}")
        tensors = load_file(str(path))
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read tensors ({type(exc).__name__}: {exc})") from None
    return tensors, doc


def read_safetensors(path: PathLike, framework: Literal["numpy", "torch", "flax"] = "numpy") -> PortableModel:
    """A :class:`PortableModel` from a safetensors + JSON file (checked against the key table)."""
    from .state_dict import to_numpy

    tensors, doc = read_safetensors_tensors(path, framework)
    arrays = {k: to_numpy(v) for k, v in tensors.items()}
    mask = arrays.pop(MASK_KEY, None)
    mask_aabb = arrays.pop(MASK_AABB_KEY, None)
    try:
        pm = PortableModel(
            str(doc["model_name"]),
            dict(doc["kwargs"]),
            arrays,
            None if mask is None else mask.astype(bool),
            mask_aabb,
            dict(doc.get("extra") or {}),
        )
        return pm.validate(str(path))
    except ConversionError as exc:
        msg = str(exc)
        raise ConversionError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def load_torch_model(path: PathLike, device: Any = "cpu") -> Any:
    """A torch_reference model from a safetensors file (read with ``safetensors.torch``; the key table
    checks every key and shape before ``load_state_dict``)."""
    from .model import portable_to_torch

    return portable_to_torch(read_safetensors(path, "torch"), device)


def load_jax_model(path: PathLike, render_cfg: Any = None, white_bg: Optional[bool] = None) -> Any:
    """A :class:`jax_tensorf.model.TensoRF` from a safetensors file (read with ``safetensors.flax``)."""
    from .model import portable_to_jax

    return portable_to_jax(read_safetensors(path, "flax"), render_cfg, white_bg)


# ---------------------------------------------------------------------------------------------
# Official .th
# ---------------------------------------------------------------------------------------------


def read_official(path: PathLike, model_name: Optional[str] = None) -> PortableModel:
    """An official ``.th`` checkpoint, read safely (see :mod:`torch_reference.checkpoint`)."""
    from tensorf_common.torch_files import check_torch_file
    from torch_reference.checkpoint import read_checkpoint

    from .model import portable_from_official

    _require_file(Path(path))
    check_torch_file(path)  # an empty, truncated or foreign file, said plainly (torch.load's errors are not)
    ckpt = read_checkpoint(path, map_location="cpu")
    return portable_from_official(ckpt, model_name, source=str(path))


def write_official(pm: PortableModel, path: PathLike, numpy_mask: bool = False) -> Path:
    """Write the official checkpoint dict atomically (the mask as a torch uint8 tensor of packed bits,
    or with ``numpy_mask`` the official numpy array; the official loader reads both)."""
    from torch_reference.checkpoint import atomic_torch_save

    from .model import portable_to_official

    pm.validate()
    atomic_torch_save(portable_to_official(pm, numpy_mask=numpy_mask), path)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# JAX .npz
# ---------------------------------------------------------------------------------------------


def read_jax(path: PathLike) -> PortableModel:
    """A :mod:`jax_tensorf.checkpoint` model or trainer checkpoint (the model part)."""
    from jax_tensorf.checkpoint import load_model

    from .model import portable_from_jax

    model, _ = load_model(Path(path))
    return portable_from_jax(model)


def write_jax(pm: PortableModel, path: PathLike) -> Path:
    """Write a :mod:`jax_tensorf.checkpoint` model checkpoint (atomic)."""
    from jax_tensorf.checkpoint import save_model

    from .model import portable_to_jax

    return save_model(portable_to_jax(pm), Path(path))


# ---------------------------------------------------------------------------------------------
# Any format
# ---------------------------------------------------------------------------------------------


def read_model(path: PathLike, fmt: Optional[str] = None) -> PortableModel:
    """Read any supported file (format from ``fmt`` or the suffix)."""
    path = Path(path)
    kind = format_of(path, fmt)
    _require_file(path)
    if kind == "th":
        return read_official(path)
    if kind == "safetensors":
        return read_safetensors(path)
    return read_jax(path)


def load_jax_model_and_config(path: PathLike) -> tuple[Any, Any]:
    """``(jax model, ExperimentConfig)`` to evaluate or render, from any model file: a JAX ``.npz``
    (model or trainer checkpoint) as it is; a ``.safetensors`` or official ``.th`` converted (its
    field and render settings; data: its background and near/far at full resolution, since the
    file does not record the training's downsample). A suffix that names no format is read as .npz."""
    from tensorf_common.config import DataConfig, ExperimentConfig

    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower(), "npz")
    if kind == "npz":
        from jax_tensorf.checkpoint import load_model

        return load_model(path)
    from .model import portable_to_jax

    pm = read_model(path, kind)
    model = portable_to_jax(pm)
    data = DataConfig(white_bg=model.white_bg, near_far=tuple(float(x) for x in model.near_far))
    return model, ExperimentConfig(field=model.field_cfg, render=model.render_cfg, data=data)


def write_model(pm: PortableModel, path: PathLike, fmt: Optional[str] = None, *, numpy_mask: bool = False) -> Path:
    """Write any supported format (from ``fmt`` or the suffix)."""
    kind = format_of(path, fmt)
    if kind == "th":
        return write_official(pm, path, numpy_mask=numpy_mask)
    if kind == "safetensors":
        return write_safetensors(pm, path)
    return write_jax(pm, path)


def convert_file(
    src: PathLike,
    dst: PathLike,
    src_format: Optional[str] = None,
    dst_format: Optional[str] = None,
    *,
    overwrite: bool = False,
    numpy_mask: bool = False,
) -> PortableModel:
    """Read ``src`` and write ``dst`` (formats from the suffixes unless named). Returns the model."""
    src, dst = Path(src), Path(dst)
    format_of(src, src_format)
    outputs = [dst]
    if format_of(dst, dst_format) == "safetensors":
        if config_path(dst).resolve() == dst.resolve():
            raise ConversionError(f"{dst}: a .safetensors output's JSON config would be the output itself")
        outputs.append(config_path(dst))
    for out in outputs:
        if src.resolve() == out.resolve():
            raise ConversionError(f"{out}: the output would overwrite the input")
        if out.exists() and not overwrite:
            what = "" if out == dst else f" (the JSON config written beside {dst.name})"
            raise ConversionError(f"{out}: already exists{what} (use --overwrite)")
    pm = read_model(src, src_format)
    write_model(pm, dst, dst_format, numpy_mask=numpy_mask)
    return pm


__all__ = [
    "FORMAT",
    "VERSION",
    "SUFFIXES",
    "FORMAT_NAMES",
    "format_of",
    "config_path",
    "config_document",
    "safetensors_arrays",
    "write_safetensors",
    "read_safetensors_tensors",
    "read_safetensors",
    "load_torch_model",
    "load_jax_model",
    "read_official",
    "write_official",
    "read_jax",
    "write_jax",
    "read_model",
    "load_jax_model_and_config",
    "write_model",
    "convert_file",
]
