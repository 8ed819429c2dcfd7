"""Workload builders shared by the benchmark groups: models, rays, compiled JAX functions, torch twins.

Timing rules (``reference/conventions-and-anchors.md`` section 3): JAX functions are compiled ahead
of time (``jit(f).lower(...).compile()``) outside the timer and their outputs are blocked on inside
it; torch CUDA work is synchronised inside the timed function; inputs are on the device before
timing; both frameworks run float32 unless a precision case says otherwise.

A torch model and a JAX model built here hold the same parameters (the torch model is built with a
seed and its tensors are copied into the JAX layout of ``DEVELOPERS.md``), so the framework group can
check that both sides compute the same numbers before timing them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import numpy as np

from tensorf_common.config import THRESHOLD_APP_CAPACITY, ExperimentConfig, FieldConfig, TrainConfig, preset
from tensorf_common.geometry import BLENDER_AABB, BLENDER_NEAR_FAR, train_n_samples

AABB = np.array(BLENDER_AABB, np.float32)
NEAR_FAR = BLENDER_NEAR_FAR
DTYPES = ("fp32", "bf16", "fp16")


def experiment(size, appearance: str = "threshold", k: Optional[int] = None) -> ExperimentConfig:
    """The cpu preset with the size's field and the given appearance strategy.

    Sample compaction is off (``sample_capacity=None``): with a random field every in-box sample
    is valid, so a capacity would only measure overflow. ``threshold`` compacts its selected
    samples to a fixed capacity (THRESHOLD_APP_CAPACITY); fixed-shape strategies cost the same
    whatever the data.
    """
    base = preset("cpu")
    field = size.field or FieldConfig()
    render = dataclasses.replace(
        base.render,
        appearance=appearance,
        topk=k or base.render.topk,
        app_capacity=(base.render.app_capacity or THRESHOLD_APP_CAPACITY) if appearance == "threshold" else None,
        sample_capacity=None,
    )
    train = dataclasses.replace(base.train, batch_size=size.rays)
    return dataclasses.replace(base, field=field, render=render, train=train)


def make_rays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rays from cameras on a sphere of radius 4 through the box (as Blender scenes look at it)."""
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 3))
    o = o / np.linalg.norm(o, axis=1, keepdims=True) * 4.0
    target = rng.uniform(-1.2, 1.2, size=(n, 3))
    d = target - o
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    return o.astype(np.float32), d.astype(np.float32)


def make_points(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World points inside the box and unit view directions."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(AABB[0] * 0.98, AABB[1] * 0.98, size=(n, 3)).astype(np.float32)
    d = rng.normal(size=(n, 3))
    return xyz, (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def grid3(size_or_int) -> list[int]:
    g = size_or_int if isinstance(size_or_int, int) else size_or_int.grid
    return [int(g)] * 3


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------


def precision_support() -> tuple[bool, str]:
    """Whether jax_tensorf has mixed-precision policies (``jax_tensorf.precision``), and why not."""
    try:
        from jax_tensorf import precision  # noqa: F401
    except ImportError as exc:
        return False, f"jax_tensorf has no precision policies yet ({exc})"
    return True, ""


def precision_kwargs(name: str) -> dict:
    """The static keyword that selects a precision in the model and the train step: ``policy=``
    (jax_tensorf.precision), or ``dtype=`` in an older jax_tensorf. ``bf16-grid`` / ``fp16-grid``:
    the policy with every part, the grids' lookups included (16-bit grid copies)."""
    ok, _ = precision_support()
    if ok:
        from jax_tensorf.precision import PARTS, policy

        if name.endswith("-grid"):
            return {"policy": policy(name[: -len("-grid")], PARTS)}
        return {"policy": policy(name)}
    import jax.numpy as jnp

    return {"dtype": {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}[name]}


def init_opt_state(adam, params, prec: dict):
    """Adam's state for the train step (wrapped with a loss scale when the policy scales)."""
    from jax_tensorf import step as training

    if "policy" in prec and hasattr(training, "init_optimizer_state"):
        return training.init_optimizer_state(adam, params, prec["policy"])
    return adam.init(params)


def untimed_variant_reason(variant: str, size) -> Optional[str]:
    """Why a lookup variant is not timed at this size (None: it is). The ``pallas`` variant runs
    in Pallas' interpret mode off a GPU: a path that tests the kernels, one point per atomic-add
    block, far too slow to time beyond the smoke size."""
    from jax_tensorf import lookup_pallas

    if variant == "pallas" and size.name != "smoke" and lookup_pallas.interpret_default():
        return "pallas: Pallas interpret mode off a GPU tests the kernels and is not timed (smoke size only)"
    return None


def jax_device_info() -> dict[str, str]:
    from jax_tensorf.xla import device_info

    return device_info()


def jax_model(cfg: ExperimentConfig, grid, seed: int = 0, params: Optional[dict] = None):
    import jax

    from jax_tensorf.model import TensoRF

    import jax.numpy as jnp

    m = TensoRF.create(jax.random.PRNGKey(seed), cfg.field, cfg.render, AABB, grid, NEAR_FAR, True)
    if params is not None:
        m.params = jax.tree.map(jnp.copy, params)  # own buffers: train steps donate theirs
    m.params = jax.device_put(m.params)
    return m


def compiler_options(kind: str, size=None) -> dict:
    """The project's XLA options for a kind of computation (``train`` / ``eval``), plus backend
    optimisation level 0 on CPU for sizes marked ``fast_compile`` (smoke: tested, not timed)."""
    import jax

    from jax_tensorf.xla import xla_options

    out = dict(xla_options(kind))
    if size is not None and getattr(size, "fast_compile", False) and jax.default_backend() == "cpu":
        out["xla_backend_optimization_level"] = 0
    return out


def memory_of(compiled) -> dict[str, int]:
    """XLA's compiled memory analysis (bytes), where the backend gives one."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend has one
        return {}
    if mem is None:
        return {}
    out = {}
    for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                "generated_code_size_in_bytes"):
        v = getattr(mem, key, None)
        if v is not None:
            out[key.replace("_size_in_bytes", "_bytes")] = int(v)
    if out:
        out["peak_estimate_bytes"] = (
            out.get("temp_bytes", 0) + out.get("argument_bytes", 0) + out.get("output_bytes", 0) - out.get("alias_bytes", 0)
        )
    return out


@dataclasses.dataclass
class CompiledJax:
    """An AOT-compiled JAX function, its prepared (device) arguments and what compiling cost."""

    compiled: Any
    args: tuple
    lower_s: float
    compile_s: float
    info: dict

    @property
    def memory(self) -> dict[str, int]:
        return memory_of(self.compiled)

    def extra_info(self) -> dict:
        """What every benchmark of it records: lowering and compile seconds, its info, its memory."""
        return {"lower_s": round(self.lower_s, 3), "compile_s": round(self.compile_s, 3), **self.info, **self.memory}


def aot_compile(lower: Callable[[], Any], kind: str, size, args: tuple, info: dict) -> CompiledJax:
    """``lower()`` then compile with the project's XLA options for ``kind`` (train / eval), each timed."""
    t0 = time.perf_counter()
    lowered = lower()
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options(kind, size))
    t2 = time.perf_counter()
    return CompiledJax(compiled, args, t1 - t0, t2 - t1, info)


def hyper(tc: TrainConfig) -> dict:
    import jax.numpy as jnp

    return {
        "lr_grid": jnp.float32(tc.lr_init),
        "lr_basis": jnp.float32(tc.lr_basis),
        "l1": jnp.float32(tc.l1_weight_initial),
        "tv_density": jnp.float32(0.0),
        "tv_app": jnp.float32(0.0),
        "ortho": jnp.float32(0.0),
    }


def compacted_capacity(m, rays_o, rays_d, n_samples: int) -> int:
    """The valid-sample capacity the trainer's rule gives these rays as its probe batch."""
    from jax_tensorf.capacities import sample_capacity_for

    return sample_capacity_for(m.count_valid_samples(rays_o, rays_d, n_samples), rays_o.shape[0] * n_samples)


def compile_train_step(cfg: ExperimentConfig, grid, batch: int, dtype: str = "fp32", params=None, jitter=None,
                       fresh=False, size=None, compact: bool = False):
    """The project's jitted train step, lowered and compiled for one batch shape.

    ``fresh``: no buffer donation (the compile group runs the compiled step once on its own inputs).
    ``compact``: valid samples compacted to the capacity the trainer would give these rays
    (:func:`compacted_capacity`); otherwise every sample is evaluated."""
    import jax
    import jax.numpy as jnp

    from jax_tensorf import step as training

    m = jax_model(cfg, grid, params=params)
    n = train_n_samples(m.grid_size, cfg.render.step_ratio, cfg.render.max_samples)
    app_cap = None
    if cfg.render.appearance == "threshold" and cfg.render.app_capacity:
        app_cap = max(1024, int(cfg.render.app_capacity * batch * n) // 1024 * 1024)
    o, d = make_rays(batch, seed=2)
    sample_cap = compacted_capacity(m, o, d, n) if compact else None
    opts = m.render_options(n, train=True, sample_capacity=sample_cap, app_capacity=app_cap)
    adam = training.make_optimizer(cfg.train)
    prec = precision_kwargs(dtype)
    rgb = np.random.default_rng(3).random((batch, 3), dtype=np.float32)
    args = [m.params, init_opt_state(adam, m.params, prec), m.state, jnp.asarray(o), jnp.asarray(d), jnp.asarray(rgb),
            jax.random.PRNGKey(1), hyper(cfg.train)]
    if jitter is not None:
        args.append(jnp.asarray(jitter))
    args = jax.device_put(tuple(args))
    # A new jitted function every time: nothing is reused from an earlier trace or compilation of
    # the same step (JAX caches lowerings per function), so compile_s is always a real compilation.
    step = jax.jit(functools.partial(training.train_step.__wrapped__),
                   static_argnames=("cfg", "opts", "variant", "reg", "adam") + tuple(prec),
                   donate_argnums=() if fresh else (0, 1))
    reg = training.RegFlags(l1=True)
    info = {"samples_per_ray": n, "grid": "x".join(map(str, m.grid_size)), "grid_size": list(m.grid_size),
            "app_capacity": app_cap, "sample_capacity": sample_cap}
    return aot_compile(
        lambda: step.lower(*args, cfg=cfg.field, opts=opts, variant=cfg.render.vmap_variant, reg=reg, adam=adam, **prec),
        "train", size, args, info,
    )


def compile_sharded_train_step(cfg: ExperimentConfig, grid, batch: int, n_devices: int, size=None):
    """The data-parallel train step (``training.make_sharded_step``) over the first ``n_devices``
    devices: the global batch split on the batch axis, parameters and Adam replicated. With one
    device it is the same shard_map step on a one-device mesh, so the ratios measure the sharding.
    In a multi-process run (``devices_worker.py``) the mesh spans every process's devices and each
    process feeds its own rows of the same global batch (``jax_tensorf.distributed``)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jax_tensorf import distributed
    from jax_tensorf import step as training

    if batch % n_devices:
        raise ValueError(f"batch {batch} does not split over {n_devices} devices")
    m = jax_model(cfg, grid)
    n = train_n_samples(m.grid_size, cfg.render.step_ratio, cfg.render.max_samples)
    opts = m.render_options(n, train=True, sample_capacity=None, app_capacity=None)
    adam = training.make_optimizer(cfg.train)
    procs = distributed.processes()
    if procs is None:
        mesh = Mesh(np.array(jax.devices()[:n_devices]), ("data",))
        rows = slice(None)
    else:
        mesh = distributed.global_mesh(n_devices)
        rows = distributed.batch_rows(mesh, batch)
    rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def put(x, sharding):
        if procs is None:
            return jax.device_put(x, sharding)
        return distributed.to_global(x, sharding, batch if sharding is split else None)

    o, d = make_rays(batch, seed=2)
    rgb = np.random.default_rng(3).random((batch, 3), dtype=np.float32)
    args = (
        put(m.params, rep),
        put(adam.init(m.params), rep),
        put(m.state, rep),
        put(jnp.asarray(o[rows]), split),
        put(jnp.asarray(d[rows]), split),
        put(jnp.asarray(rgb[rows]), split),
        put(jax.random.PRNGKey(1), rep),
        put(hyper(cfg.train), rep),
    )
    step = training.make_sharded_step(mesh, cfg=cfg.field, opts=opts, variant=cfg.render.vmap_variant,
                                      reg=training.RegFlags(l1=True), adam=adam)
    info = {"samples_per_ray": n, "grid": "x".join(map(str, m.grid_size)), "grid_size": list(m.grid_size),
            "devices": n_devices}
    return aot_compile(lambda: step.lower(*args), "train", size, args, info)


def compile_render(cfg: ExperimentConfig, grid, n_rays: int, dtype: str = "fp32", params=None, fresh=False, size=None,
                   compact: bool = False):
    """The evaluation render of one chunk of rays (no jitter, the model's own sample count).
    ``compact``: valid samples compacted to a capacity as in :func:`compile_train_step`."""
    import jax
    import jax.numpy as jnp

    from jax_tensorf import model as jm

    m = jax_model(cfg, grid, params=params)
    n = m.n_samples
    o, d = make_rays(n_rays, seed=4)
    sample_cap = compacted_capacity(m, o, d, n) if compact else None
    opts = m.render_options(n, train=False, appearance=cfg.render.appearance, want_depth=True,
                            sample_capacity=sample_cap)
    args = jax.device_put((m.params, m.state, jnp.asarray(o), jnp.asarray(d)))
    prec = precision_kwargs(dtype)
    fn = jax.jit(functools.partial(jm.render.__wrapped__), static_argnames=("cfg", "opts", "variant") + tuple(prec))
    extra = (None, jax.random.PRNGKey(7) if cfg.render.appearance == "sample" else None)  # jitter, key
    info = {"samples_per_ray": n, "grid": "x".join(map(str, m.grid_size)), "grid_size": list(m.grid_size),
            "sample_capacity": sample_cap}
    return aot_compile(
        lambda: fn.lower(*args, *extra, cfg=cfg.field, opts=opts, variant=cfg.render.vmap_variant, **prec),
        "eval", size, args + extra, info,
    )


def compile_field(cfg: ExperimentConfig, grid, n_points: int, dtype: str = "fp32", params=None, size=None):
    """Field forward at points: sigma and rgb (density and appearance lookups, basis, MLP)."""
    import jax
    import jax.numpy as jnp

    from jax_tensorf.model import density_at, rgb_at

    m = jax_model(cfg, grid, params=params)
    (prec,) = precision_kwargs(dtype).values()  # the policy (or dtype) is the 6th positional argument
    variant = cfg.render.vmap_variant
    fc = cfg.field

    def fn(params, aabb, xyz, dirs):
        return density_at(params, fc, aabb, xyz, variant, prec), rgb_at(params, fc, aabb, xyz, dirs, variant, prec)

    xyz, dirs = make_points(n_points)
    args = jax.device_put((m.params, m.state.aabb, jnp.asarray(xyz), jnp.asarray(dirs)))
    # fn is a new closure: a real compilation
    return aot_compile(lambda: jax.jit(fn).lower(*args), "eval", size, args, {"grid": "x".join(map(str, m.grid_size))})


def lookup_inputs(kind: str, grid: int, channels: int, points: int, seed: int = 7):
    """A ``plane`` (grid, grid, channels) or ``line`` (grid, channels) of 0.1 * N(0, 1), uniform
    coordinates in [-1, 1] ((points, 2) or (points,)) and a N(0, 1) cotangent (points, channels);
    numpy float32."""
    rng = np.random.default_rng(seed)
    shape = (grid, grid, channels) if kind == "plane" else (grid, channels)
    g = (0.1 * rng.normal(size=shape)).astype(np.float32)
    coords = rng.uniform(-1.0, 1.0, size=(points, 2) if kind == "plane" else (points,)).astype(np.float32)
    return g, coords, rng.normal(size=(points, channels)).astype(np.float32)


def lookup_function(kind: str, variant: str, mode: str, dtype: str) -> Callable:
    """``fn(grid, coords, cot)``: one plane's or line's lookup by ``variant``
    (``fields.plane_lookup`` / ``line_lookup``), ``forward`` (the looked-up values) or
    ``forward+backward`` (``value_and_grad`` of ``sum(values * cot)`` w.r.t. the grid). ``dtype``:
    fp32; bf16 (float32 grid, values cast to bf16 after the gather); bf16-grid (the grid cast to
    bf16 before the lookup, as the precision policy's ``grid`` part does)."""
    import jax
    import jax.numpy as jnp

    from jax_tensorf import fields

    lookup = fields.plane_lookup if kind == "plane" else fields.line_lookup
    out_dtype = jnp.bfloat16 if dtype in ("bf16", "bf16-grid") else None

    def forward(grid, coords, cot):
        g = grid.astype(jnp.bfloat16) if dtype == "bf16-grid" else grid
        return lookup(g, coords, variant, out_dtype)

    def loss(grid, coords, cot):
        return jnp.sum(forward(grid, coords, cot).astype(jnp.float32) * cot)

    if mode == "forward":
        return forward
    return lambda grid, coords, cot: jax.value_and_grad(loss)(grid, coords, cot)


def block(x):
    import jax

    return jax.block_until_ready(x)


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device_info() -> dict[str, str]:
    import torch

    if torch.cuda.is_available():
        return {"device": f"cuda:{torch.cuda.get_device_name(0)}", "platform": "cuda"}
    return {"device": "cpu", "platform": "cpu"}


def torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_model(cfg: ExperimentConfig, grid, seed: int = 0):
    import torch

    from torch_reference.model import TensorBase

    torch.manual_seed(seed)
    return TensorBase.from_config(cfg.field, cfg.render, AABB, grid, NEAR_FAR, torch_device())


def torch_to_jax_params(model) -> dict:
    """The torch model's parameters in the JAX layout (DEVELOPERS.md): VM planes (1,C,H,W) ->
    (H,W,C), lines (1,C,L,1) -> (L,C), basis_mat.weight.T, MLP weights transposed."""
    import jax.numpy as jnp

    def arr(t):
        return jnp.asarray(t.detach().cpu().numpy())

    def grid(planes, lines):
        return {"planes": [arr(p[0].permute(1, 2, 0)) for p in planes], "lines": [arr(l[0, :, :, 0].T) for l in lines]}

    out = {
        "density": grid(model.density_plane, model.density_line),
        "app": grid(model.app_plane, model.app_line),
        "basis_mat": {"kernel": arr(model.basis_mat.weight.T)},
    }
    mlp = getattr(model.renderModule, "mlp", None)
    if mlp is not None:
        out["render"] = {f"mlp_{i}": {"kernel": arr(mlp[i].weight.T), "bias": arr(mlp[i].bias)} for i in (0, 2, 4)}
    return out


def torch_rays(o: np.ndarray, d: np.ndarray):
    import torch

    return torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1).to(torch_device())


def max_abs(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ---------------------------------------------------------------------------------------------
# Timing helpers and the compile cache shared between groups
# ---------------------------------------------------------------------------------------------


def run_timed(benchmark, fn, size, rounds=None, warmup=None):
    """Time ``fn`` with pedantic rounds (compilation already done by the caller); returns the
    result of the last call."""
    box = {}

    def target():
        box["out"] = fn()

    benchmark.pedantic(target, rounds=rounds or size.rounds, warmup_rounds=size.warmup if warmup is None else warmup,
                       iterations=1)
    return box["out"]


def cached_train_step(jax_cache, size, strategy, k, dtype="fp32"):
    key = ("train_step", size.name, strategy, k, dtype)
    if key not in jax_cache:
        cfg = experiment(size, strategy, k)
        c = compile_train_step(cfg, grid3(size), size.rays, dtype, size=size)
        c.info["initial_loss"] = first_step_loss(c)
        jax_cache[key] = c
    return jax_cache[key]


def first_step_loss(c: "CompiledJax") -> float:
    """The loss of one step from the compiled step's current arguments (on copies: the step
    donates its inputs)."""
    import jax
    import jax.numpy as jnp

    metrics = c.compiled(*jax.tree.map(jnp.copy, c.args))[2]
    return float(jax.device_get(metrics["total"]))


def cached_render(jax_cache, size, strategy, k, dtype="fp32"):
    key = ("render", size.name, strategy, k, dtype)
    if key not in jax_cache:
        cfg = experiment(size, strategy, k)
        jax_cache[key] = compile_render(cfg, grid3(size), size.render_rays, dtype, size=size)
    return jax_cache[key]


def cached_field(jax_cache, size, dtype="fp32"):
    key = ("field", size.name, dtype)
    if key not in jax_cache:
        cfg = experiment(size, "all")
        jax_cache[key] = compile_field(cfg, grid3(size), size.points, dtype, size=size)
    return jax_cache[key]


def train_loop(c: "CompiledJax"):
    """A closure that runs one train step per call, feeding the new parameters and Adam state back
    (the step donates them), and returns the step's metrics (blocked on)."""

    def step():
        params, opt, metrics = c.compiled(*c.args)
        c.args = (params, opt) + tuple(c.args[2:])  # the old buffers were donated
        return block(metrics)

    return step
