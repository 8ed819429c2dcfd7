"""Report presets: the compared quality runs differ only in their appearance strategy (and precision),
share the budget, and the torch reference trains with the official threshold."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tensorf_common.config import ConfigError, ExperimentConfig, preset as training_preset
from tensorf_bench.report.presets import BUILD_ESTIMATE_S, REPORT_PRESETS, preset_to_json, report_preset


@pytest.mark.parametrize("name", sorted(REPORT_PRESETS))
def test_quality_runs_differ_only_in_appearance_and_precision(name):
    p = report_preset(name)
    base = p.experiment()
    assert base.train.minutes == p.minutes
    names = [q.name for q in p.quality]
    assert len(set(names)) == len(names) and "torch" in names
    assert {"jax-topk", "jax-threshold"} <= set(names)
    # the gpu preset leaves `all` out to fit a lease, the quick one to fit ten minutes
    assert "jax-all" in names or name in ("gpu", "quick")
    for spec in p.quality:
        cfg = p.experiment(spec)
        assert isinstance(cfg, ExperimentConfig)
        assert cfg.data == base.data and cfg.field == base.field
        assert dataclasses.replace(cfg.train, precision=base.train.precision) == base.train
        neutral = dict(appearance=base.render.appearance, topk=base.render.topk, app_capacity=base.render.app_capacity)
        assert dataclasses.replace(cfg.render, **neutral) == base.render
        if spec.framework == "torch":
            assert cfg.render.appearance == "threshold" and spec.precision == "fp32"
        else:
            assert cfg.render.appearance == spec.appearance
            assert cfg.train.precision == spec.precision
        # a config that round-trips through JSON, as the quality child reads it
        assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_quick_preset_keeps_the_learning_rate():
    p = report_preset("quick")
    cfg = p.experiment(p.quality[0])
    # a constant learning rate: the decay span (n_iters) is far longer than a minute of steps
    assert cfg.train.schedule_unit == "iter" and cfg.train.n_iters >= 10_000 and cfg.train.upsample_at == ()
    assert p.parity_k and p.bench_size == "quick"


@pytest.mark.parametrize("name", sorted(set(REPORT_PRESETS) - {"smoke"}))  # smoke: runner tests, not quality
def test_density_l1_per_component_is_at_most_the_official(name):
    """``density_l1`` is a mean per plane and line, so its pull on one entry is weight / components,
    while the colour loss's pull does not depend on the count: a field with fewer density components
    needs a proportionally smaller weight. The quick preset once kept the official 8e-5 on 4
    components (4x the official pull): Adam drove the density planes and lines to zero in the first
    ~20 steps, where the VM product has no data gradient, and its 'all' run never learned (7.5 dB)."""
    official = training_preset("official")
    per_comp = lambda cfg, w: w / sum(cfg.field.density_components)
    p = report_preset(name)
    for spec in p.quality:
        cfg = p.experiment(spec)
        for field in ("l1_weight_initial", "l1_weight_rest"):
            got, ref = per_comp(cfg, getattr(cfg.train, field)), per_comp(official, getattr(official.train, field))
            assert got <= ref * (1 + 1e-9), (spec.name, field, got, ref)


def test_unknown_preset_and_json():
    with pytest.raises(ConfigError, match="unknown report preset"):
        report_preset("nope")
    d = preset_to_json(report_preset("full"))
    assert d["name"] == "full" and d["data"]["max_test_views"] == 10 and d["quality"][0]["name"] == "jax-topk"


@pytest.mark.parametrize("name", sorted(REPORT_PRESETS))
def test_the_estimate_is_that_of_the_stages_the_runner_plans(name, tmp_path):
    """What a preset estimates is what the runner's progress counts down: every planned stage, then
    the pages (a stage the plan adds and the estimate forgets, or the reverse, fails here)."""
    from tensorf_bench.report_runner.run import ReportRun

    p = report_preset(name)
    plan = ReportRun(tmp_path / "run", p).plan()
    kinds = [s.kind for s in plan]
    assert kinds == ["machine", "data", "bench"] + ["quality"] * len(p.quality) + (["parity"] if p.parity else [])
    staged = sum(s.estimate_s for s in plan if s.kind not in ("machine", "data"))
    assert p.estimate_seconds() == pytest.approx(staged + BUILD_ESTIMATE_S)


def test_gpu_preset_fits_the_lease_script_limit():
    """``tools/gpu_lease.sh`` interrupts the report at LIMIT_S: the gpu preset's estimate must fit."""
    script = (Path(__file__).resolve().parents[1] / "tools" / "gpu_lease.sh").read_text()
    limit = float(re.search(r"^LIMIT_S=\$\{LIMIT_S:-(\d+)\}", script, re.M).group(1))
    assert report_preset("gpu").estimate_seconds() <= limit


def test_gpu_preset_trains_every_precision():
    p = report_preset("gpu")
    assert {q.precision for q in p.quality if q.framework == "jax"} == {"fp32", "bf16", "fp16"}
    assert [q.name for q in p.quality][:2] == ["jax-topk", "torch"]  # the JAX-vs-torch pair runs first
