"""The folders commands write into: a training run's RUN_DIR and an evaluation's output folder.

Nothing is overwritten without being asked, and a failed command leaves no empty folder it created:

* ``train --out RUN_DIR``: a folder that already holds a run is refused unless ``--resume``
  (continue it) or ``--overwrite`` (its files are deleted first, so no stale evaluation sits beside
  the new model); a non-empty folder that holds no run is refused either way (``--overwrite``
  deletes only runs). A run that fails before writing a checkpoint removes the folder it created.
* ``eval --out DIR``: written whole or not at all (:func:`tensorf_common.atomic.atomic_dir`); an
  existing folder is replaced only when it holds an evaluation (``metrics.json``).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from tensorf_common.atomic import atomic_dir
from tensorf_common.config import ConfigError
from tensorf_common.evaluation import METRICS_JSON

RUN_MARKERS = ("checkpoint.npz", "model.npz", "checkpoint.th", "model.th", "run.json")
"""Files whose presence (or a temporary file of one, ``.checkpoint.npz.*.tmp``) makes a folder a run."""


def run_files(folder: Path) -> list[str]:
    """The names in ``folder`` that show it holds a training run (see :data:`RUN_MARKERS`)."""
    names = sorted(p.name for p in folder.iterdir())
    return [n for n in names if n in RUN_MARKERS or any(n.startswith(f".{m}.") for m in RUN_MARKERS)]


def check_run_folder(out: Path, *, resume: bool, overwrite: bool, checkpoint: str = "checkpoint.npz") -> None:
    """Refuse ``out`` as a new run's folder if it holds files, unless ``overwrite`` and they are a
    run's, which are then deleted. ``resume`` needs ``out/<checkpoint>`` (the framework's file)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: give one (continue the run in --out, or replace it)")
    if resume:
        if not (out / checkpoint).is_file():
            raise ConfigError(f"--resume: {out}/{checkpoint} does not exist")
        return
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    if not any(out.iterdir()):
        return
    found = run_files(out)
    if not found:
        raise ConfigError(f"--out: {out} is not empty and holds no run; choose a new or an empty folder")
    if not overwrite:
        raise ConfigError(
            f"--out: {out} already holds a run ({', '.join(found)}); continue it with --resume, "
            "or replace it with --overwrite"
        )
    for p in out.iterdir():  # the old run's files, all of them: none may be taken for the new run's
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def run_folder(out: Path, *, resume: bool = False, overwrite: bool = False, checkpoint: str = "checkpoint.npz") -> Iterator[Path]:
    """:func:`check_run_folder`, then the block; if the block fails (Ctrl-C included) and the folder
    did not exist before and holds no run (no checkpoint, model or run.json), it is removed."""
    out = Path(out)
    check_run_folder(out, resume=resume, overwrite=overwrite, checkpoint=checkpoint)
    with removed_on_failure(out, existed=out.exists()):
        yield out


@contextlib.contextmanager
def removed_on_failure(out: Path, existed: bool) -> Iterator[Path]:
    """The block; if it fails and ``out`` did not exist before it (``existed``) and holds no run,
    ``out`` is removed: a folder this run created and left without a run in it (at most the
    TensorBoard events of a failed set-up) would only block the next attempt with the same --out."""
    out = Path(out)
    try:
        yield out
    except BaseException:
        if not existed and out.is_dir() and not run_files(out):
            shutil.rmtree(out)
        raise


@contextlib.contextmanager
def evaluation_folder(out: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``out`` when the block succeeds (a failed evaluation leaves
    no renders). An existing ``out`` is replaced only if it is empty or holds an evaluation."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out: {out} is a file, not a folder")
        if any(out.iterdir()) and not (out / METRICS_JSON).is_file():
            raise ConfigError(f"--out: {out} holds files but no evaluation ({METRICS_JSON}); choose a new folder")
    with atomic_dir(out) as tmp:
        yield tmp
