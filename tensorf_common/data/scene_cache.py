"""Where datasets come from: a given folder, or the built-in procedural scene rendered once into a
cache folder (``$TENSORF_BENCH_CACHE`` or ``~/.cache/tensorf-bench``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DatasetError

PathLike = Union[str, os.PathLike]


def cache_root() -> Path:
    """``$TENSORF_BENCH_CACHE`` if set, else ``~/.cache/tensorf-bench``."""
    env = os.environ.get("TENSORF_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tensorf-bench"


def scene_cache_dir(scene_kwargs: Optional[Mapping[str, Any]] = None) -> Path:
    """Where the procedural scene with these options lives: ``cache_root()/scene-<hash>``.

    The hash covers every option of :func:`tensorf_common.scene.make_scene` (defaults filled in)
    and the renderer's version, so a change to either gives a new folder.
    """
    from ..scene import SCENE_VERSION, scene_params

    params = scene_params(**dict(scene_kwargs or {}))
    blob = json.dumps({"version": SCENE_VERSION, **params}, sort_keys=True).encode()
    return cache_root() / f"scene-{hashlib.sha256(blob).hexdigest()[:12]}"


def resolve_data_dir(path: Optional[PathLike] = None, *, scene_kwargs: Optional[Mapping[str, Any]] = None) -> Path:
    """The dataset folder to use.

    A given ``path`` must be an existing directory (else :class:`DatasetError`). ``None`` means the
    built-in procedural scene (:func:`tensorf_common.scene.make_scene` with ``scene_kwargs`` over
    its defaults), generated once into :func:`scene_cache_dir`. Generation renders into a temporary
    sibling folder that is renamed into place, so a killed generation never leaves a half scene,
    and two processes racing both end up with the same complete folder.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DatasetError(f"{p}: dataset directory does not exist")
        if not p.is_dir():
            raise DatasetError(f"{p}: not a directory")
        return p
    from ..scene import SCENE_MARKER, make_scene

    target = scene_cache_dir(scene_kwargs)
    if (target / SCENE_MARKER).is_file():
        return target
    if target.exists():  # a folder without the marker: not ours or damaged; replace it
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        make_scene(target, **dict(scene_kwargs or {}))
    except DatasetError:
        # Lost a race: another process renamed its complete scene into place first.
        if (target / SCENE_MARKER).is_file():
            return target
        raise
    return target
