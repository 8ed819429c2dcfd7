"""Group ``official``: the JAX train step at the official lego settings, the shapes of the official
code's throughput anchor (issue 3: 3.8k rays/s measured for the official code on a 2-core CPU):
a batch of 4096 rays, the first grid of ``configs/lego.txt`` (128^3 on the Blender box [-1.5, 1.5]^3,
443 samples per ray), the official field (16/48 components, MLP_Fea), no alpha mask yet, valid
samples compacted to a probed capacity as the trainer does. Cases: the appearance strategy (the
official ``threshold`` with its fixed-capacity compaction, or ``topk``) and the density lookup
(``factored``, as the official code, or ``dense``: the recomposed grid; same values, see
``jax_tensorf.fields.dense_density_feature``).

Rays are the suite's synthetic cameras (``bench_workloads.make_rays``) on a random field: the work
per step does not depend on training (``topk`` and the compacted ``threshold`` have fixed shapes).
The figure to read is rays per second (``rays / median``), compilation excluded (``compile_s``).

Checked: finite loss, no sample overflow, parameters updated; each dense case's first-step loss
equals its factored twin's (relative 1e-4), so the two lookups train the same model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")


def _parse(label: str):
    base, _, suffix = label.partition("+")
    strategy, _, k = base.partition("-")
    return strategy, (int(k) if k else None), ("dense" if suffix == "dense" else "factored")


def _cases():
    return [pytest.param(label, id=label) for label in bench_sizes.current_size().official]


_compiled: dict = {}


def _step(size, label: str):
    if label not in _compiled:
        strategy, k, lookup = _parse(label)
        grid, rays = size.official_shape
        cfg = W.experiment(size, strategy, k)
        cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, density_lookup=lookup))
        c = W.compile_train_step(cfg, [grid] * 3, rays, size=size, compact=True)
        c.info.update(initial_loss=W.first_step_loss(c), density_lookup=lookup, rays=rays)
        _compiled[label] = c
    return _compiled[label]


def _train_step(benchmark, record, size, jax_info, label):
    benchmark.group = "official"
    strategy, k, lookup = _parse(label)
    c = _step(size, label)
    before = np.asarray(jax.device_get(c.args[0]["density"]["planes"][0]))
    metrics = W.run_timed(benchmark, W.train_loop(c), size)
    record(jax_info, framework="jax", impl="jax-jit", workload="train_step", appearance=strategy, k=k, dtype="fp32",
           label=label, **c.extra_info())
    m = jax.device_get(metrics)
    assert np.isfinite(float(m["total"])) and bool(m["finite"]), f"non-finite step: {m['total']}"
    assert int(m["sample_overflow"]) == 0, f"{int(m['sample_overflow'])} samples over the probed capacity"
    after = np.asarray(jax.device_get(c.args[0]["density"]["planes"][0]))
    assert not np.array_equal(after, before), "the step did not update the grids"
    if lookup == "dense":
        twin = label.split("+")[0]
        if twin in size.official:
            ref = _step(size, twin).info["initial_loss"]
            assert c.info["initial_loss"] == pytest.approx(ref, rel=1e-4), "dense and factored lookups disagree"


# Sizes without official cases (bench_sizes.py) define no test here, rather than one skipped test.
if _cases():
    test_train_step = pytest.mark.parametrize("label", _cases())(_train_step)
