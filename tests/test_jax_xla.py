"""jax_tensorf.xla's host-memory helpers: dropping cached executables, and synchronous CPU dispatch
chosen only before the CPU client exists (checked in fresh interpreters, since pytest's has one)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from jax_tensorf.xla import DISPATCH_ENV, cpu_dispatch, prefer_synchronous_cpu_dispatch, release_host_memory


def test_release_host_memory_drops_cached_executables():
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    f(jnp.ones(3)).block_until_ready()
    assert f._cache_size() == 1
    release_host_memory()
    assert f._cache_size() == 0
    assert float(f(jnp.ones(3))[0]) == 3.0  # recompiles and still computes


def test_dispatch_choice_is_refused_once_the_backend_exists():
    jnp.zeros(1).block_until_ready()
    assert prefer_synchronous_cpu_dispatch() is False
    assert cpu_dispatch() in ("sync", "async")


_SCRIPT = """
import jax.numpy as jnp
from jax_tensorf.xla import cpu_dispatch, prefer_synchronous_cpu_dispatch
took = prefer_synchronous_cpu_dispatch()
assert float(jnp.arange(4.0).sum()) == 6.0
print(took, cpu_dispatch(), prefer_synchronous_cpu_dispatch())
"""


def _fresh(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != DISPATCH_ENV}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_fresh_process_runs_cpu_computations_synchronously():
    assert _fresh({}) == ["True", "sync", "False"]


def test_async_dispatch_can_be_kept():
    assert _fresh({DISPATCH_ENV: "async"}) == ["False", "async", "False"]
