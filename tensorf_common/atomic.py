"""Atomic file writes: the one way the suite writes a file.

A writer fills a temporary file in the destination folder, which is renamed over the destination
only when the writer finished without an exception; a killed or failed write leaves the old file
(or nothing), never half a file. The result gets ordinary permissions (``0666 & ~umask``), not the
owner-only mode of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    ``suffix`` lets writers that choose a format from the file name (imageio, PIL) see the right
    extension. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a new temporary folder next to ``path``; on success it takes ``path``'s place (a folder
    already there is removed), on an exception it is removed. Readers see the old folder, or none,
    or the whole new one: never some of its files (e.g. the renders of an evaluation that failed
    half-way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():  # a non-empty folder cannot be renamed over: move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb", fsync: bool = False, **open_kwargs: Any) -> Iterator[IO]:
    """An open temporary file next to ``path`` (``mode`` "wb" or "w"); on success it replaces ``path``.

    ``fsync`` flushes the data to disk before the rename (checkpoints and model files).
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def write_bytes(path: PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_file(path, fsync=fsync) as f:
        f.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, fsync: bool = False) -> Path:
    """UTF-8, line endings written as they are in ``text``."""
    with atomic_file(path, "w", fsync=fsync, encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: PathLike, obj: Any, default: Optional[Callable[[Any], Any]] = None, indent: int = 1) -> Path:
    """JSON with numpy scalars/arrays and paths converted (or a custom ``default``)."""
    return write_text(path, json.dumps(obj, indent=indent, default=default or json_default) + "\n")


def clean_json(obj: Any) -> Any:
    """Replace non-finite floats by strings ("inf", "-inf", "nan") so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def write_strict_json(path: PathLike, obj: Any) -> Path:
    """Strict JSON (numpy values and paths converted, non-finite floats as strings, see
    :func:`clean_json`), written atomically."""
    text = json.dumps(clean_json(json.loads(json.dumps(obj, default=json_default))), indent=1, allow_nan=False)
    return write_text(path, text + "\n")


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy values and paths."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
