"""Per-compilation XLA options, and the facts of the default device that runs and reports record.

XLA's CPU backend fuses some reductions into YNNPACK kernels. On the TensoRF grid lookup that
choice helps the backward pass but slows the forward pass several times (measured on a 2-core
x86 CPU with jaxlib 0.10.2: density lookup of 1M points, forward 140 ms with the YNN fusions,
21 ms without). Options are therefore chosen per kind of computation (``train`` steps, ``eval``
renders) rather than process-wide, and only on the CPU backend, where the option exists.

``TENSORF_BENCH_XLA_TRAIN`` / ``TENSORF_BENCH_XLA_EVAL`` override the defaults with a JSON object
of XLA debug options (``{}`` for XLA's own defaults).
"""

from __future__ import annotations

import json
import os

import jax

_DEFAULTS = {
    "train": {},
    "eval": {"xla_cpu_experimental_ynn_fusion_type": ""},
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
