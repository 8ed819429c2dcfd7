"""Group ``vmap``: every vectorisation of the grid lookup (``jax_tensorf.fields.VMAP_VARIANTS``),
forward and forward+backward, at training shapes (points shaped (rays, samples per ray, 3), the
size's grid, the density and the appearance lookups of one train step).

Checked: every variant gives the ``flat`` variant's features and gradients (max-abs <= 1e-5 times
the magnitude), and the values are finite.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from jax_tensorf import fields  # noqa: E402
from tensorf_common.geometry import train_n_samples  # noqa: E402

MODES = bench_sizes.current_size().vmap_modes


def _setup(size):
    cfg = W.experiment(size, "all")
    m = W.jax_model(cfg, W.grid3(size))
    n = train_n_samples(m.grid_size, cfg.render.step_ratio)
    rng = np.random.default_rng(5)
    xyz = jnp.asarray(rng.uniform(-1.0, 1.0, size=(size.rays, n, 3)).astype(np.float32))
    cot = jnp.asarray(rng.normal(size=(size.rays, n, sum(cfg.field.app_components))).astype(np.float32))
    grids = {"density": m.params["density"], "app": m.params["app"]}
    return cfg, m, n, jax.device_put((grids, xyz, cot))


def _functions(variant: str):
    def forward(grids, xyz, cot):
        dens = fields.vm_density_feature(grids["density"]["planes"], grids["density"]["lines"], xyz, variant)
        app = fields.vm_features(grids["app"]["planes"], grids["app"]["lines"], xyz, variant)
        return dens, app

    def loss(grids, xyz, cot):
        dens, app = forward(grids, xyz, cot)
        return jnp.sum(dens) + jnp.sum(app * cot)

    def backward(grids, xyz, cot):
        return jax.value_and_grad(loss)(grids, xyz, cot)

    return forward, backward


_reference: dict = {}


def _flat_reference(key, mode, args):
    if key not in _reference:
        fwd, bwd = _functions("flat")
        fn = fwd if mode == "forward" else bwd
        _reference[key] = jax.device_get(jax.jit(fn)(*args))
    return _reference[key]


def _remember_flat(key, out):
    _reference.setdefault(key, jax.device_get(out))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", fields.VMAP_VARIANTS)
def test_vmap(benchmark, record, size, jax_info, variant, mode):
    benchmark.group = "vmap"
    why = W.untimed_variant_reason(variant, size)
    if why:
        pytest.skip(why)
    cfg, m, n, args = _setup(size)
    fwd, bwd = _functions(variant)
    fn = fwd if mode == "forward" else bwd
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=W.compiler_options("train", size))
    compile_s = time.perf_counter() - t0
    out = W.run_timed(benchmark, lambda: W.block(compiled(*args)), size)

    record(
        jax_info,
        framework="jax",
        impl="jax-jit",
        workload="lookup",
        variant=variant,
        mode=mode,
        dtype="fp32",
        label=f"{variant} {mode}",
        grid="x".join(map(str, m.grid_size)),
        rays=size.rays,
        samples_per_ray=n,
        points=size.rays * n,
        compile_s=round(compile_s, 3),
        **W.memory_of(compiled),
    )

    if variant == "flat":
        _remember_flat((size.name, mode), out)
    ref = _flat_reference((size.name, mode), mode, args)
    got = jax.device_get(out)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        assert a.shape == b.shape
        assert np.all(np.isfinite(a)), f"{variant} {mode}: non-finite values"
        scale = max(1.0, float(np.max(np.abs(b))))
        assert W.max_abs(a, b) <= 1e-5 * scale, f"{variant} {mode} differs from flat by {W.max_abs(a, b):.3g}"
    if mode == "forward":
        dens, app = got
        assert dens.shape == (size.rays, n) and app.shape == (size.rays, n, sum(cfg.field.app_components))
    else:
        value, grads = got
        assert np.ndim(value) == 0
        shapes = jax.tree.map(np.shape, jax.device_get(args[0]))
        assert jax.tree.map(np.shape, grads) == shapes
        assert any(float(np.max(np.abs(g))) > 0 for g in jax.tree.leaves(grads)), "all-zero gradients"
