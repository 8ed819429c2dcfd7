"""tensorf_common.interrupt: within the block a first SIGINT only sets the flag the training loops
read (no KeyboardInterrupt anywhere), the previous handler comes back after it, an ignored SIGINT
stays ignored, and a second SIGINT ends the process with status 130 even while the main thread is
inside a long C call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tensorf_common import interrupt

REPO = Path(__file__).resolve().parents[1]


def test_a_first_sigint_sets_the_flag_instead_of_raising(capfd, sigint_default):
    before = signal.getsignal(signal.SIGINT)
    with interrupt.stop_on_interrupt(message="stopping soon"):
        assert not interrupt.stop_requested()
        interrupt.raise_if_stop_requested("not yet")  # no request: nothing raised
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode, here
        for _ in range(1000):
            if interrupt.stop_requested():
                break
        assert interrupt.stop_requested()
        with pytest.raises(interrupt.TrainingInterrupted, match="kept at step 3") as info:
            interrupt.raise_if_stop_requested("kept at step 3")
        assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` lets it through
    assert signal.getsignal(signal.SIGINT) is before and not interrupt.stop_requested()
    assert "stopping soon" in capfd.readouterr().err


def test_nested_blocks_share_the_outer_state_and_an_ignored_sigint_stays_ignored(sigint_default):
    with interrupt.stop_on_interrupt():
        handler = signal.getsignal(signal.SIGINT)
        with interrupt.stop_on_interrupt():
            assert signal.getsignal(signal.SIGINT) is handler
        assert signal.getsignal(signal.SIGINT) is handler  # the inner block did not restore anything
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job (`cmd &`)
    try:
        with interrupt.stop_on_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("work", ["python", "c_call"])
def test_a_second_sigint_ends_the_process_with_130(work, tmp_path, sigint_default):
    """``c_call``: the main thread is in a long C call that never returns to the interpreter before
    the test's timeout (a key derivation of 10^9 rounds), as in an XLA compilation: Python's own
    handler cannot run there, the watcher of the wakeup pipe ends the process."""
    body = "hashlib.pbkdf2_hmac('sha256', b'x', b'y', 10**9)" if work == "c_call" else "time.sleep(600)"
    script = textwrap.dedent("""
        import hashlib, time
        from tensorf_common.interrupt import stop_on_interrupt
        with stop_on_interrupt(message="first interrupt"):
            print("ready", flush=True)
            BODY
        print("the block ended", flush=True)
    """).replace("BODY", body)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # the first one only asks: the process goes on
            proc.wait(timeout=1.0)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert rc == interrupt.EXIT_STATUS == 130, (rc, err)
    assert "the block ended" not in out and "interrupted twice" in err and "Traceback" not in err, err
