"""Group ``framework``: the same work in JAX (AOT-compiled jit) and in the torch reference (eager,
and ``torch.compile`` where the size asks for it and it works): a field forward at points, one
train step, and the evaluation render of a chunk of rays.

"The same work": one set of parameters (the torch model is built with a seed and copied into the
JAX layout), the same points, rays, colours and jitter, float32 on both sides, and appearance for
``all`` samples, so that the work does not depend on the data (the official ``threshold`` selects
almost nothing on a random field, which would flatter the dynamic-shape torch code). Both evaluate
only the samples inside the box: torch by its boolean mask, JAX by compacting them into the
capacity its trainer would give these rays, as its trainer and evaluation render do (without it
JAX would look up every sample, ~1.7x the work on these rays). Torch forward passes run under
``torch.no_grad()``; CUDA work is synchronised inside the timed function.

Checked before timing: both frameworks give the same sigma and colours (max-abs <= 1e-4), the same
render, and the same first-step loss (relative 1e-4); ``torch.compile`` gives eager's numbers.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import bench_sizes
import bench_workloads as W

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")

from tensorf_common.geometry import train_n_samples  # noqa: E402

WORKLOADS = ("field", "train_step", "render")
IMPLS = ("jax-jit", "torch-eager", "torch-compile")
TOL = 1e-4


def _params():
    size = bench_sizes.current_size()
    out = []
    for workload in WORKLOADS:
        for impl in IMPLS:
            if impl == "torch-compile" and workload not in size.torch_compile:
                continue  # tens of seconds of compilation: only the sizes that list it (bench_sizes.py)
            out.append(pytest.param(workload, impl, id=f"{workload}-{impl}"))
    return out


class Twins:
    """One parameter set in both frameworks, and the shared inputs."""

    def __init__(self, size):
        self.size = size
        self.cfg = W.experiment(size, "all")
        self.grid = W.grid3(size)
        self.torch_eval = W.torch_model(self.cfg, self.grid, seed=0)
        self.params = W.torch_to_jax_params(self.torch_eval)
        self.n_train = train_n_samples(self.grid, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        self.xyz, self.dirs = W.make_points(size.points)
        self.train_o, self.train_d = W.make_rays(size.rays, seed=2)
        self.rgb = np.random.default_rng(3).random((size.rays, 3), dtype=np.float32)
        self.jitter = np.random.default_rng(6).random(size.rays, dtype=np.float32)
        self.render_o, self.render_d = W.make_rays(size.render_rays, seed=4)
        self.results: dict = {}
        self.jax: dict = {}

    def torch_train_model(self):
        return W.torch_model(self.cfg, self.grid, seed=0)


_twins: dict = {}


@pytest.fixture
def twins(size):
    if size.name not in _twins:
        _twins[size.name] = Twins(size)
    return _twins[size.name]


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------


def _jax(tw: Twins, workload: str):
    if workload not in tw.jax:
        s = tw.size
        if workload == "field":
            c = W.compile_field(tw.cfg, tw.grid, s.points, params=tw.params, size=s)
            assert np.allclose(np.asarray(c.args[2]), tw.xyz)
        elif workload == "render":
            c = W.compile_render(tw.cfg, tw.grid, s.render_rays, params=tw.params, size=s, compact=True)
        else:
            c = W.compile_train_step(tw.cfg, tw.grid, s.rays, params=tw.params, jitter=tw.jitter, size=s,
                                     compact=True)
            c.info["initial_loss"] = W.first_step_loss(c)
        tw.jax[workload] = c
    return tw.jax[workload]


def _jax_fn(c, workload):
    if workload == "train_step":
        return W.train_loop(c)
    return lambda: W.block(c.compiled(*c.args))


def _jax_values(c, workload, out) -> dict:
    if workload == "field":
        return {"sigma": np.asarray(out[0]), "rgb": np.asarray(out[1])}
    if workload == "render":
        return {"rgb": np.asarray(out["rgb"]), "depth": np.asarray(out["depth"])}
    return {"loss": c.info["initial_loss"]}


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------


def _torch_fn(tw: Twins, workload: str, compiled: bool):
    """(fn, first_values, compile_seconds): ``fn()`` runs the work once (synchronised)."""
    from torch_reference.step import LossWeights, loss_terms, make_optimizer, train_step

    dev = W.torch_device()
    if workload == "field":
        model = tw.torch_eval
        xyz = torch.from_numpy(tw.xyz).to(dev)
        dirs = torch.from_numpy(tw.dirs).to(dev)

        def work():
            with torch.no_grad():
                xyz_n = model.normalize_coord(xyz)
                return model.density(xyz_n), model.color(xyz_n, dirs)

        run = torch.compile(work) if compiled else work

        def fn():
            out = run()
            W.torch_sync()
            return out

        t0 = time.perf_counter()
        first = fn()
        return fn, {"sigma": first[0].cpu().numpy(), "rgb": first[1].cpu().numpy()}, time.perf_counter() - t0

    if workload == "render":
        model = tw.torch_eval
        rays = W.torch_rays(tw.render_o, tw.render_d)

        def work():
            with torch.no_grad():
                out = model.render(rays, white_bg=True, is_train=False, N_samples=int(model.nSamples))
                return out["rgb_map"], out["depth_map"]

        run = torch.compile(work) if compiled else work

        def fn():
            out = run()
            W.torch_sync()
            return out

        t0 = time.perf_counter()
        first = fn()
        return fn, {"rgb": first[0].cpu().numpy(), "depth": first[1].cpu().numpy()}, time.perf_counter() - t0

    model = tw.torch_train_model()
    opt = make_optimizer(model, tw.cfg.train)
    rays = W.torch_rays(tw.train_o, tw.train_d)
    rgbs = torch.from_numpy(tw.rgb).to(dev)
    jitter = torch.from_numpy(tw.jitter).to(dev)
    weights = LossWeights(l1=tw.cfg.train.l1_weight_initial)
    if not compiled:
        def fn():
            parts = train_step(model, opt, rays, rgbs, weights, n_samples=tw.n_train, white_bg=True, jitter=jitter)
            W.torch_sync()
            return parts
    else:
        loss = torch.compile(lambda: loss_terms(model, rays, rgbs, weights, n_samples=tw.n_train, white_bg=True,
                                                jitter=jitter))

        def fn():
            model.train()
            total, parts = loss()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            W.torch_sync()
            return {k: v.detach() for k, v in parts.items()}

    t0 = time.perf_counter()
    first = fn()
    return fn, {"loss": float(first["total"])}, time.perf_counter() - t0


def _compare(workload, got: dict, ref: dict, what: str) -> float:
    worst = 0.0
    for name, r in ref.items():
        g = got[name]
        if workload == "train_step":
            err = abs(float(g) - float(r)) / max(abs(float(r)), 1e-12)
            assert np.isfinite(float(g)), f"{what}: non-finite loss"
            assert err <= TOL, f"{what}: first-step loss {float(g):.6g} vs {float(r):.6g} (relative {err:.2g})"
        else:
            g, r = np.asarray(g), np.asarray(r)
            assert g.shape == r.shape, f"{what}.{name}: shape {g.shape} vs {r.shape}"
            assert np.all(np.isfinite(g)), f"{what}.{name}: non-finite values"
            err = W.max_abs(g, r) / max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
            assert err <= TOL, f"{what}.{name}: max-abs difference {err:.3g} > {TOL}"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize(("workload", "impl"), _params())
def test_framework(benchmark, record, size, jax_info, torch_info, twins, workload, impl):
    benchmark.group = "framework"
    rays = {"field": None, "train_step": size.rays, "render": size.render_rays}[workload]
    common = dict(workload=workload, impl=impl, dtype="fp32", appearance="all", label=f"{workload} {impl}",
                  rays=rays, points=size.points if workload == "field" else None,
                  grid="x".join(map(str, twins.grid)))
    if impl == "jax-jit":
        c = _jax(twins, workload)
        fn = _jax_fn(c, workload)
        first = fn() if workload != "train_step" else None
        values = _jax_values(c, workload, jax.device_get(first) if first is not None else None)
        twins.results[("jax", workload)] = values
        W.run_timed(benchmark, fn, size)
        info = dict(jax_info, framework="jax", **c.extra_info())
        ref_key = ("torch", workload)
    else:
        try:
            fn, values, first_s = _torch_fn(twins, workload, compiled=impl == "torch-compile")
        except Exception as exc:  # torch.compile is "where it works"
            if impl == "torch-compile":
                pytest.skip(f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            raise
        twins.results[(impl, workload)] = values
        W.run_timed(benchmark, fn, size)
        info = dict(torch_info, framework="torch")
        if impl == "torch-compile":
            info["compile_s"] = round(first_s, 3)
        if workload == "train_step":
            info["samples_per_ray"] = twins.n_train
        ref_key = ("jax", workload)
    record(info, **common)
    # the same numbers on both sides (whichever ran second checks against the first)
    other = twins.results.get(ref_key)
    if impl == "torch-compile" and ("torch-eager", workload) in twins.results:
        other = twins.results[("torch-eager", workload)]
    if other is None:
        # run the reference side now, untimed (e.g. when a single test is selected)
        if ref_key[0] == "jax":
            c = _jax(twins, workload)
            out = None if workload == "train_step" else jax.device_get(_jax_fn(c, workload)())
            other = _jax_values(c, workload, out)
        else:
            _, other, _ = _torch_fn(twins, workload, compiled=False)
    benchmark.extra_info["max_rel_diff"] = _compare(workload, values, other, f"{workload} {impl}")
