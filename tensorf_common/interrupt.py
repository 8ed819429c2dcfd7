"""Ctrl-C during training: stop between steps, keep the run, exit 130.

Python's default SIGINT handler raises ``KeyboardInterrupt`` in whatever Python code the main thread
runs next, and during training that is often a callback of JAX's C++ dispatch (e.g. the
``__new__`` of optax's namedtuple states while a compiled step's outputs are unflattened). An
exception there is either swallowed by the C++ code (the interrupt is lost and training goes on)
or unwinds it half-way through a dispatch (the process then died with SIGSEGV at exit). So within
:func:`stop_on_interrupt` the first SIGINT only sets a flag: the training loop reads it between
steps (:func:`stop_requested`), stops, the run writes its checkpoint (atomically) and raises
:class:`TrainingInterrupted`, which the CLI turns into exit status 130. A second SIGINT ends the
process at once with status 130 (``os._exit``: files already written are whole; an atomic write in
progress leaves its hidden temporary file, never a half file under the real name).

A trainer's loop needs only ``if stop_requested(): break`` (and a note that it stopped early); the
run function that owns the checkpoint calls :func:`raise_if_stop_requested` after writing it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from typing import Callable, Iterator, TypeVar

EXIT_STATUS = 130
"""Exit status of an interrupted command (128 + SIGINT, what shells report for Ctrl-C)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after keeping its state; the message says where and how to go on.
    A ``KeyboardInterrupt`` so that ``except Exception`` blocks let it through."""


class _State:
    depth = 0
    """Nesting of :func:`stop_on_interrupt` blocks (only the outermost installs the handler)."""
    signals = 0
    """SIGINTs seen by the handler since the outermost block was entered."""
    message = ""


_state = _State()


def stop_requested() -> bool:
    """True once a Ctrl-C asked the running training to stop (see :func:`stop_on_interrupt`)."""
    return _state.signals > 0


def raise_if_stop_requested(message: str) -> None:
    """Raise :class:`TrainingInterrupted` with ``message`` if a Ctrl-C asked to stop."""
    if stop_requested():
        raise TrainingInterrupted(message)


def _abort() -> None:
    os.write(2, b"\nerror: interrupted twice; stopped at once\n")
    os._exit(EXIT_STATUS)


def _handler(signum, frame) -> None:
    _state.signals += 1
    if _state.signals > 1:
        _abort()
    if _state.message:
        os.write(2, ("\n" + _state.message + "\n").encode())


@contextlib.contextmanager
def _immediate_second_interrupt() -> Iterator[None]:
    """Make a second SIGINT end the process even while the main thread is inside a long C call
    (an XLA compilation, a step on the device), where Python handlers do not run: the C-level
    handler writes every signal to a wakeup pipe that a watcher thread reads."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not possible here: the Python handler still aborts, later
        os.close(r)
        os.close(w)
        yield
        return

    def watch() -> None:
        seen = 0
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            seen += data.count(bytes([signal.SIGINT]))
            if seen > 1:
                _abort()

    thread = threading.Thread(target=watch, name="sigint-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        os.close(w)  # the watcher reads end-of-file and returns
        thread.join(timeout=5)
        os.close(r)


@contextlib.contextmanager
def stop_on_interrupt(
    message: str = "interrupt: stopping after the current step and keeping the run (Ctrl-C again to stop at once)",
) -> Iterator[None]:
    """Within the block a first SIGINT sets :func:`stop_requested` (and prints ``message``); a
    second ends the process with status 130. The previous handler comes back at the end. Nested
    blocks share the outermost one's state. Off the main thread, or where SIGINT is ignored (a
    background job), nothing changes."""
    if _state.depth:
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    _state.depth, _state.signals, _state.message = 1, 0, message
    signal.signal(signal.SIGINT, _handler)
    try:
        with _immediate_second_interrupt():
            yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state.depth, _state.signals = 0, 0


F = TypeVar("F", bound=Callable)


def stops_on_interrupt(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`stop_on_interrupt`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with stop_on_interrupt():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = [
    "EXIT_STATUS",
    "TrainingInterrupted",
    "raise_if_stop_requested",
    "stop_on_interrupt",
    "stop_requested",
    "stops_on_interrupt",
]
