"""Child processes of a report run: their environment, their output copied to a log, timeouts that
interrupt before they kill, and the most telling line of a failure."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from tensorf_bench.report.io import one_line

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRESS_PREFIX = "@@progress "
"""A child's output line that starts with this carries its progress as JSON (the rest of the line)."""


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment of a child: this one under the suite's allocator, headless matplotlib."""
    from tensorf_common.runtime import allocator_env

    env = allocator_env()
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def run_child(cmd: Sequence[str], log_path: Path, *, env: dict, timeout_s: float,
              on_line: Optional[Callable[[str], None]] = None, cwd: Path = REPO_ROOT) -> tuple[int, list[str]]:
    """Run ``cmd``, copying its output to ``log_path`` and to ``on_line``. Returns (exit code, last
    output lines). A timeout interrupts the child's whole process group (SIGINT), kills it if it has
    not ended :data:`INTERRUPT_GRACE_S` later, and returns exit code 124. Ctrl-C kills it and is
    re-raised."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
        log.flush()
        with _children_get_default_sigint() as preexec:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=env, cwd=cwd, start_new_session=True, errors="replace", preexec_fn=preexec)

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                s = line.rstrip("\n")
                if s.strip():
                    tail.append(s)
                    del tail[:-40]
                if on_line is not None:
                    try:
                        on_line(s)
                    except Exception:  # progress parsing never breaks a run
                        pass

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _interrupt_then_kill(proc)
            rc = 124
            tail.append(f"killed after the stage's {timeout_s:.0f} s time limit")
        except KeyboardInterrupt:
            _kill(proc)
            raise
        reader.join(timeout=10)
    return rc, tail


INTERRUPT_GRACE_S = 30.0
"""Seconds a timed-out child gets after SIGINT to finish (pytest then ends its session, so
pytest-benchmark still writes the JSON of the benchmarks that ran) before it is killed."""


@contextlib.contextmanager
def _children_get_default_sigint():
    """Make a child started inside this block take SIGINT's default action. A command started in
    the background by a non-interactive shell (``cmd &``, ``nohup``) ignores SIGINT and its
    children inherit that, so a timeout's SIGINT would do nothing and the child's partial results
    (pytest-benchmark's JSON) would be lost. On the main thread this process catches SIGINT for the
    moment of the spawn (a caught signal is reset to the default by ``exec``); elsewhere the child
    resets it itself (yields a ``preexec_fn``, which makes subprocess fork instead of vfork)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield None
    elif threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            yield None
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield _default_sigint


def _default_sigint() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_then_kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=INTERRUPT_GRACE_S)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def error_line(rc: int, tail: list[str]) -> str:
    """The most telling line of a failed child's output."""
    if rc < 0 or rc in (137, -9):
        return f"killed by signal {-rc if rc < 0 else 9} (out of memory?)"
    if rc == 124 and tail and "time limit" in tail[-1]:
        return one_line(tail[-1])
    pat = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b|^error: |^E +\w+Error")
    for line in reversed(tail):
        if pat.search(line.strip()):
            return one_line(line.strip().lstrip("E ").strip())
    return one_line(tail[-1]) if tail else f"exit code {rc}"

