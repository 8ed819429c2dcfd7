"""Progress of a report run: one tqdm bar over the whole run, in estimated seconds of work."""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional


class Progress:
    """One tqdm bar over the whole run, in estimated seconds of work.

    Stages report a fraction done and a short text; a ticker thread moves the bar with the elapsed
    time inside the current stage (capped below the stage's estimate until it ends), so the bar and
    its time-left estimate keep moving during long subprocesses. Where stderr is not a terminal (a
    log file) there is no bar: the ticker writes one plain status line every :data:`LOG_EVERY_S`
    seconds, and only when the status changed."""

    LOG_EVERY_S = 30.0

    def __init__(self, total_s: float, enabled: bool = True, tty: Optional[bool] = None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.total_s = total_s
        self.bar = None
        self._t0 = time.perf_counter()
        self._last_line = ""
        self._lock = threading.Lock()
        self._done = 0.0
        self._stage = ("", 1.0, time.perf_counter())
        self._fraction: Optional[float] = None
        self._text = ""
        self._stop = threading.Event()
        if enabled:
            if self.tty:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=round(total_s), unit="s", dynamic_ncols=True, file=sys.stderr,
                                mininterval=0.5,
                                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est. s [{elapsed}<{remaining}]")
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def start_stage(self, name: str, estimate_s: float) -> None:
        with self._lock:
            self._stage = (name, max(1.0, estimate_s), time.perf_counter())
            self._fraction = None
            self._text = ""

    def update(self, fraction: Optional[float] = None, text: Optional[str] = None) -> None:
        with self._lock:
            if fraction is not None:
                self._fraction = max(0.0, min(1.0, fraction))
            if text is not None:
                self._text = text

    def end_stage(self, line: str) -> None:
        with self._lock:
            self._done += self._stage[1]
        self.write(line)

    def skip_stage(self, estimate_s: float, line: str) -> None:
        with self._lock:
            self._done += estimate_s
        self.write(line)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def _position(self) -> tuple[float, str]:
        with self._lock:
            name, est, t0 = self._stage
            by_time = min(0.9, (time.perf_counter() - t0) / est)
            # a reported fraction (e.g. tests done) moves the bar ahead of the clock, never behind it
            frac = by_time if self._fraction is None else max(self._fraction, by_time)
            return self._done + frac * est, (f"{name}: {self._text}" if self._text else name)

    def status_line(self) -> str:
        """The plain status a log gets: the stage's text, the run's elapsed time and estimate."""
        pos, desc = self._position()
        elapsed = time.perf_counter() - self._t0
        return f"  ... {desc} [{elapsed:.0f} s elapsed, about {pos:.0f} of {self.total_s:.0f} est. s done]"

    def _tick(self) -> None:
        every = 1.0 if self.tty else self.LOG_EVERY_S
        while not self._stop.wait(every):
            if self.bar is not None:
                pos, desc = self._position()
                self.bar.n = min(pos, self.bar.total or pos)
                self.bar.set_description_str(desc[:60], refresh=False)
                self.bar.refresh()
            else:
                self._log_status()

    def _log_status(self) -> None:
        _, desc = self._position()
        if desc != self._last_line:  # a stage that reports nothing new adds no line
            self._last_line = desc
            self.write(self.status_line())

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.refresh()
            self.bar.close()

