"""A stand-in for the ``time`` module of the trainers, for schedule tests that must not depend on how
fast the machine is."""

from __future__ import annotations


class FakeClock:
    """``time`` stand-in whose ``perf_counter`` advances ``tick`` seconds per call."""

    def __init__(self, tick: float, start: float = 1000.0):
        self.t, self.tick = start, tick

    def perf_counter(self) -> float:
        self.t += self.tick
        return self.t
