"""Official TensoRF ``.th`` checkpoint files: safe reading, atomic writing, building their model;
and the files of training runs (``--resume``). This module reads and writes files: the dict layout
of a model is :meth:`torch_reference.model.TensorBase.checkpoint_dict` / ``load``, what a training
run's state holds is :meth:`torch_reference.training.Trainer.state_dict`.

The official file (``TensorBase.save``) is ``torch.save`` of::

    {'kwargs': get_kwargs(), 'state_dict': state_dict(),
     'alphaMask.shape': (1, 1, Z, Y, X), 'alphaMask.mask': np.packbits(mask.reshape(-1)),  # uint8 ndarray
     'alphaMask.aabb': (2, 3) tensor}                                                    # mask keys optional

Reading never runs arbitrary pickled code: ``torch.load(weights_only=True)`` with an explicit
allowlist of exactly the numpy globals a packbits array needs (``_reconstruct`` under its numpy 1 and
numpy 2 module names, ``ndarray``, ``dtype`` and the ``uint8`` dtype class). Anything else is refused
with a :class:`~tensorf_common.errors.CheckpointError` naming the file and the refused global.

Writing: by default the mask is stored as a torch ``uint8`` tensor holding the same packed bits, so
our files need no numpy globals at all; the official loader still reads them (``np.unpackbits``
accepts a CPU tensor). ``numpy_mask=True`` writes the official numpy array instead. Files are
written to a temporary file in the same folder and renamed into place.

A training run's file is an official model checkpoint whose extra ``'tensorf_bench'`` entry (the
official loader ignores it) holds ``kind: 'trainer'``, the config, Adam's state, the schedule
position, the sampler and jitter-generator state and the run's logs: plain data and tensors, so it
is read with ``weights_only=True`` like any other.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from tensorf_common.atomic import atomic_file
from tensorf_common.errors import CheckpointError

from .model import TensorBase, model_class

PathLike = Union[str, os.PathLike]

OFFICIAL_KWARGS = (
    "aabb",
    "gridSize",
    "density_n_comp",
    "appearance_n_comp",
    "app_dim",
    "density_shift",
    "alphaMask_thres",
    "distance_scale",
    "rayMarch_weight_thres",
    "fea2denseAct",
    "near_far",
    "step_ratio",
    "shadingMode",
    "pos_pe",
    "view_pe",
    "fea_pe",
    "featureC",
)
"""The keys of an official checkpoint's ``kwargs`` (no ``device``)."""

EXTRA_KEY = "tensorf_bench"
"""Optional extra entry of our files (training state for resuming); the official loader ignores it."""


def numpy_allowlist() -> list[tuple[Any, str]]:
    """(object, pickled name) pairs a ``np.packbits`` array needs under ``weights_only=True``."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    uint8_dtype_cls = type(np.dtype(np.uint8))
    return [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),  # files written with numpy 1.x
        (_reconstruct, "numpy._core.multiarray._reconstruct"),  # files written with numpy 2.x
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        (uint8_dtype_cls, f"{uint8_dtype_cls.__module__}.{uint8_dtype_cls.__qualname__}"),
    ]


_REFUSAL_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"but got <class '([^']+)'>"),
    re.compile(r"unrecognized function (.+?)(?: which belongs|$)", re.MULTILINE),
)


def _refused_globals(path: Path, message: str) -> list[str]:
    """The globals of ``path`` outside torch's defaults and our allowlist (best effort): the GLOBALs
    the file names, else the class or function the unpickler's message names."""
    allowed = {name for _, name in numpy_allowlist()}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        refused = [n for n in names if n not in allowed]
        if refused:
            return refused
    except Exception:  # noqa: BLE001 - older torch or a non-zip file: fall back to the message
        pass
    for pattern in _REFUSAL_PATTERNS:
        found = pattern.search(message)
        if found:
            return [found.group(1).strip()]
    return ["(unknown; see torch.load's message)"]


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a ``.th`` file safely and check its structure; returns the checkpoint dict.

    Raises CheckpointError (naming the file, and the refused global or the bad key) when the file is
    missing, unreadable, needs globals outside the allowlist, or is not an official checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(numpy_allowlist()):
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_globals(p, str(e))
        raise CheckpointError(
            f"{p}: refused to load: it needs global(s) outside the safe allowlist: {', '.join(refused)}"
        ) from None
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    _validate(p, ckpt)
    return ckpt


def _validate(p: Path, ckpt: Any) -> None:
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: expected a dict checkpoint, got {type(ckpt).__name__}")
    for key in ("kwargs", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{p}: missing key {key!r}")
    kwargs, sd = ckpt["kwargs"], ckpt["state_dict"]
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{p}: 'kwargs' must be a dict, got {type(kwargs).__name__}")
    missing = [k for k in ("aabb", "gridSize") if k not in kwargs]
    if missing:
        raise CheckpointError(f"{p}: 'kwargs' lacks {missing}")
    unknown = sorted(set(kwargs) - set(OFFICIAL_KWARGS) - {"device"})
    if unknown:
        raise CheckpointError(f"{p}: 'kwargs' has unknown keys {unknown}")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: 'state_dict' must map names to tensors")
    mask_keys = [k for k in ("alphaMask.shape", "alphaMask.mask", "alphaMask.aabb") if k in ckpt]
    if mask_keys and len(mask_keys) != 3:
        raise CheckpointError(f"{p}: incomplete alpha mask: has only {mask_keys}")
    if mask_keys:
        shape = ckpt["alphaMask.shape"]
        if not isinstance(shape, (tuple, list)) or len(shape) not in (3, 5) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise CheckpointError(f"{p}: 'alphaMask.shape' must be (1, 1, Z, Y, X), got {shape!r}")
        packed = ckpt["alphaMask.mask"]
        if isinstance(packed, torch.Tensor):
            ok = packed.dtype == torch.uint8 and packed.dim() == 1
        else:
            ok = isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.ndim == 1
        if not ok:
            raise CheckpointError(f"{p}: 'alphaMask.mask' must be a 1-D uint8 packbits array")
        need = (int(np.prod(shape)) + 7) // 8
        if packed.shape[0] < need:
            raise CheckpointError(f"{p}: 'alphaMask.mask' holds {packed.shape[0]} bytes, shape {tuple(shape)} needs {need}")
        box = ckpt["alphaMask.aabb"]
        if not isinstance(box, torch.Tensor) or box.numel() != 6:
            raise CheckpointError(f"{p}: 'alphaMask.aabb' must be a (2, 3) tensor")


def infer_model_name(state_dict: dict) -> str:
    """``TensorVMSplit`` if the state_dict has planes, ``TensorCP`` if it has only lines."""
    if "density_plane.0" in state_dict:
        return "TensorVMSplit"
    if "density_line.0" in state_dict:
        return "TensorCP"
    raise CheckpointError("state_dict has neither 'density_plane.0' nor 'density_line.0'")


def model_from_checkpoint(
    ckpt: dict, device: Union[str, torch.device] = "cpu", model_name: Optional[str] = None, source: str = "checkpoint"
) -> TensorBase:
    """Build the model a checkpoint dict describes (official ``Model(**kwargs); model.load(ckpt)``).

    ``model_name`` (``TensorVMSplit`` / ``TensorCP``) defaults to what the state_dict keys imply.
    The global torch RNG is left untouched (construction runs under ``fork_rng``).
    """
    try:
        name = model_name or infer_model_name(ckpt["state_dict"])
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    cls = model_class(name)
    kwargs = {k: v for k, v in ckpt["kwargs"].items() if k != "device"}
    with torch.random.fork_rng(devices=[]):
        try:
            model = cls(device=device, **kwargs)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: 'kwargs' do not build a {name}: {e}") from None
    model.load(ckpt, source=source)
    return model


def load_checkpoint(
    path: PathLike, device: Union[str, torch.device] = "cpu", model_name: Optional[str] = None
) -> TensorBase:
    """Read a ``.th`` file safely and build its model (see :func:`model_from_checkpoint`)."""
    return model_from_checkpoint(read_checkpoint(path, map_location="cpu"), device, model_name, source=str(path))


def checkpoint_dict(model: TensorBase, numpy_mask: bool = False, extra: Optional[dict] = None) -> dict:
    """The official checkpoint dict of ``model`` (:meth:`TensorBase.checkpoint_dict`), with ``extra``
    under ``'tensorf_bench'``."""
    ckpt = model.checkpoint_dict(numpy_mask=numpy_mask)
    if extra is not None:
        ckpt[EXTRA_KEY] = extra
    return ckpt


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, then rename it into place."""
    with atomic_file(path, fsync=True) as f:
        torch.save(obj, f)


def save_checkpoint(model: TensorBase, path: PathLike, numpy_mask: bool = False, extra: Optional[dict] = None) -> None:
    """Write the official checkpoint of ``model`` to ``path`` atomically.

    ``numpy_mask=True`` stores the mask as the official numpy packbits array; the default stores the
    same bytes as a torch uint8 tensor (no numpy globals needed to read). ``extra`` (plain data and
    tensors only, e.g. an optimizer state_dict and the iteration) is stored under ``'tensorf_bench'``.
    """
    atomic_torch_save(checkpoint_dict(model, numpy_mask=numpy_mask, extra=extra), path)


def resume(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[TensorBase, dict]:
    """Model and the ``extra`` training state of a checkpoint written with ``save_checkpoint(extra=...)``."""
    ckpt = read_checkpoint(path, map_location="cpu")
    return model_from_checkpoint(ckpt, device, source=str(path)), dict(ckpt.get(EXTRA_KEY, {}))


# ---------------------------------------------------------------------------------------------
# Training runs
# ---------------------------------------------------------------------------------------------


def save_training_state(path: PathLike, state: dict) -> Path:
    """Write a training run's state (:meth:`torch_reference.training.Trainer.state_dict`: an
    official checkpoint dict whose ``'tensorf_bench'`` entry holds the optimizer, schedule, sampler
    and logs) to ``path``, atomically."""
    if not isinstance(state.get(EXTRA_KEY), dict) or state[EXTRA_KEY].get("kind") != "trainer":
        raise ValueError(f"save_training_state: {path}: the state has no {EXTRA_KEY!r} entry of kind 'trainer'")
    atomic_torch_save(state, path)
    return Path(path)


def load_training_state(path: PathLike) -> dict:
    """The state of a training run saved by :func:`save_training_state`, read safely; a model file
    (no training state) is refused, naming the file."""
    ckpt = read_checkpoint(path, map_location="cpu")
    extra = ckpt.get(EXTRA_KEY)
    if not isinstance(extra, dict) or extra.get("kind") != "trainer":
        kind = extra.get("kind") if isinstance(extra, dict) else None
        raise CheckpointError(
            f"{path}: {EXTRA_KEY!r} kind {kind!r}: a model checkpoint, not a resumable training run"
        )
    return ckpt
