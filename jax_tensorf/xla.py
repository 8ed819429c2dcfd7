"""Per-compilation XLA options, and the facts of the default device that runs and reports record.

XLA's CPU backend fuses some reductions into YNNPACK kernels. On the TensoRF grid lookup that
choice helps the backward pass but slows the forward pass several times. Options are therefore
chosen per kind of computation (``train`` steps, ``eval`` renders) rather than process-wide, and
only on the CPU backend, where the option exists.

Host memory on the CPU backend (the measurements are in DEVELOPERS.md and the README):

* :func:`release_host_memory` drops JAX's cached executables (``jax.clear_caches``) before handing
  freed heap back. Every eager op and every jitted helper of set-up keeps a compiled executable,
  and each grid size adds more, far more than the arrays alive. The trainer's own steps are
  compiled ahead of time and held by the trainer, so they survive.
* :func:`prefer_synchronous_cpu_dispatch`: with asynchronous dispatch the CPU client runs each
  step on one of its worker threads, and consecutive steps land on different threads; each
  thread's allocator heap then keeps its own copy of the step's temporary buffer, so training held
  twice the temporaries. Run inline on the calling thread, the step reuses one buffer.

``TENSORF_BENCH_XLA_TRAIN`` / ``TENSORF_BENCH_XLA_EVAL`` override the defaults with a JSON object
of XLA debug options (``{}`` for XLA's own defaults).

Chunk sizes of one-off device work (carving, ray filtering) come from :func:`device_memory_available`
and :func:`chunk_items`, so that the same code uses large chunks on an accelerator and stays within
a modest share of RAM on the CPU backend, where the device memory is the process's own.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Optional

import jax
import jax.monitoring
import jax.numpy as jnp

from tensorf_common.runtime import available_memory_bytes, release_memory

_DEFAULTS = {
    "train": {},
    "eval": {"xla_cpu_experimental_ynn_fusion_type": ""},
    # run once per model: the CPU backend's optimisation of the unrolled random-bit generators
    # costs seconds of compilation and saves milliseconds of running
    "init": {"xla_backend_optimization_level": 0},
}


def xla_options(kind: str) -> dict:
    """Compiler options for a computation of the given kind on the current default backend."""
    env = os.environ.get(f"TENSORF_BENCH_XLA_{kind.upper()}")
    if env is not None:
        return dict(json.loads(env))
    if jax.default_backend() != "cpu":
        return {}
    return dict(_DEFAULTS.get(kind, {}))


def device_info() -> dict[str, str]:
    """The default device: ``device`` (``cpu``, or ``platform:kind`` such as ``gpu:NVIDIA H200``) and
    ``platform``."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return {"device": dev.platform if kind == dev.platform else f"{dev.platform}:{kind}", "platform": dev.platform}


def device_peak_bytes() -> dict[str, int]:
    """``{"device_peak_bytes": n}``: the peak bytes in use of the default accelerator, from its
    runtime allocator's statistics; empty on the CPU backend (which keeps none) or without them."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return {}
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # backends without allocator statistics
        return {}
    return {"device_peak_bytes": int(stats["peak_bytes_in_use"])} if "peak_bytes_in_use" in stats else {}


HOST_CHUNK_CAP_BYTES = 64 << 20
"""On the CPU backend, :func:`device_memory_available` reports at most this much: one-off set-up
work shares the machine's RAM with the training run (whose peak it must not raise much) and with
whatever else runs there, and chunks of a few MB, which stay in the caches, ran faster there than
larger ones (carving and the mask ray filter on a 2-core VM)."""


def device_memory_available(device=None, host_cap: int = HOST_CHUNK_CAP_BYTES) -> int:
    """Bytes that one-off work may use on ``device`` (default: the default device).

    An accelerator: its allocator's ``bytes_limit - bytes_in_use`` (``device.memory_stats()``,
    where ``bytes_limit`` includes JAX's preallocation). The CPU backend, or a device without
    statistics: a quarter of the host's available RAM, at most ``host_cap`` (default
    :data:`HOST_CHUNK_CAP_BYTES`; the evaluation render, which runs after training, allows more)."""
    dev = jax.devices()[0] if device is None else device
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
        except Exception:  # backends without allocator statistics
            stats = {}
        if "bytes_limit" in stats:
            return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    return min(available_memory_bytes() // 4, int(host_cap))


def chunk_items(
    bytes_per_item: float,
    *,
    budget_bytes: Optional[int] = None,
    share: float = 0.25,
    lo: int = 1 << 10,
    hi: int = 1 << 24,
    need: Optional[int] = None,
) -> int:
    """Items per chunk: the largest power of two whose ``bytes_per_item`` fit in ``share`` of
    ``budget_bytes`` (default: :func:`device_memory_available`), clamped to ``[lo, hi]``, and no
    larger than the power of two that holds ``need`` items (the whole job), when given.

    ``share`` leaves room for what a chunk's estimate misses (XLA's temporaries, the inputs, the
    next chunk's transfer). ``lo`` and ``hi`` must be powers of two, so the result always is one."""
    if bytes_per_item <= 0:
        raise ValueError(f"bytes_per_item: must be positive, got {bytes_per_item}")
    for name, v in (("lo", lo), ("hi", hi)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name}: must be a power of two, got {v}")
    if lo > hi:
        raise ValueError(f"lo {lo} is above hi {hi}")
    budget = device_memory_available() if budget_bytes is None else int(budget_bytes)
    fit = int(max(0.0, share * budget) // float(bytes_per_item))
    n = min(max(1 << (fit.bit_length() - 1) if fit >= 1 else 1, lo), hi)
    if need is not None:
        n = min(n, 1 << max(0, int(need) - 1).bit_length())
    return int(n)


def fixed_chunk(n_items: int, bytes_per_item: float, chunk: Optional[int] = None) -> int:
    """The chunk of a one-off job of ``n_items`` (one size for all its calls, hence one
    compilation): ``chunk`` when given, else :func:`chunk_items` capped at the job's size."""
    if chunk is None:
        return chunk_items(bytes_per_item, need=n_items)
    if int(chunk) < 1:
        raise ValueError(f"chunk: must be positive, got {chunk}")
    return int(chunk)


def fusion_barrier(tree):
    """``tree`` itself (arrays of any dtype), computed into buffers that later ops read.

    XLA fuses a producer into its consumers. Where that must not happen, route the value through
    here: a conditional, since fusion never crosses control flow (``optimization_barrier`` does
    not stop fusion on XLA CPU). Uses: an arithmetic-heavy producer whose fusion with a gather
    keeps XLA's CPU backend from vectorising it; a slice of a buffer that a loop then updates in
    place (read into its own buffer first, or XLA copies the whole buffer every iteration).
    Exact: the second branch runs only when every bit of every entry is zero, and returns zeros."""

    def bits(x):
        if jnp.issubdtype(x.dtype, jnp.floating):  # compare bits: -0.0 and denormals are not 0 here
            x = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
        return jnp.any(x != 0)

    leaves = jax.tree.leaves(tree)
    nonzero = functools.reduce(jnp.logical_or, [bits(x) for x in leaves])
    return jax.lax.cond(nonzero, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t), tree)


def release_host_memory(clear_caches: bool = True) -> None:
    """Drop JAX's compiled-executable caches (CPU backend only, and only with ``clear_caches``),
    then return freed heap pages to the OS (see the module docstring). Costs a recompilation of any
    eager op or jitted helper used again; called at schedule events and before evaluation, never
    per step. On accelerators the executables are kept: host memory is not what is short there,
    and recompiling helpers would stall the run."""
    if clear_caches and jax.default_backend() == "cpu":
        jax.clear_caches()
    release_memory()


DISPATCH_ENV = "TENSORF_BENCH_CPU_DISPATCH"
"""``async`` keeps JAX's default (asynchronous) CPU dispatch in training runs; anything else, or
unset, lets :func:`prefer_synchronous_cpu_dispatch` choose synchronous dispatch."""


def prefer_synchronous_cpu_dispatch() -> bool:
    """Run single-device CPU computations on the calling thread (see the module docstring; JAX's
    option applies to non-parallel computations only, sharded steps keep their threads). Possible
    only before JAX creates its CPU client, and skipped where ``TENSORF_BENCH_CPU_DISPATCH=async``;
    returns whether it took effect. Other backends ignore the option."""
    if os.environ.get(DISPATCH_ENV, "").lower() == "async":
        return False
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    except (ImportError, AttributeError, KeyError):  # a JAX without the option
        return False
    return True


def cpu_dispatch() -> str:
    """``sync`` or ``async``: how this process dispatches CPU computations (recorded in runs)."""
    try:
        return "async" if bool(jax.config.values["jax_cpu_enable_async_dispatch"]) else "sync"
    except KeyError:  # pragma: no cover
        return "async"


CACHE_ENV = "TENSORF_BENCH_JAX_CACHE"
"""Folder of JAX's persistent compilation cache for training runs; ``off`` disables it. Default:
``<tensorf_common.data.cache_root()>/jax-cache``."""

CACHE_MAX_BYTES = 4 << 30
"""Size at which JAX starts evicting the least recently used cache entries (where it supports it)."""

_cache_hits = [0]


def _count_cache_hits(event: str, **_kw) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hits[0] += 1


def enable_compilation_cache():
    """Turn on JAX's persistent compilation cache (``jax_compilation_cache_dir``), so that a second
    run of the same configuration loads its compiled steps instead of compiling them. Only
    compilations of at least JAX's ``jax_persistent_cache_min_compile_time_secs`` (1 s by default)
    are written. Returns the folder, or None when disabled (``TENSORF_BENCH_JAX_CACHE=off``).
    Benchmarks never call this: they time compilation."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in ("off", "0", "none", ""):
        return None
    if env:
        folder = os.path.expanduser(env)
    else:
        from tensorf_common.data import cache_root

        folder = os.path.join(str(cache_root()), "jax-cache")
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "jax_compilation_cache_max_size" in jax.config.values:
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    if not getattr(enable_compilation_cache, "_listening", False):
        jax.monitoring.register_event_listener(_count_cache_hits)
        enable_compilation_cache._listening = True
    return folder


def compilation_cache_hits() -> int:
    """Compilations served by the persistent cache so far in this process."""
    return _cache_hits[0]


def compile_lowered(lowered, kind: str) -> tuple[Any, dict]:
    """Compile ``lowered`` (a ``jax.stages.Lowered``) with :func:`xla_options` of ``kind``; returns
    the executable and ``{"seconds", "cache_hit", "temp_bytes" (where the backend reports it)}``."""
    t0, hits = time.perf_counter(), compilation_cache_hits()
    compiled = lowered.compile(compiler_options=xla_options(kind))
    info: dict = {"seconds": round(time.perf_counter() - t0, 3), "cache_hit": compilation_cache_hits() > hits}
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            info["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
    except Exception:  # memory analysis is optional per backend
        pass
    return compiled, info
