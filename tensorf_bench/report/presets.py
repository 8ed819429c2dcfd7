"""Report presets: what ``tensorf-bench report --preset NAME`` runs, and for how long.

A preset names the benchmark size (``benchmarks/bench_sizes.py``, passed as ``TENSORF_BENCH_SIZE``),
the training preset that the quality runs start from (``tensorf_common.config.PRESETS``) with its
overrides, the wall-clock budget of every quality run, and the compared configurations. Every
quality run uses the same ``ExperimentConfig`` except its appearance strategy (and precision), the
same data, the same batches (``BatchSampler`` with the same seed) and the same budget; the torch
reference trains with the official ``threshold`` appearance.

- ``quick``: the README's first command. The built-in procedural scene at 100x100, 4 test views,
  a small field on a fixed 32^3 grid trained for 1 minute per configuration (JAX top-k and
  threshold, the torch reference) at a constant learning rate, benchmarks at the quick size, a
  subset of the parity suite. Under 10 minutes on an otherwise idle 2-core CPU.
- ``full``: lego-sized. 400x400 views (the shared ``nerf_synthetic_half/lego``), 10 test views, the
  cpu training preset (carved box, 64^3 -> 160^3 with three upsamples and two mask updates) for
  5 minutes per run (top-16 also in bf16 and fp16), benchmarks at the full size. About 65 minutes
  on a 2-core CPU.
- ``gpu``: one H100/H200 within a lease of about 15 minutes: the ``gpu`` training preset for 36 s
  per run (top-32 in fp32, bf16 and fp16, threshold, the torch reference), benchmarks at the gpu
  size for at most 150 s (the most informative groups first), no parity stage (parity is a CPU
  check). About 9 minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from tensorf_common.config import SMALL_FIELD, THRESHOLD_APP_CAPACITY, ConfigError, ExperimentConfig, FieldConfig
from tensorf_common.config import preset as training_preset


@dataclass(frozen=True)
class QualitySpec:
    """One compared configuration of the quality runs."""

    name: str
    """Stage and folder name, e.g. ``jax-topk``."""
    framework: str
    """``jax`` or ``torch``."""
    appearance: str = "threshold"
    topk: Optional[int] = None
    precision: str = "fp32"

    @property
    def label(self) -> str:
        if self.framework == "torch":
            return "torch reference (threshold)"
        app = self.appearance if self.topk is None else f"{self.appearance}-{self.topk}"
        return f"JAX {app}" + ("" if self.precision == "fp32" else f" {self.precision}")


Overrides = tuple[tuple[str, Any], ...]

BUILD_ESTIMATE_S = 15.0
"""Estimated seconds to build the report pages after the stages."""


@dataclass(frozen=True)
class ReportPreset:
    """Everything a report run needs besides the dataset."""

    name: str
    description: str
    bench_size: str
    """Benchmark size (``TENSORF_BENCH_SIZE``)."""
    training_preset: str
    """Training preset the quality runs start from."""
    minutes: float
    """Wall-clock training budget of every quality run (compilation, mask updates, carving count)."""
    quality: tuple[QualitySpec, ...]
    train: Overrides = ()
    render: Overrides = ()
    data: Overrides = ()
    field: Overrides = ()
    figure_views: int = 3
    """Test views shown as render / ground truth / error images."""
    default_data: Optional[str] = None
    """Dataset when ``--data`` is not given (None: the built-in procedural scene)."""
    bench_timeout_s: int = 1800
    parity: bool = True
    parity_k: Optional[str] = None
    """Run only the parity tests matching this pytest -k expression (None: the whole suite)."""
    parity_timeout_s: int = 900
    quality_overhead_s: float = 30.0
    """Estimated seconds per quality run besides the budget (start-up, loading, evaluation)."""
    bench_estimate_s: float = 180.0
    parity_estimate_s: float = 60.0

    def experiment(self, spec: Optional[QualitySpec] = None) -> ExperimentConfig:
        """The quality runs' ExperimentConfig (with ``spec``'s appearance and precision)."""
        base = training_preset(self.training_preset)
        parts = {}
        for section, overrides in (("field", self.field), ("render", self.render), ("train", self.train),
                                   ("data", self.data)):
            parts[section] = dataclasses.replace(getattr(base, section), **dict(overrides))
        cfg = dataclasses.replace(base, **parts)
        train = dataclasses.replace(cfg.train, minutes=self.minutes)
        cfg = dataclasses.replace(cfg, train=train)
        if spec is None:
            return cfg
        render = cfg.render
        app = spec.appearance if spec.framework == "jax" else "threshold"
        render = dataclasses.replace(
            render,
            appearance=app,
            topk=spec.topk or render.topk,
            app_capacity=(render.app_capacity or THRESHOLD_APP_CAPACITY) if app == "threshold" else None,
        )
        train = dataclasses.replace(cfg.train, precision=spec.precision)
        return dataclasses.replace(cfg, render=render, train=train)

    @property
    def quality_estimate_s(self) -> float:
        """Estimated seconds of one quality run: its budget and the overhead."""
        return 60.0 * self.minutes + self.quality_overhead_s

    def quality_seconds(self) -> float:
        return len(self.quality) * self.quality_estimate_s

    def estimate_seconds(self) -> float:
        """The whole run: every stage the preset plans, then building the pages."""
        return (self.bench_estimate_s + self.quality_seconds() + (self.parity_estimate_s if self.parity else 0.0)
                + BUILD_ESTIMATE_S)


def _differences(cfg, base) -> Overrides:
    """The fields of ``cfg`` that differ from ``base``, as overrides."""
    return tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name))


def _compared_runs(k: int) -> tuple[QualitySpec, ...]:
    """JAX with topk (this k), threshold and all appearance, and the torch reference."""
    return (
        QualitySpec("jax-topk", "jax", "topk", k),
        QualitySpec("jax-threshold", "jax", "threshold"),
        QualitySpec("jax-all", "jax", "all"),
        QualitySpec("torch", "torch"),
    )


CPU_RUNS = _compared_runs(16)  # the cpu training preset's k

QUICK_RUNS = tuple(q for q in CPU_RUNS if q.name != "jax-all")
"""The quick preset leaves ``all`` out to fit ten minutes: the strategy the others exist to beat,
timed against them in its benchmarks (train step in the framework group, render in appearance)."""

FULL_RUNS = CPU_RUNS + (
    QualitySpec("jax-topk-bf16", "jax", "topk", 16, precision="bf16"),
    QualitySpec("jax-topk-fp16", "jax", "topk", 16, precision="fp16"),
)
"""The full preset also trains top-16 in bf16 and fp16: what half precision costs in quality at the
same budget on this kind of machine (where it is slower per step), next to the precision benchmarks."""

GPU_RUNS = (
    QualitySpec("jax-topk", "jax", "topk", 32),
    QualitySpec("torch", "torch"),
    QualitySpec("jax-topk-bf16", "jax", "topk", 32, precision="bf16"),
    QualitySpec("jax-topk-fp16", "jax", "topk", 32, precision="fp16"),
    QualitySpec("jax-threshold", "jax", "threshold"),
)
"""The gpu training preset's top-32 in the three precisions, threshold, and the torch reference, in
the order they run (the JAX-vs-torch pair first). No ``all``: a GPU lease is minutes long, and
``all`` is the strategy the others exist to beat."""


def _quick() -> ReportPreset:
    return ReportPreset(
        name="quick",
        description="built-in procedural scene at 100x100, 4 test views; a small field (4/8 components, "
        "32-wide MLP) on a fixed 32^3 grid trained for 1 min per configuration (JAX top-k and threshold, "
        "torch) at a constant learning rate; quick benchmarks; a parity subset (under 10 min on 2 idle "
        "CPU cores)",
        bench_size="quick",
        training_preset="cpu",
        minutes=1.0,
        quality=QUICK_RUNS,
        field=_differences(SMALL_FIELD, FieldConfig()),
        # An iteration schedule over a long horizon keeps the learning rate constant: with a time
        # schedule a one-minute budget would spend its decay on set-up and compilation.
        train=(("schedule_unit", "iter"), ("n_iters", 100_000), ("upsample_at", ()), ("alpha_mask_at", ()),
               ("n_voxel_init", 32**3), ("n_voxel_final", 32**3), ("batch_size", 1024), ("carve_resolution", 64),
               ("log_every", 25),
               # The density L1 (a mean per plane and line) pulls each entry with weight / components,
               # the colour loss does not depend on the count: with 4 density components instead of the
               # official 16 the official 8e-5 is 4x stronger. It zeroed the density planes and lines in
               # the first ~20 steps (where the VM product has no data gradient) and the 'all' run never
               # left its start (7.5 dB train, 10 dB test); so the official weights times 4/16.
               ("l1_weight_initial", 2e-5), ("l1_weight_rest", 1e-5)),
        data=(("downsample", 2), ("test_stride", 50), ("max_test_views", 4)),
        figure_views=2,
        bench_timeout_s=900,
        # the component modules (test_model's assembled-model checks and the Pallas variants, in
        # interpret mode here, are half the suite's time: the full preset runs them)
        parity_k="(test_fields.py or test_encoding or test_sampling or test_appearance or test_regularizers "
                 "or test_alpha_mask.py) and not pallas",
        parity_timeout_s=300,
        quality_overhead_s=30.0,
        bench_estimate_s=200.0,
        parity_estimate_s=80.0,
    )


def _full() -> ReportPreset:
    return ReportPreset(
        name="full",
        description="lego-sized: 400x400 views, 10 test views, the cpu training preset (carved box, "
        "64^3 -> 160^3) for 5 min per quality run (top-16 also in bf16 and fp16), full benchmarks "
        "(about 65 minutes on 2 CPU cores)",
        bench_size="full",
        training_preset="cpu",
        minutes=5.0,
        quality=FULL_RUNS,
        train=(("log_every", 50),),
        data=(("test_stride", 20), ("max_test_views", 10)),
        figure_views=3,
        bench_timeout_s=3600,
        parity_timeout_s=900,
        quality_overhead_s=150.0,
        bench_estimate_s=900.0,
        parity_estimate_s=120.0,
    )


def _gpu() -> ReportPreset:
    return ReportPreset(
        name="gpu",
        description="one H100/H200, sized to fit a lease of about 15 minutes: the gpu training preset "
        "(carved box, 128^3 -> 300^3, batch 4096) for 36 s per quality run, top-32 in fp32 / bf16 / fp16, "
        "threshold and the torch reference, 10 test views, gpu-size benchmarks; parity runs on the CPU",
        bench_size="gpu",
        training_preset="gpu",
        minutes=0.6,
        quality=GPU_RUNS,
        train=(("log_every", 100),),
        data=(("test_stride", 20), ("max_test_views", 10)),
        figure_views=3,
        bench_timeout_s=150,
        parity=False,
        quality_overhead_s=35.0,
        bench_estimate_s=150.0,
    )


def _smoke() -> ReportPreset:
    """For tests of the runner: seconds."""
    return ReportPreset(
        name="smoke",
        description="tests only: the smoke training preset, 0.1 min per run, smoke benchmarks",
        bench_size="smoke",
        training_preset="smoke",
        minutes=0.1,
        quality=CPU_RUNS,
        data=(("downsample", 1), ("max_test_views", 2)),
        figure_views=1,
        bench_timeout_s=600,
        parity=False,
        quality_overhead_s=20.0,
        bench_estimate_s=120.0,
    )


REPORT_PRESETS = {"quick": _quick, "full": _full, "gpu": _gpu, "smoke": _smoke}
"""Report presets by name; each call returns a fresh frozen preset."""


def report_preset(name: str) -> ReportPreset:
    if name not in REPORT_PRESETS:
        raise ConfigError(f"--preset: unknown report preset {name!r}; choose one of {sorted(REPORT_PRESETS)}")
    return REPORT_PRESETS[name]()


def preset_to_json(p: ReportPreset) -> dict:
    d = dataclasses.asdict(p)
    for key in ("train", "render", "data", "field"):
        d[key] = {k: v for k, v in getattr(p, key)}
    return d
