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
    its time-left estimate keep moving during long subprocesses."""

    def __init__(self, total_s: float, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self._lock = threading.Lock()
        self._done = 0.0
        self._stage = ("", 1.0, time.perf_counter())
        self._fraction: Optional[float] = None
        self._text = ""
        self._stop = threading.Event()
        if enabled:
            from tqdm.auto import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=round(total_s), unit="s", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5 if tty else 30.0,
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

    def _tick(self) -> None:
        # a terminal gets a live bar; a log file (no tty) a line every 30 s
        every = 1.0 if sys.stderr.isatty() else 30.0
        while not self._stop.wait(every):
            pos, desc = self._position()
            if self.bar is not None:
                self.bar.n = min(pos, self.bar.total or pos)
                self.bar.set_description_str(desc[:60], refresh=False)
                self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.refresh()
            self.bar.close()

