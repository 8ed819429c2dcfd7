"""Atomic files and stage records of a report run.

A report run folder (RUN_DIR) holds one JSON record per finished stage in ``stages/<name>.json``.
Every file is written to a temporary file in the same folder and renamed into place, so an
interrupted run never leaves a half-written record: a stage either has its record or it does not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from tensorf_common.atomic import clean_json  # noqa: F401 - re-exported for the report modules
from tensorf_common.atomic import write_strict_json as atomic_write_json

PathLike = Union[str, os.PathLike]

STAGES_DIR = "stages"
STATUSES = ("ok", "failed", "skipped")


def read_json(path: PathLike, default: Any = None) -> Any:
    p = Path(path)
    if not p.is_file():
        return default
    return json.loads(p.read_text(encoding="utf-8"))


def one_line(text: Any, limit: int = 300) -> str:
    """The first non-empty line of an error message, shortened."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def stage_file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".json"


@dataclass
class StageRecord:
    """The outcome of one stage of a report run."""

    name: str
    kind: str
    """machine, data, bench, quality, parity."""
    status: str
    """ok, failed or skipped."""
    error: Optional[str] = None
    """One line, for failed (and skipped) stages."""
    seconds: float = 0.0
    started: Optional[str] = None
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"stage {self.name}: status must be one of {STATUSES}, got {self.status!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> "StageRecord":
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(StageRecord)}
        return StageRecord(**{k: v for k, v in d.items() if k in names})


def write_stage(run_dir: PathLike, record: StageRecord) -> Path:
    return atomic_write_json(Path(run_dir) / STAGES_DIR / stage_file_name(record.name), record.to_json())


def read_stage(run_dir: PathLike, name: str) -> Optional[StageRecord]:
    d = read_json(Path(run_dir) / STAGES_DIR / stage_file_name(name))
    return None if d is None else StageRecord.from_json(d)


def read_stages(run_dir: PathLike) -> dict[str, StageRecord]:
    """Every stage record of a run, by name (unreadable records are reported as failed)."""
    out: dict[str, StageRecord] = {}
    folder = Path(run_dir) / STAGES_DIR
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.json")):
        try:
            rec = StageRecord.from_json(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            rec = StageRecord(name=p.stem, kind="unknown", status="failed", error=f"unreadable stage record: {one_line(exc)}")
        out[rec.name] = rec
    return out
