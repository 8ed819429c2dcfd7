"""jax_tensorf.xla's host-memory helpers: dropping cached executables, and synchronous CPU dispatch
chosen only before the CPU client exists (checked in fresh interpreters, since pytest's has one);
the memory a device offers one-off work, chunk sizes from it, and the exact fusion barrier."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.xla import (
    DISPATCH_ENV,
    HOST_CHUNK_CAP_BYTES,
    chunk_items,
    cpu_dispatch,
    device_memory_available,
    fixed_chunk,
    fusion_barrier,
    prefer_synchronous_cpu_dispatch,
    release_host_memory,
)


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
import numpy as np
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


def test_device_memory_on_the_cpu_is_a_capped_share_of_available_ram():
    from tensorf_common.runtime import available_memory_bytes, peak_rss_bytes

    assert jax.devices()[0].platform == "cpu"
    assert available_memory_bytes() > 0 and peak_rss_bytes() > 0
    assert 0 < device_memory_available() <= HOST_CHUNK_CAP_BYTES


class _FakeAccelerator:
    platform = "gpu"

    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        return self._stats


def test_device_memory_on_an_accelerator_is_its_allocators_free_bytes():
    assert device_memory_available(_FakeAccelerator({"bytes_limit": 100 << 30, "bytes_in_use": 30 << 30})) == 70 << 30
    assert device_memory_available(_FakeAccelerator({"bytes_limit": 1 << 30, "bytes_in_use": 2 << 30})) == 0
    # without statistics: the host's rule
    assert 0 < device_memory_available(_FakeAccelerator({})) <= HOST_CHUNK_CAP_BYTES


def test_chunk_items_is_a_clamped_power_of_two():
    assert chunk_items(100, budget_bytes=4000 * 100, share=1.0, lo=1, hi=1 << 20) == 2048  # 4000 fit
    assert chunk_items(100, budget_bytes=4096 * 100, share=1.0, lo=1, hi=1 << 20) == 4096  # exactly
    assert chunk_items(100, budget_bytes=4096 * 100, share=0.25, lo=1, hi=1 << 20) == 1024
    assert chunk_items(1 << 40, budget_bytes=1 << 30, lo=256) == 256  # nothing fits: the floor
    assert chunk_items(1, budget_bytes=1 << 40, hi=1 << 16) == 1 << 16
    assert chunk_items(1, budget_bytes=1 << 40, need=3000) == 4096  # no larger than the job
    assert chunk_items(1, budget_bytes=1 << 40, need=1) == 1
    n = chunk_items(64)  # from the device's memory
    assert n & (n - 1) == 0 and 1 << 10 <= n <= 1 << 24
    for bad in (dict(lo=3), dict(hi=1000), dict(lo=1 << 12, hi=1 << 10)):
        with pytest.raises(ValueError):
            chunk_items(8, **bad)
    with pytest.raises(ValueError):
        chunk_items(0)


def test_fixed_chunk():
    assert fixed_chunk(10, 8, 7) == 7
    assert fixed_chunk(10, 8) == 16
    with pytest.raises(ValueError):
        fixed_chunk(10, 8, 0)


def test_fusion_barrier_is_exact_for_every_dtype():
    cases = [
        np.array([1.5, -0.0, np.nan, -np.inf], np.float32),
        np.array([0.0, -0.0], np.float32),  # signed zeros alone
        np.array([0.0, 1e-45], np.float32),  # a denormal alone (XLA's CPU backend compares it equal to 0)
        np.array([0, 0, 0], np.int32),
        np.array([0, 7], np.uint8),
        np.array([True, False]),
    ]
    f = jax.jit(fusion_barrier)
    for x in cases:
        (got,) = f((x,))
        assert np.asarray(got).dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(got).view(np.uint8), x.view(np.uint8))  # bit for bit
    got = f(tuple(cases))
    for g, x in zip(got, cases):
        np.testing.assert_array_equal(np.asarray(g).view(np.uint8), x.view(np.uint8))
    with jax.enable_x64(True):
        x = np.array([-0.0, 5e-324], np.float64)
        np.testing.assert_array_equal(np.asarray(jax.jit(fusion_barrier)(x)).view(np.uint8), x.view(np.uint8))
