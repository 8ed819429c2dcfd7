"""Losses, optimizer groups, the official schedule, the jitted train step and the training loop.

The schedule follows the official ``train.py``: Adam (0.9, 0.99) with two learning-rate groups
(grids ``lr_init``, basis matrix + MLP ``lr_basis``), exponential decay, alpha-mask updates (the first
shrinks the box and switches the L1 weight, the second filters the training rays), log-space voxel
upsampling with the learning rate reset and Adam re-created (or, optionally, its moments resized like
the seed). Events at iteration i happen after the optimizer step of iteration i, masks before
upsampling. With ``schedule_unit="fraction"`` the event times are fractions of the budget (of
``--minutes`` when given; of the part left after set-up and the first compilation), so one preset
fits any machine.

The train step is compiled ahead of time once per static configuration (grid size, samples per ray,
capacities); :attr:`Trainer.compiles` records each compilation and its time. The loop syncs with the
device only every ``SYNC_EVERY`` steps (to keep the wall-clock budget honest) and at log points.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.dynamic_scale import DynamicScale

from tensorf_common.config import ExperimentConfig, TrainConfig
from tensorf_common.errors import TrainingError
from tensorf_common.geometry import n_to_reso, train_n_samples

from . import alpha_mask as am
from . import fields
from .model import TensoRF, render_model
from .rendering import bucket_capacity
from .regularizers import density_l1, ortho_loss, tv_loss
from .precision import FP32, Policy, policy_from_config
from .sampling import per_ray_jitter
from .xla import release_host_memory, xla_options

SYNC_EVERY = 10
"""Steps between host syncs in the loop (bounds how far the host runs ahead of the device)."""


# ---------------------------------------------------------------------------------------------
# Optimizer and learning rates
# ---------------------------------------------------------------------------------------------


def group_labels(params: dict) -> dict:
    """'grid' for planes and lines (lr_init), 'basis' for the basis matrix and MLP (lr_basis)."""
    return {k: jax.tree.map(lambda _: "grid" if k in ("density", "app") else "basis", v) for k, v in params.items()}


def make_adam(tc: TrainConfig) -> optax.GradientTransformation:
    """Adam moments only; the per-group learning rate is applied in the step (it changes every step)."""
    return optax.scale_by_adam(b1=tc.adam_betas[0], b2=tc.adam_betas[1], eps=tc.adam_eps)


def lr_factor(tc: TrainConfig, decay_span: float) -> float:
    """Per-unit decay factor: ``target_ratio ** (1 / span)`` (official ``lr_factor``)."""
    return tc.lr_decay_target_ratio ** (1.0 / decay_span)


def learning_rates(tc: TrainConfig, units_since_reset: float, decay_span: float) -> tuple[float, float]:
    """(lr_grid, lr_basis) for a step that comes ``units_since_reset`` after the last reset."""
    scale = lr_factor(tc, decay_span) ** units_since_reset
    return tc.lr_init * scale, tc.lr_basis * scale


# ---------------------------------------------------------------------------------------------
# Loss and step
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegFlags:
    """Which regularisers are active (static: inactive ones are not computed at all)."""

    l1: bool = True
    tv_density: bool = False
    tv_app: bool = False
    ortho: bool = False


def loss_terms(
    params, state, rays_o, rays_d, rgb, key, hyper, jitter=None, *, cfg, opts, variant, reg: RegFlags,
    policy: Policy = FP32, ray_offset=0,
):
    """Total loss and its parts: MSE on colour plus the weighted regularisers. ``jitter`` (one
    offset per ray) is drawn from ``key`` unless given (parity tests pass the torch side's).
    ``ray_offset`` is the index of the first ray of this batch in the whole batch (data parallel)."""
    k_jitter, k_app = jax.random.split(key)
    if jitter is None:
        jitter = per_ray_jitter(k_jitter, rays_o.shape[0], ray_offset)
    out = render_model(
        params, state, rays_o, rays_d, jitter, k_app, ray_offset, cfg=cfg, opts=opts, variant=variant, policy=policy
    )
    mse = jnp.mean((out["rgb"] - rgb) ** 2)
    total = mse
    parts = {"mse": mse}
    if reg.l1:
        parts["l1"] = density_l1(params["density"])
        total = total + hyper["l1"] * parts["l1"]
    if reg.tv_density:
        parts["tv_density"] = tv_loss(params["density"])
        total = total + hyper["tv_density"] * parts["tv_density"]
    if reg.tv_app:
        parts["tv_app"] = tv_loss(params["app"])
        total = total + hyper["tv_app"] * parts["tv_app"]
    if reg.ortho:
        parts["ortho"] = ortho_loss(params["density"]["lines"]) + ortho_loss(params["app"]["lines"])
        total = total + hyper["ortho"] * parts["ortho"]
    return total, (parts, out["stats"])


class ScaledState(NamedTuple):
    """Optimizer state with a dynamic loss scale (fp16): Adam's state and flax's DynamicScale."""

    adam: Any
    scale: DynamicScale


def _train_step(
    params, opt_state, state, rays_o, rays_d, rgb, key, hyper, jitter=None, *, cfg, opts, variant, reg, adam,
    policy: Policy = FP32, axis: Optional[str] = None,
):
    """One optimisation step. With ``axis`` it runs per device inside ``shard_map`` over that mesh
    axis: each device renders its share of the rays, gradients and losses are averaged."""
    ray_offset = 0 if axis is None else jax.lax.axis_index(axis) * rays_o.shape[0]
    loss_fn = functools.partial(
        loss_terms, state=state, rays_o=rays_o, rays_d=rays_d, rgb=rgb, key=key, hyper=hyper, jitter=jitter,
        cfg=cfg, opts=opts, variant=variant, reg=reg, policy=policy, ray_offset=ray_offset,
    )
    scaled = isinstance(opt_state, ScaledState)
    if scaled:
        new_scale, finite, (total, (parts, stats)), grads = opt_state.scale.value_and_grad(
            loss_fn, has_aux=True, axis_name=axis
        )(params)
        adam_state = opt_state.adam
    else:
        (total, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if axis is not None:
            grads = jax.lax.pmean(grads, axis)
        adam_state = opt_state
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    if axis is not None:
        total = jax.lax.pmean(total, axis)
        parts = jax.lax.pmean(parts, axis)
        stats = jax.lax.psum(stats, axis)
    finite = finite & jnp.isfinite(total)
    updates, new_adam = adam.update(grads, adam_state, params)
    labels = group_labels(params)
    new_params = jax.tree.map(
        lambda p, u, lab: p - (hyper["lr_grid"] if lab == "grid" else hyper["lr_basis"]) * u,
        params,
        updates,
        labels,
    )
    # a non-finite step leaves parameters and moments as they were (with fp16 scaling this is the
    # expected skip; otherwise the host stops with the last good parameters)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_opt = keep(new_adam, adam_state)
    if scaled:
        new_opt = ScaledState(new_opt, new_scale)
    metrics = dict(parts, total=total, finite=finite, **stats)
    if scaled:
        metrics["loss_scale"] = new_scale.scale
    return keep(new_params, params), new_opt, metrics


train_step = jax.jit(
    _train_step,
    static_argnames=("cfg", "opts", "variant", "reg", "adam", "policy", "axis"),
    donate_argnames=("params", "opt_state"),
)
"""The jitted train step: ``(params, opt_state, state, rays_o, rays_d, rgb, key, hyper, jitter=None) ->
(params, opt_state, metrics)``; ``hyper`` holds lr_grid, lr_basis, l1, tv_density, tv_app, ortho;
static keywords: cfg (FieldConfig), opts (RenderOptions), variant, reg (RegFlags), adam, policy."""


def make_sharded_step(mesh, *, cfg, opts, variant, reg, adam, policy: Policy = FP32, with_jitter: bool = False):
    """The train step data-parallel over ``mesh``'s single axis: rays sharded on the batch axis,
    parameters, optimizer and field state replicated (``jax.shard_map``, no pmap). ``opts`` holds
    per-device capacities."""
    from jax.sharding import PartitionSpec as P

    axis = mesh.axis_names[0]
    body = functools.partial(
        _train_step, cfg=cfg, opts=opts, variant=variant, reg=reg, adam=adam, policy=policy, axis=axis
    )
    batch = P(axis)
    in_specs = (P(), P(), P(), batch, batch, batch, P(), P()) + ((batch,) if with_jitter else ())
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P(), P()), check_vma=False)
    return jax.jit(fn, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------------------------
# Moment surgery for the 'resize' option and for shrinks
# ---------------------------------------------------------------------------------------------


def _map_grids(tree: dict, fn: Callable[[dict], dict]) -> dict:
    out = dict(tree)
    for name in ("density", "app"):
        out[name] = fn(tree[name])
    return out


def resize_grid_tree(grid: dict, reso, model: str) -> dict:
    if model == "VM":
        planes, lines = fields.upsample_vm(grid["planes"], grid["lines"], reso)
        return {"planes": planes, "lines": lines}
    return {"lines": fields.upsample_cp(grid["lines"], reso)}


def crop_grid_tree(grid: dict, t_l, b_r, model: str) -> dict:
    if model == "VM":
        planes, lines = fields.shrink_vm(grid["planes"], grid["lines"], t_l, b_r)
        return {"planes": planes, "lines": lines}
    return {"lines": fields.shrink_cp(grid["lines"], t_l, b_r)}


def map_adam_moments(opt_state, fn: Callable[[dict], dict]):
    """Apply a grid transformation to Adam's first and second moments (keeps the step count)."""
    if isinstance(opt_state, ScaledState):
        return ScaledState(map_adam_moments(opt_state.adam, fn), opt_state.scale)
    return opt_state._replace(mu=_map_grids(opt_state.mu, fn), nu=_map_grids(opt_state.nu, fn))


def init_optimizer_state(adam: optax.GradientTransformation, params, policy: Policy, scale=None):
    """Adam's state, wrapped with a loss scale when the policy scales (keeps ``scale`` if given,
    so that re-creating Adam at an upsample does not reset the fp16 scale)."""
    state = adam.init(params)
    if policy.loss_scale == "dynamic":
        return ScaledState(state, scale if scale is not None else DynamicScale())
    return state


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ScheduleState:
    """Host-side schedule position; saved in checkpoints."""

    step: int = 0
    elapsed: float = 0.0
    """Seconds of training so far (the budget clock: compilation, mask updates and filtering count)."""
    upsample_done: int = 0
    mask_done: int = 0
    lr_reset_at: float = 0.0
    """Schedule position (iterations or seconds) from which the learning rates decay again."""
    train_start: float = 0.0
    """Budget clock (seconds) when the first step started, i.e. after set-up and the first
    compilation: in time-fraction mode the schedule spans the rest of the budget from there."""
    l1_weight: float = 0.0
    sample_capacity: Optional[int] = None
    app_capacity: Optional[int] = None
    n_samples: int = 0
    skipped_steps: int = 0
    """Steps whose update was skipped as non-finite (fp16 with dynamic loss scaling)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LogPoint:
    step: int
    elapsed: float
    mse: float
    psnr: float
    lr_grid: float
    rays_per_s: float
    n_samples: int
    grid_size: list
    sample_overflow: int = 0
    app_overflow: int = 0
    valid_fraction: float = 0.0
    app_fraction: float = 0.0


def _progress(iterable_total: Optional[int], enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=iterable_total, unit="it", dynamic_ncols=True, file=sys.stderr)
    except ImportError:  # pragma: no cover
        return None


class Trainer:
    """Train a JAX TensoRF on a Blender-format dataset with the official schedule.

    ``trainer = Trainer(cfg, dataset); trainer.run()``; ``trainer.model`` is the result. The
    dataset is a :class:`tensorf_common.data.BlenderDataset` with at least the train split.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        dataset,
        *,
        out_dir: Optional[Path] = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
        progress: bool = False,
    ):
        self.cfg = cfg
        self.tc = cfg.train
        self.dataset = dataset
        self.train_split = dataset["train"]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log
        self.progress = progress
        self._init_runtime()
        self.compiles: list[dict] = []
        self.history: list[LogPoint] = []
        self.events: list[dict] = []
        self._compiled: dict = {}
        self._pending_recompile = False
        self.sched = ScheduleState(l1_weight=self.tc.l1_weight_initial)
        self.key = jax.random.PRNGKey(self.tc.seed)
        self._setup_started = time.perf_counter()
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from tensorf_common.bounds import carve_visual_hull, ray_box_hit
        from tensorf_common.data import BatchSampler

        t0 = time.perf_counter()
        tc, split = self.tc, self.train_split
        aabb = np.asarray(self.dataset.aabb, np.float32)
        hull = None
        if tc.box == "carve":
            occ, tight = carve_visual_hull(split, aabb, tc.carve_resolution)
            hull = (occ, aabb)
            self.events.append({"event": "carve", "aabb": tight.tolist(), "from": aabb.tolist()})
            aabb = tight
        reso = n_to_reso(tc.n_voxel_init, aabb)
        self.model = TensoRF.create(
            jax.random.fold_in(self.key, 0),
            self.cfg.field,
            self.cfg.render,
            aabb,
            reso,
            self.dataset.near_far,
            self.dataset.white_bg,
        )
        self.model.mesh = self.mesh
        if hull is not None and tc.carve_as_mask:
            occ, hull_box = hull
            self.model.set_mask(np.ascontiguousarray(np.transpose(occ, (2, 1, 0))), hull_box)
        self.opt_state = init_optimizer_state(self.adam, self.model.params, self.policy)
        self.sampler = BatchSampler(split.n_rays, tc.batch_size, tc.seed)
        if tc.ray_filter:
            keep = self._filter_rays_by_box(split, self.model.aabb, ray_box_hit)
            self.sampler.restrict(keep)
            self.events.append({"event": "ray_filter_box", "kept": int(self.sampler.pool_size), "of": split.n_rays})
        self.sched.n_samples = train_n_samples(reso, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        self._set_capacities(initial=True)
        release_host_memory()
        self.setup_seconds = time.perf_counter() - t0

    @staticmethod
    def _filter_rays_by_box(split, aabb, ray_box_hit, chunk: int = 1 << 18) -> np.ndarray:
        keep = np.zeros(split.n_rays, dtype=bool)
        for start in range(0, split.n_rays, chunk):
            idx = np.arange(start, min(start + chunk, split.n_rays))
            o, d = split.rays(idx)
            keep[idx] = ray_box_hit(o, d, aabb)
        return np.flatnonzero(keep)

    # ------------------------------------------------------------------ capacities
    def _set_capacities(self, initial: bool = False) -> None:
        """Capacities from the config fractions, raised to what a probe of a few batches needs
        (the valid-sample count depends on the scene and the mask, so it is measured, not assumed)."""
        rc, B, N = self.cfg.render, self.tc.batch_size, self.sched.n_samples
        total = B * N
        if rc.sample_capacity is None:
            self.sched.sample_capacity = None
        else:
            probe = self._probe_valid_samples()
            want = max(int(rc.sample_capacity * total), int(probe * 1.2))
            self.sched.sample_capacity = _round_cap(want, total)
        if rc.appearance == "threshold" and rc.app_capacity is not None:
            # appearance samples are a subset of the valid ones: the sample capacity bounds them
            limit = self.sched.sample_capacity or total
            recent = [p.app_fraction for p in self.history[-3:] if p.n_samples == self.sched.n_samples]
            if initial or self.sched.app_capacity is None:
                want = int(rc.app_capacity * total)
            elif recent:  # size to what the last log windows needed, with room to grow
                want = int(1.5 * max(recent) * total)
            else:
                want = int(self.sched.app_capacity)
            self.sched.app_capacity = _round_cap(min(want, limit), limit)
        else:
            self.sched.app_capacity = None

    def _probe_valid_samples(self, n_batches: int = 4) -> int:
        """The largest number of valid samples (in box and mask) over a few upcoming-like batches."""
        m, N = self.model, self.sched.n_samples
        rng = np.random.default_rng(self.tc.seed + 7919 * (self.sched.step + 1))
        pool = self.sampler.pool_size
        fn = _probe_fn(m.near_far[0], m.near_far[1], N)
        best = 0
        for _ in range(n_batches):
            idx = self.sampler.at(rng.integers(0, pool, self.tc.batch_size))
            o, d = self.train_split.rays(idx)
            jitter = rng.random(self.tc.batch_size).astype(np.float32)
            best = max(best, int(fn(m.state, o, d, jitter)))
        return best

    # ------------------------------------------------------------------ compile
    def _init_runtime(self) -> None:
        """Host-side objects derived from the config (also rebuilt when resuming)."""
        self.policy = policy_from_config(self.tc)
        self.adam = make_adam(self.tc)
        self.mesh = None
        if self.tc.devices > 1:
            from jax.sharding import Mesh

            devs = jax.devices()
            if len(devs) < self.tc.devices:
                raise TrainingError(
                    f"train.devices: {self.tc.devices} requested but only {len(devs)} {jax.default_backend()} "
                    "device(s) are available"
                )
            self.mesh = Mesh(np.array(devs[: self.tc.devices]), ("data",))

    def _step_fn(self):
        m, s, tc = self.model, self.sched, self.tc
        n_dev = tc.devices
        # per-device capacities, with headroom for an uneven split of valid samples across shards
        per = lambda c: None if c is None else (c if n_dev == 1 else _round_cap(int(1.25 * c / n_dev), c))
        opts = m.render_options(
            s.n_samples, train=True, sample_capacity=per(s.sample_capacity), app_capacity=per(s.app_capacity)
        )
        reg = RegFlags(
            l1=tc.l1_weight_initial > 0 or tc.l1_weight_rest > 0,
            tv_density=tc.tv_weight_density > 0,
            tv_app=tc.tv_weight_app > 0,
            ortho=tc.ortho_weight > 0,
        )
        sig = (tuple(m.grid_size), tuple(m.state.mask.shape), opts, reg)
        if sig not in self._compiled:
            t0 = time.perf_counter()
            args = self._step_args(np.zeros(tc.batch_size, np.int64))
            static = dict(cfg=self.cfg.field, opts=opts, variant=self.cfg.render.vmap_variant, reg=reg,
                          adam=self.adam, policy=self.policy)
            fn = train_step if self.mesh is None else make_sharded_step(self.mesh, **static)
            lowered = fn.lower(*args, **static) if self.mesh is None else fn.lower(*args)
            compiled = lowered.compile(compiler_options=xla_options("train"))
            seconds = time.perf_counter() - t0
            # grids only grow: executables of other grid sizes are not needed again (a resume
            # recompiles); keeping them would only hold memory
            for old in [k for k in self._compiled if k[0] != sig[0]]:
                del self._compiled[old]
            self._compiled[sig] = compiled
            info = {"grid_size": list(m.grid_size), "n_samples": s.n_samples, "mask": list(m.state.mask.shape),
                    "sample_capacity": s.sample_capacity, "app_capacity": s.app_capacity,
                    "seconds": round(seconds, 3), "step": s.step}
            try:
                mem = compiled.memory_analysis()
                if mem is not None:
                    info["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
            except Exception:  # memory analysis is optional per backend
                pass
            self.compiles.append(info)
            release_host_memory()
            self.log(f"compiled train step #{len(self.compiles)} for grid {m.grid_size}, N={s.n_samples} in {seconds:.1f}s")
        return self._compiled[sig]

    def drop_executables(self) -> None:
        """Forget the compiled train steps (their memory goes back at the next release); a later
        :meth:`run` compiles again."""
        self._compiled.clear()

    def _place(self, tree, batch: bool = False):
        """Put arrays where the step expects them: the default device, or (data parallel) the mesh,
        replicated or split on the batch axis."""
        if self.mesh is None:
            return tree
        from jax.sharding import NamedSharding, PartitionSpec as P

        spec = P("data") if batch else P()
        return jax.device_put(tree, NamedSharding(self.mesh, spec))

    def _hyper(self) -> dict:
        tc, s = self.tc, self.sched
        since = self._position() - s.lr_reset_at
        lr_grid, lr_basis = learning_rates(tc, since, self._decay_span())
        # TV weights decay every step and are never reset (official)
        tv_scale = lr_factor(tc, self._decay_span()) ** (self._position() + self._unit())
        return {
            "lr_grid": jnp.float32(lr_grid),
            "lr_basis": jnp.float32(lr_basis),
            "l1": jnp.float32(s.l1_weight),
            "tv_density": jnp.float32(tc.tv_weight_density * tv_scale),
            "tv_app": jnp.float32(tc.tv_weight_app * tv_scale),
            "ortho": jnp.float32(tc.ortho_weight),
        }

    def _step_args(self, idx: np.ndarray):
        o, d, rgb = self.train_split.batch(idx)
        key = jax.random.fold_in(self.key, self.sched.step + 1)
        if self.mesh is not None:
            self.model.params = self._place(self.model.params)
            self.opt_state = self._place(self.opt_state)
            self.model.state = self._place(self.model.state)
            o, d, rgb = self._place((o, d, rgb), batch=True)
            key, hyper = self._place((key, self._hyper()))
            return (self.model.params, self.opt_state, self.model.state, o, d, rgb, key, hyper)
        return (self.model.params, self.opt_state, self.model.state, jnp.asarray(o), jnp.asarray(d),
                jnp.asarray(rgb), key, self._hyper())

    # ------------------------------------------------------------------ schedule arithmetic
    def _budget_seconds(self) -> Optional[float]:
        return None if self.tc.minutes is None else 60.0 * self.tc.minutes

    def _uses_time(self) -> bool:
        return self.tc.schedule_unit == "fraction" and self.tc.minutes is not None

    def _position(self) -> float:
        """Where the run is on the schedule axis: seconds of training since the first step
        (time-fraction mode) or iterations."""
        if self._uses_time():
            return self.sched.elapsed - self.sched.train_start
        return float(self.sched.step)

    def _schedule_seconds(self) -> float:
        """Time-fraction mode: the seconds the schedule's fractions refer to, the budget left after
        set-up and the first compilation. Anchoring there keeps the schedule's shape whatever those
        cost on a machine (else, where they take most of a short budget, every upsample and mask
        update falls due at the first step, before the field has learnt anything)."""
        return max(self._budget_seconds() - self.sched.train_start, 1e-3)

    def _unit(self) -> float:
        return 0.0 if self._uses_time() else 1.0

    def _decay_span(self) -> float:
        if self._uses_time():
            return self._schedule_seconds()
        return float(self.tc.lr_decay_iters if self.tc.lr_decay_iters > 0 else self.tc.n_iters)

    def _event_time(self, point: float) -> float:
        """An event point in schedule units (iterations, or seconds in time-fraction mode)."""
        if self.tc.schedule_unit == "iter":
            return point
        if self._uses_time():
            return point * self._schedule_seconds()
        return point * self.tc.n_iters

    def _due(self, points, done: int, finished_step: int) -> bool:
        if done >= len(points):
            return False
        at = self._event_time(points[done])
        if self._uses_time():
            return self._position() >= at
        return finished_step >= int(round(at))

    # ------------------------------------------------------------------ events
    def _mask_update(self) -> None:
        tc, m, s = self.tc, self.model, self.sched
        t0 = time.perf_counter()
        reso = m.grid_size
        if int(np.prod(reso)) >= tc.mask_max_voxels and m.mask_grid_size is not None:
            reso = m.mask_grid_size  # official: the mask resolution stops growing at 256^3
        new_aabb = m.update_alpha_mask(reso)
        first = s.mask_done == 0
        event = {"event": "alpha_mask", "step": s.step, "elapsed": round(s.elapsed, 2), "mask": list(reso)}
        if new_aabb is None:
            event["empty"] = True
            self.log(f"step {s.step}: the alpha mask would be empty; keeping the previous mask and box")
        elif first:
            t_l, b_r, _, _ = am.shrink_box(m.aabb, m.grid_size, new_aabb, m.mask_grid_size)
            m.shrink(new_aabb)
            self.opt_state = map_adam_moments(
                self.opt_state, lambda g: crop_grid_tree(g, t_l, b_r, self.cfg.field.model)
            )
            event.update(shrunk_aabb=m.aabb.tolist(), grid_size=m.grid_size)
        if first:
            s.l1_weight = tc.l1_weight_rest
        if s.mask_done == 1 and tc.ray_filter and tc.ray_filter_mask and new_aabb is not None:
            keep = self._filter_rays_by_mask()
            if keep.size:
                self.sampler.restrict(keep)
            event["rays_kept"] = int(self.sampler.pool_size)
        s.mask_done += 1
        event["seconds"] = round(time.perf_counter() - t0, 2)
        self.events.append(event)
        self.log(f"step {s.step}: {json.dumps(event)}")

    def _filter_rays_by_mask(self, chunk: int = 8192) -> np.ndarray:
        pool = self.sampler.pool()
        keep = np.zeros(pool.size, dtype=bool)
        for start in range(0, pool.size, 1 << 18):
            idx = pool[start : start + (1 << 18)]
            o, d = self.train_split.rays(idx)
            keep[start : start + idx.size] = self.model.rays_hit_mask(o, d, chunk=chunk)
        return pool[keep]

    def _upsample(self) -> None:
        tc, m, s = self.tc, self.model, self.sched
        n_vox = tc.voxel_schedule()[s.upsample_done]
        reso = n_to_reso(n_vox, m.aabb)
        old = m.grid_size
        m.upsample(reso)
        if tc.optimizer_on_upsample == "recreate":
            scale = self.opt_state.scale if isinstance(self.opt_state, ScaledState) else None
            self.opt_state = init_optimizer_state(self.adam, m.params, self.policy, scale)
        else:
            self.opt_state = map_adam_moments(
                self.opt_state, lambda g: resize_grid_tree(g, reso, self.cfg.field.model)
            )
        if tc.lr_upsample_reset:
            s.lr_reset_at = self._position()  # the next step starts from the initial rates
        s.n_samples = train_n_samples(reso, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        s.upsample_done += 1
        self.events.append({"event": "upsample", "step": s.step, "elapsed": round(s.elapsed, 2), "from": old, "to": reso})
        self.log(f"step {s.step}: upsample {old} -> {reso}, {s.n_samples} samples per ray")

    # ------------------------------------------------------------------ main loop
    def _done(self) -> bool:
        if self.sched.step >= self.tc.n_iters:
            return True
        budget = self._budget_seconds()
        return budget is not None and self.sched.elapsed >= budget

    def run(self, max_steps: Optional[int] = None, on_log: Optional[Callable[[LogPoint], None]] = None) -> "Trainer":
        """Train until n_iters, the budget, or ``max_steps`` more steps (for tests and resumes)."""
        tc, s = self.tc, self.sched
        start_step = s.step
        bar = _progress(None if self._uses_time() else tc.n_iters, self.progress)
        if bar is not None:
            bar.update(s.step)
        window: list = []
        window_t0, window_step0 = s.elapsed, s.step
        clock = time.perf_counter()
        if s.step == 0:
            s.elapsed += self.setup_seconds
        compiled = self._step_fn()
        s.elapsed += time.perf_counter() - clock
        if s.step == 0:
            s.train_start = s.elapsed
        clock = time.perf_counter()
        while not self._done() and (max_steps is None or s.step - start_step < max_steps):
            idx = self.sampler.next()
            args = self._step_args(idx)
            params, opt_state, metrics = compiled(*args)
            self.model.params, self.opt_state = params, opt_state
            window.append(metrics)
            s.step += 1
            if s.step % SYNC_EVERY == 0 or s.step % tc.log_every == 0:
                jax.block_until_ready(metrics["total"])
            now = time.perf_counter()
            s.elapsed += now - clock
            clock = now
            if bar is not None:
                bar.update(1)
            log_now = s.step % tc.log_every == 0
            reconfigured = False
            while self._due(tc.alpha_mask_at, s.mask_done, s.step - 1):
                self._mask_update()
                reconfigured = True
            while self._due(tc.upsample_at, s.upsample_done, s.step - 1):
                self._upsample()
                reconfigured = True
            if log_now or reconfigured or self._done():
                point = self._log_window(window, s.elapsed - window_t0, s.step - window_step0)
                window, window_t0, window_step0 = [], s.elapsed, s.step
                if point is not None and on_log is not None:
                    on_log(point)
                if bar is not None and point is not None:
                    bar.set_postfix(psnr=f"{point.psnr:.2f}", grid="x".join(map(str, self.model.grid_size)))
            if reconfigured:
                self._set_capacities()
            if reconfigured or self._pending_recompile:
                self._pending_recompile = False
                compiled = self._step_fn()
            if tc.checkpoint_every and s.step % tc.checkpoint_every == 0 and self.out_dir is not None:
                self.save_checkpoint()
            now = time.perf_counter()
            s.elapsed += now - clock
            clock = now
        if window:
            self._log_window(window, s.elapsed - window_t0, s.step - window_step0)
        if bar is not None:
            bar.close()
        return self

    def _log_window(self, window: list, seconds: float, steps: int) -> Optional[LogPoint]:
        if not window:
            return None
        host = jax.device_get(window)
        skipped = sum(not bool(m["finite"]) for m in host)
        self.sched.skipped_steps += skipped
        # with dynamic loss scaling a non-finite step is an expected skip (the scale backs off);
        # without it, or when every step of the window failed, training cannot go on
        scaled = isinstance(self.opt_state, ScaledState)
        if skipped and (not scaled or skipped == len(host)):
            if self.out_dir is not None:
                self.save_checkpoint()
            raise TrainingError(
                f"non-finite loss at step <= {self.sched.step}; stopped with the last good parameters"
                + (f" saved in {self.out_dir}" if self.out_dir is not None else "")
            )
        mse = float(np.mean([m["mse"] for m in host]))
        s, m = self.sched, self.model
        n_rays = self.tc.batch_size * len(host)
        total_samples = self.tc.batch_size * s.n_samples
        point = LogPoint(
            step=s.step,
            elapsed=round(s.elapsed, 3),
            mse=mse,
            psnr=float(-10.0 * np.log10(max(mse, 1e-12))),
            lr_grid=float(self._hyper()["lr_grid"]),
            rays_per_s=float(n_rays / max(seconds, 1e-9)),
            n_samples=s.n_samples,
            grid_size=list(m.grid_size),
            sample_overflow=int(max(int(x["sample_overflow"]) for x in host)),
            app_overflow=int(max(int(x["app_overflow"]) for x in host)),
            valid_fraction=float(np.mean([int(x["valid_samples"]) for x in host]) / total_samples),
            app_fraction=float(np.mean([int(x["app_samples"]) for x in host]) / total_samples),
        )
        self.history.append(point)
        self._grow_capacities(point)
        if not self.progress:
            self.log(
                f"step {point.step:6d}  t={point.elapsed:7.1f}s  psnr {point.psnr:6.2f}  "
                f"{point.rays_per_s / 1000:6.1f}k rays/s  grid {'x'.join(map(str, point.grid_size))}"
            )
        return point

    def _grow_capacities(self, point: LogPoint) -> None:
        """A capacity that overflowed grows by half (and the step recompiles at the next schedule
        check), so a scene never silently loses samples for long."""
        s = self.sched
        total = self.tc.batch_size * s.n_samples
        changed = False
        if point.sample_overflow > 0 and s.sample_capacity is not None and s.sample_capacity < total:
            s.sample_capacity = _round_cap(int(s.sample_capacity * 1.5), total)
            changed = True
        if point.app_overflow > 0 and s.app_capacity is not None and s.app_capacity < (s.sample_capacity or total):
            limit = s.sample_capacity or total
            s.app_capacity = _round_cap(min(int(s.app_capacity * 1.5), limit), limit)
            changed = True
        if changed:
            self.events.append({"event": "capacity", "step": s.step, "sample": s.sample_capacity, "app": s.app_capacity})
            self.log(f"step {s.step}: capacity overflow; sample capacity {s.sample_capacity}, app capacity {s.app_capacity}")
            self._pending_recompile = True

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        from .checkpoint import save_trainer

        path = Path(path) if path is not None else Path(self.out_dir) / "checkpoint.npz"
        return save_trainer(self, path)


def _round_cap(n: int, total: int) -> int:
    """A capacity of at least ``n``, rounded up to one of a few sizes per octave (so that re-sized
    capacities rarely change the compiled shape), at most ``total``."""
    return int(bucket_capacity(n, total))


@functools.lru_cache(maxsize=None)
def _probe_fn(near: float, far: float, n_samples: int):
    from .sampling import sample_ray

    @jax.jit
    def fn(state, o, d, jitter):
        _, xyz, valid = sample_ray(o, d, state.aabb, near, far, state.step_size, n_samples, jitter)
        valid = valid & am.query_alpha_mask(state.mask, state.mask_aabb, xyz)
        return jnp.sum(valid)

    return fn
