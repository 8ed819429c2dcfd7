"""Benchmark sizes: what each group runs, at which shapes, for how many rounds.

Chosen with ``TENSORF_BENCH_SIZE`` (``smoke`` by default, what ``make test`` runs with
``--benchmark-disable``; ``quick``, ``full`` and ``gpu`` for real timings, chosen by the report
presets).

Every JAX train-step compilation costs about 10 s on a 2-core CPU whatever the shapes (the HLO is the
same size), so the smaller sizes list fewer train-step cases; compiled executables are shared
between groups where the configuration is the same (see ``conftest.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from tensorf_common.config import SMALL_FIELD, FieldConfig

ENV_SIZE = "TENSORF_BENCH_SIZE"


@dataclass(frozen=True)
class BenchSize:
    """Shapes and rounds of one benchmark size."""

    name: str
    grid: int
    """Cubic grid (voxels per axis) of the timed workloads."""
    rays: int
    """Rays per training batch (train step, vmap lookups)."""
    render_rays: int
    """Rays per render chunk (evaluation render)."""
    points: int
    """Points of a field forward."""
    field: Optional[FieldConfig] = None
    """The field (None: the project's default field, as the cpu and official presets)."""
    ks: tuple[int, ...] = (8, 16, 32, 64)
    """k of the topk strategy."""
    sample_k: int = 32
    """k of the sample strategy."""
    train_strategies: Optional[tuple[str, ...]] = None
    """Appearance cases that also get a train-step benchmark (None: all of them)."""
    precision_workloads: tuple[str, ...] = ("field", "render", "train_step")
    torch_compile: tuple[str, ...] = ("field", "render", "train_step")
    """Workloads also timed with ``torch.compile`` (tens of seconds of compilation each)."""
    compile_grids: tuple[int, ...] = (64, 128)
    compile_workloads: tuple[str, ...] = ("render", "train_step")
    memory_workloads: tuple[str, ...] = ("render", "train_step")
    official: tuple[str, ...] = ()
    """Cases of the ``official`` group (``test_official_settings.py``): the JAX train step at the
    official lego settings, ``strategy[-k][+dense]`` (``+dense``: ``render.density_lookup=dense``);
    empty: the group does not run at this size."""
    official_shape: tuple[int, int] = (128, 4096)
    """(grid per axis, rays per batch) of the ``official`` group: the official lego config's first
    grid (128^3 on the Blender box, 443 samples per ray) and batch; smaller only where tested."""
    lookup_dtypes: tuple[str, ...] = ("fp32",)
    """Cases of the ``lookup`` group (``test_lookup.py``): fp32; bf16 (a float32 grid, the result
    cast to bf16 after the gather: the default half-precision policy); bf16-grid (the grid cast to
    bf16 before the lookup: 16-bit gathers, and 16-bit scatter-adds in the XLA variants' backward)."""
    vmap_modes: tuple[str, ...] = ("forward", "forward+backward")
    """Modes of the ``vmap`` group (``test_vmap.py``)."""
    device_counts: tuple[int, ...] = (1, 2, 4)
    """Device counts of the ``devices`` group (``test_devices.py``); empty: the group does not run."""
    two_processes: bool = True
    """Whether the ``devices`` group also runs the two-process case (two workers, each compiling)."""
    rounds: int = 3
    warmup: int = 1
    fast_compile: bool = False
    """Compile with XLA's backend optimisation level 0 on CPU (about half the compile time): for
    the smoke size, which is tested, not timed."""

    @property
    def strategy_cases(self) -> list[tuple[str, Optional[int]]]:
        """(strategy, k) of the appearance group, in display order."""
        return [("all", None), ("threshold", None)] + [("topk", k) for k in self.ks] + [("sample", self.sample_k)]


def case_label(strategy: str, k: Optional[int]) -> str:
    return strategy if k is None else f"{strategy}-{k}"


OFFICIAL_CASES = ("threshold", "topk-16", "topk-8", "threshold+dense", "topk-16+dense", "topk-8+dense")
"""The official group's cases at the sizes that time it: the official strategy and the cpu preset's
top-k, each with the factored and the dense density lookup."""

SIZES: dict[str, BenchSize] = {
    "smoke": BenchSize(
        name="smoke",
        grid=16,
        rays=64,
        render_rays=64,
        points=512,
        field=SMALL_FIELD,
        ks=(8,),
        sample_k=8,
        train_strategies=("topk-8",),
        precision_workloads=("field",),
        torch_compile=(),
        compile_grids=(16,),
        compile_workloads=("render",),
        memory_workloads=("render",),
        official=("topk-8", "topk-8+dense"),
        official_shape=(16, 64),
        lookup_dtypes=("fp32", "bf16-grid"),
        rounds=1,
        warmup=0,
        fast_compile=True,
    ),
    # What fits the quick report's ten minutes on 2 CPU cores, where compilation dominates every
    # case: the quick quality runs' small field; train steps only in the framework group (the
    # quality runs time each strategy's training); the memory probes (a process and a compilation
    # each) and the devices group (five train-step compilations) left to the full size.
    "quick": BenchSize(
        name="quick",
        grid=64,
        rays=1024,
        render_rays=1024,
        points=1 << 16,
        field=SMALL_FIELD,
        ks=(32,),
        sample_k=32,
        train_strategies=(),
        precision_workloads=("field",),
        torch_compile=(),
        compile_grids=(64,),
        compile_workloads=("render",),
        memory_workloads=(),
        vmap_modes=("forward+backward",),
        device_counts=(),
        two_processes=False,
        rounds=3,
        warmup=1,
    ),
    "full": BenchSize(
        name="full",
        grid=128,
        rays=2048,
        render_rays=4096,
        points=1 << 18,
        ks=(8, 16, 32, 64),
        sample_k=32,
        compile_grids=(64, 128, 160),
        official=OFFICIAL_CASES,
        rounds=3,
        warmup=1,
    ),
    # One H100/H200 within a lease: every case is a compilation of a few seconds, so the size
    # keeps the cases that answer the suite's questions (precision, JAX vs torch, strategies,
    # vmap variants, compile time) and leaves out torch.compile (tens of seconds each) and the
    # memory subprocesses.
    "gpu": BenchSize(
        name="gpu",
        grid=300,
        rays=4096,
        render_rays=8192,
        points=1 << 20,
        ks=(16, 32, 64),
        sample_k=32,
        train_strategies=("all", "threshold", "topk-32", "sample-32"),
        torch_compile=(),
        compile_grids=(128, 300),
        memory_workloads=(),
        official=OFFICIAL_CASES,
        lookup_dtypes=("fp32", "bf16-grid"),
        rounds=10,
        warmup=2,
    ),
}


def current_size() -> BenchSize:
    name = os.environ.get(ENV_SIZE, "smoke").strip().lower() or "smoke"
    if name not in SIZES:
        raise ValueError(f"{ENV_SIZE}={name!r}: choose one of {sorted(SIZES)}")
    return SIZES[name]
