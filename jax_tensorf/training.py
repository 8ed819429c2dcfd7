"""The training loop: set-up, the schedule's events, compilation, logging and checkpoints.

The step itself is the pure function of :mod:`jax_tensorf.step`; the schedule's arithmetic (learning
rates, event points, the clock of training seconds) is :mod:`tensorf_common.schedule`, shared with
the torch reference. Events at iteration i happen after the optimizer step of iteration i, masks
before upsamples (official): the first mask update shrinks the box and switches the L1 weight, the
second filters the training rays; an upsample resizes the grids (log-space voxel counts), resets
the learning rates and re-creates Adam (or, optionally, resizes its moments like the seed).

The train step is compiled ahead of time once per static configuration (grid size, samples per ray,
capacities); :attr:`Trainer.compiles` records each compilation and its time. The loop syncs with
the device every ``SYNC_EVERY`` steps, at log points and before events; only the time between those
syncs that was spent in steps advances the schedule clock (``SchedulePosition.train_seconds``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import ExperimentConfig
from tensorf_common.errors import CheckpointError, TrainingError
from tensorf_common.interrupt import stop_requested
from tensorf_common.geometry import n_to_reso, train_n_samples
from tensorf_common.schedule import Schedule, SchedulePosition, TrainingClock
from tensorf_common.training_log import LogPoint, log_line, progress_bar

from . import alpha_mask as am
from . import checkpoint as ckpt
from . import distributed
from . import static_grid as sg
from .model import TensoRF, buffered_alpha_mask
from .precision import policy_from_config
from .rendering import bucket_capacity
from .step import (
    RegFlags,
    ScaledState,
    crop_grid_tree,
    init_optimizer_state,
    make_adam,
    make_sharded_step,
    map_adam_moments,
    resize_grid_tree,
    train_step,
)
from .xla import compilation_cache_hits, release_host_memory, xla_options

SYNC_EVERY = 10
"""Steps between host syncs in the loop (bounds how far the host runs ahead of the device)."""


@dataclasses.dataclass
class StepShape:
    """The static shapes of the compiled step: samples per ray and the compaction capacities."""

    n_samples: int = 0
    """Samples per ray of the compiled step (static-shape training: an upper bound)."""
    sample_capacity: Optional[int] = None
    app_capacity: Optional[int] = None
    n_active: Optional[int] = None
    """Static-shape training: the samples per ray in use (a traced input of the step)."""

    @property
    def samples_in_use(self) -> int:
        return self.n_samples if self.n_active is None else self.n_active


class Trainer:
    """Train a JAX TensoRF on a Blender-format dataset with the official schedule.

    ``trainer = Trainer(cfg, dataset); trainer.run()``; ``trainer.model`` is the result. The
    dataset is a :class:`tensorf_common.data.BlenderDataset` with at least the train split.
    ``Trainer.resume(path, dataset)`` continues a run from :meth:`save_checkpoint`'s file.
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
        self._attach(cfg, dataset, out_dir, log, progress)
        self.pos = self.schedule.start()
        self.shape = StepShape()
        self.compiles: list[dict] = []
        self.history: list[LogPoint] = []
        self.events: list[dict] = []
        self.skipped_steps = 0
        """Steps whose update was skipped as non-finite (fp16 with dynamic loss scaling)."""
        self._setup()
        # set-up counts against the budget (with several processes, process 0's)
        self.pos.elapsed = self.setup_seconds if self.procs is None else self.procs.from_leader((self.setup_seconds,))[0]

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.tc)

    def _attach(self, cfg: ExperimentConfig, dataset, out_dir, log, progress) -> None:
        """Host-side objects derived from the config and the dataset (a fresh run and a resumed
        one alike)."""
        self.cfg, self.tc = cfg, cfg.train
        self.dataset = dataset
        self.train_split = dataset["train"]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log
        self.progress = progress
        self.policy = policy_from_config(self.tc)
        self.adam = make_adam(self.tc)
        self.key = jax.random.PRNGKey(self.tc.seed)
        self._compiled: dict = {}
        self._pending_recompile = False
        self._clock: Optional[TrainingClock] = None
        self._checkpoint_clock: Optional[float] = None
        """The budget clock (``pos.elapsed``, the same on every process) when the checkpoint was last
        written or :meth:`run` started: the periodic checkpoint (``checkpoint_minutes``) counts from it."""
        self.first_step_at: Optional[float] = None
        """``time.perf_counter()`` when the first step of this process had finished (None before)."""
        self.interrupted = False
        """:meth:`run` stopped early on a Ctrl-C (the run is whole up to its last step)."""
        self.mesh = None
        self.procs = distributed.processes()
        """This process's place among several (None: it trains alone)."""
        self._rows: Optional[slice] = None
        """Several processes: this process's rows of each global batch."""
        if self.procs is not None:
            self.mesh = distributed.global_mesh(self.tc.devices)
            self._rows = distributed.batch_rows(self.mesh, self.tc.batch_size)
        elif self.tc.devices > 1:
            from jax.sharding import Mesh

            devs = jax.devices()
            if len(devs) < self.tc.devices:
                raise TrainingError(
                    f"train.devices: {self.tc.devices} requested but only {len(devs)} {jax.default_backend()} "
                    "device(s) are available"
                )
            self.mesh = Mesh(np.array(devs[: self.tc.devices]), ("data",))

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """The box (carved from the views' alpha, or the dataset's), the initial model, the
        sampler with the rays that miss the box filtered out, and the compaction capacities. The
        carving and the ray filter run as compiled JAX on the default device (on the CPU backend
        numpy carves: the same hull without a compilation, which costs more than it saves there)."""
        from tensorf_common.bounds import require_rays_in_box, training_box
        from tensorf_common.data import BatchSampler

        from .carving import carve_visual_hull
        from .ray_filter import filter_rays_by_box

        t0 = time.perf_counter()
        tc, split = self.tc, self.train_split
        start = training_box(split, self.dataset.aabb, tc, None if jax.default_backend() == "cpu" else carve_visual_hull)
        if start.event is not None:
            self.events.append(start.event)
        aabb = start.aabb
        reso = n_to_reso(tc.n_voxel_init, aabb)
        self.model = TensoRF.create(
            jax.random.fold_in(self.key, 0), self.cfg.field, self.cfg.render, aabb, reso,
            self.dataset.near_far, self.dataset.white_bg,
        )
        self.model.mesh = self.mesh
        if start.mask is not None:
            self.model.set_mask(start.mask, start.mask_aabb)
        self.shape.n_samples = train_n_samples(reso, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        if tc.static_shapes:
            self._to_static(sg.buffer_size(tc, aabb))
        self.opt_state = init_optimizer_state(self.adam, self.model.params, self.policy)
        self.sampler = BatchSampler(split.n_rays, tc.batch_size, tc.seed)
        if tc.ray_filter:
            keep = filter_rays_by_box(split, self.model.aabb)
            source = "data.aabb" if self.cfg.data.aabb is not None else "the dataset's default box"
            require_rays_in_box(keep.size, split, self.model.aabb, source + (", carved" if start.event is not None else ""))
            self.sampler.restrict(keep)
            self.events.append({"event": "ray_filter_box", "kept": int(self.sampler.pool_size), "of": split.n_rays})
        self._set_capacities(initial=True)
        release_host_memory(clear_caches=not tc.static_shapes)
        self.setup_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ static shapes
    def _to_static(self, buf, mask_buf=None) -> None:
        """Move the model into zero-padded buffers of [X, Y, Z] = ``buf`` (the mask into
        ``mask_buf``, by default at least ``buf``) with the active sizes as traced values, and make
        the samples per ray a static bound (:mod:`jax_tensorf.static_grid`)."""
        m, sh, rc = self.model, self.shape, self.cfg.render
        reso = list(m.grid_size)
        mask_active = list(m.mask_grid_size or m.state.mask.shape[::-1])
        mask_buf = list(mask_buf or [max(b, a) for b, a in zip(buf, mask_active)])
        m.params = sg.map_grids(m.params, lambda g: sg.pad_grid(g, buf))
        m.active_size = reso
        m.state = m.state.replace(
            grid_size=sg.as_size(reso), mask=sg.pad_mask(m.state.mask, mask_buf), mask_size=sg.as_size(mask_active)
        )
        self.buf, self.mask_buf = list(buf), mask_buf
        if sh.n_active is None:
            sh.n_active = sh.n_samples
        largest = n_to_reso(max(self.tc.n_voxel_init, self.tc.n_voxel_final), m.aabb)
        bound = train_n_samples(largest, rc.step_ratio, rc.max_samples)
        sh.n_samples = max(sh.n_active, _round_up(int(1.1 * bound), 32))

    def _static_resize(self, reso) -> None:
        """Static shapes: resample the grids into the same buffers (a grid that outgrows them moves
        into larger ones, and the step compiles again)."""
        m, sh, rc = self.model, self.shape, self.cfg.render
        if not sg.fits(reso, self.buf):
            exact = sg.map_grids(m.params, lambda g: sg.slice_grid(g, m.grid_size))
            self.opt_state = map_adam_moments(self.opt_state, lambda g: sg.slice_grid(g, m.grid_size))
            self.buf = [max(b, int(np.ceil(sg.HEADROOM * r))) for b, r in zip(self.buf, reso)]
            self.mask_buf = [max(b, x) for b, x in zip(self.mask_buf, self.buf)]
            m.params = sg.map_grids(exact, lambda g: sg.pad_grid(g, self.buf))
            self.opt_state = map_adam_moments(self.opt_state, lambda g: sg.pad_grid(g, self.buf))
            X, Y, Z = m.mask_grid_size or m.state.mask.shape[::-1]
            m.state = m.state.replace(mask=sg.pad_mask(m.state.mask[:Z, :Y, :X], self.mask_buf))
            self.log(f"step {self.pos.step}: grid {list(reso)} outgrew the buffers; now {self.buf}")
        old = sg.as_size(m.grid_size)
        new = sg.as_size(reso)
        m.params = sg.map_grids(m.params, lambda g: sg.resample_grid(g, old, new))
        if self.tc.optimizer_on_upsample == "resize":
            self.opt_state = map_adam_moments(self.opt_state, lambda g: sg.resample_grid(g, old, new))
        m.active_size = list(reso)
        m.state = m.state.replace(grid_size=new)
        m._set_grid_geometry(m.aabb)
        sh.n_active = train_n_samples(reso, rc.step_ratio, rc.max_samples)
        if sh.n_active > sh.n_samples:
            sh.n_samples = _round_up(int(1.1 * sh.n_active), 32)

    def _static_alpha_mask(self, reso) -> Optional[np.ndarray]:
        """Static shapes: :meth:`TensoRF.update_alpha_mask` inside the mask buffer."""
        m = self.model
        mask, any_set, first, last = buffered_alpha_mask(
            m.params, m.state, sg.as_size(reso), jnp.float32(m.step_size), cfg=self.cfg.field,
            mask_buf=tuple(self.mask_buf), slab=sg.mask_slab(self.mask_buf), thres=self.cfg.render.alpha_mask_thres,
            use_mask=m.has_mask(),
        )
        if not bool(any_set):
            return None
        new_aabb = sg.mask_box(m.aabb, reso, np.asarray(first), np.asarray(last))
        m.state = m.state.replace(mask=mask, mask_aabb=jnp.asarray(m.aabb, jnp.float32), mask_size=sg.as_size(reso))
        m.mask_grid_size = list(reso)
        return new_aabb

    def _static_shrink(self, new_aabb) -> None:
        """Static shapes: :meth:`TensoRF.shrink` (and Adam's moments) inside the buffers."""
        m = self.model
        t_l, _, aabb_after, grid_after = am.shrink_box(m.aabb, m.grid_size, new_aabb, m.mask_grid_size)
        start, size = sg.as_size(t_l), sg.as_size(grid_after)
        crop = lambda g: sg.crop_grid(g, start, size)  # noqa: E731
        m.params = sg.map_grids(m.params, crop)
        self.opt_state = map_adam_moments(self.opt_state, crop)
        m.active_size = list(grid_after)
        m.state = m.state.replace(grid_size=size)
        m._set_grid_geometry(aabb_after)

    # ------------------------------------------------------------------ capacities
    def _set_capacities(self, initial: bool = False) -> None:
        """Capacities from the config fractions, raised to what a probe of a few batches needs
        (the valid-sample count depends on the scene and the mask, so it is measured, not assumed)."""
        rc, B, N, sh = self.cfg.render, self.tc.batch_size, self.shape.n_samples, self.shape
        total = B * N
        static = self.tc.static_shapes
        if rc.sample_capacity is None:
            sh.sample_capacity = None
        else:
            probe = self._probe_valid_samples()
            if static:  # sized for the finest grid: valid samples grow as the step shrinks
                probe = probe * N / sh.samples_in_use
            want = max(int(rc.sample_capacity * total), int(probe * 1.2))
            if static and not initial and sh.sample_capacity is not None:
                want = max(want, sh.sample_capacity)  # static shapes: capacities only grow
            sh.sample_capacity = _round_cap(want, total)
        if rc.appearance == "threshold" and rc.app_capacity is not None:
            # appearance samples are a subset of the valid ones: the sample capacity bounds them
            limit = sh.sample_capacity or total
            recent = [p.app_fraction for p in self.history[-3:] if p.n_samples == sh.samples_in_use]
            if initial or sh.app_capacity is None:
                want = int(rc.app_capacity * total)
            elif recent:  # size to what the last log windows needed, with room to grow
                want = int(1.5 * max(recent) * total)
            else:
                want = int(sh.app_capacity)
            if static and not initial and sh.app_capacity is not None:
                want = max(want, sh.app_capacity)
            sh.app_capacity = _round_cap(min(want, limit), limit)
        else:
            sh.app_capacity = None

    def _probe_valid_samples(self, n_batches: int = 4) -> int:
        """The largest number of valid samples (in box and mask) over a few upcoming-like batches."""
        m, N = self.model, self.shape.samples_in_use
        rng = np.random.default_rng(self.tc.seed + 7919 * (self.pos.step + 1))
        pool = self.sampler.pool_size
        best = 0
        for _ in range(n_batches):
            idx = self.sampler.at(rng.integers(0, pool, self.tc.batch_size))
            o, d = self.train_split.rays(idx)
            jitter = rng.random(self.tc.batch_size).astype(np.float32)
            best = max(best, int(_probe_fn(m.near_far[0], m.near_far[1], N)(m.state, o, d, jitter)))
        return best

    def _grow_capacities(self, point: LogPoint) -> None:
        """A capacity that overflowed grows by half (and the step recompiles at the next schedule
        check), so a scene never silently loses samples for long."""
        sh, step = self.shape, self.pos.step
        total = self.tc.batch_size * sh.n_samples
        changed = False
        if point.sample_overflow > 0 and sh.sample_capacity is not None and sh.sample_capacity < total:
            sh.sample_capacity = _round_cap(int(sh.sample_capacity * 1.5), total)
            changed = True
        if point.app_overflow > 0 and sh.app_capacity is not None and sh.app_capacity < (sh.sample_capacity or total):
            limit = sh.sample_capacity or total
            sh.app_capacity = _round_cap(min(int(sh.app_capacity * 1.5), limit), limit)
            changed = True
        if changed:
            self.events.append({"event": "capacity", "step": step, "sample": sh.sample_capacity, "app": sh.app_capacity})
            self.log(f"step {step}: capacity overflow; sample capacity {sh.sample_capacity}, app capacity {sh.app_capacity}")
            self._pending_recompile = True

    # ------------------------------------------------------------------ compile
    def _reg_flags(self) -> RegFlags:
        tc = self.tc
        return RegFlags(
            l1=tc.l1_weight_initial > 0 or tc.l1_weight_rest > 0,
            tv_density=tc.tv_weight_density > 0,
            tv_app=tc.tv_weight_app > 0,
            ortho=tc.ortho_weight > 0,
        )

    def _step_fn(self):
        """The compiled train step for the current shapes (compiled ahead of time on first use)."""
        m, sh, n_dev = self.model, self.shape, self.tc.devices
        # per-device capacities, with headroom for an uneven split of valid samples across shards
        per = lambda c: None if c is None else (c if n_dev == 1 else _round_cap(int(1.25 * c / n_dev), c))
        opts = m.render_options(
            sh.n_samples, train=True, sample_capacity=per(sh.sample_capacity), app_capacity=per(sh.app_capacity)
        )
        reg = self._reg_flags()
        sig = (tuple(self.buf if self.tc.static_shapes else m.grid_size), tuple(m.state.mask.shape), opts, reg)
        if sig not in self._compiled:
            t0, hits = time.perf_counter(), compilation_cache_hits()
            args = self._step_args(np.zeros(self.tc.batch_size, np.int64))
            static = dict(cfg=self.cfg.field, opts=opts, variant=self.cfg.render.vmap_variant, reg=reg,
                          adam=self.adam, policy=self.policy)
            if self.mesh is None:
                lowered = train_step.lower(*args, **static)
            else:
                lowered = make_sharded_step(self.mesh, **static).lower(*args)
            compiled = lowered.compile(compiler_options=xla_options("train"))
            seconds = time.perf_counter() - t0
            # grids only grow: executables of other grid sizes are not needed again (a resume
            # recompiles); keeping them would only hold memory
            for old in [k for k in self._compiled if k[0] != sig[0]]:
                del self._compiled[old]
            self._compiled[sig] = compiled
            info = {"grid_size": list(m.grid_size), "n_samples": sh.n_samples, "mask": list(m.state.mask.shape),
                    "sample_capacity": sh.sample_capacity, "app_capacity": sh.app_capacity,
                    "seconds": round(seconds, 3), "step": self.pos.step,
                    "cache_hit": compilation_cache_hits() > hits}
            try:
                mem = compiled.memory_analysis()
                if mem is not None:
                    info["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
            except Exception:  # memory analysis is optional per backend
                pass
            self.compiles.append(info)
            release_host_memory(clear_caches=not self.tc.static_shapes)
            if self.procs is not None:  # compilation times differ between processes
                self.procs.barrier("the compilation of the train step")
            self.log(f"compiled train step #{len(self.compiles)} for grid {m.grid_size}, N={sh.n_samples} in {seconds:.1f}s")
        return self._compiled[sig]

    def drop_executables(self) -> None:
        """Forget the compiled train steps (their memory goes back at the next release); a later
        :meth:`run` compiles again."""
        self._compiled.clear()

    def _place(self, tree, batch: bool = False):
        """Put arrays where the step expects them: the default device, or (data parallel) the mesh,
        replicated or split on the batch axis (several processes: from this process's rows)."""
        if self.mesh is None:
            return tree
        from jax.sharding import NamedSharding, PartitionSpec as P

        sharding = NamedSharding(self.mesh, P("data") if batch else P())
        if self.procs is not None:
            return distributed.to_global(tree, sharding, self.tc.batch_size if batch else None)
        return jax.device_put(tree, sharding)

    def _hyper(self) -> dict:
        sched, p, tc = self.schedule, self.pos, self.tc
        lr_grid, lr_basis = sched.learning_rates(p)
        tv = sched.tv_scale(p)  # TV weights decay every step and are never reset (official)
        return {
            "lr_grid": jnp.float32(lr_grid),
            "lr_basis": jnp.float32(lr_basis),
            "l1": jnp.float32(p.l1_weight),
            "tv_density": jnp.float32(tc.tv_weight_density * tv),
            "tv_app": jnp.float32(tc.tv_weight_app * tv),
            "ortho": jnp.float32(tc.ortho_weight),
        } | ({"n_samples": jnp.int32(self.shape.n_active)} if tc.static_shapes else {})

    def _step_args(self, idx: np.ndarray):
        """The step's arguments for the global batch ``idx`` (every process draws the same one
        and loads only its own rows)."""
        o, d, rgb = self.train_split.batch(idx if self._rows is None else idx[self._rows])
        key = jax.random.fold_in(self.key, self.pos.step + 1)
        if self.mesh is not None:
            self.model.params = self._place(self.model.params)
            self.opt_state = self._place(self.opt_state)
            self.model.state = self._place(self.model.state)
            o, d, rgb = self._place((o, d, rgb), batch=True)
            key, hyper = self._place((key, self._hyper()))
            return (self.model.params, self.opt_state, self.model.state, o, d, rgb, key, hyper)
        return (self.model.params, self.opt_state, self.model.state, jnp.asarray(o), jnp.asarray(d),
                jnp.asarray(rgb), key, self._hyper())

    # ------------------------------------------------------------------ clocks
    def _stop_requested(self) -> bool:
        """A Ctrl-C asked to stop (:mod:`tensorf_common.interrupt`); with several processes process
        0's answer, so that all stop at the same step. Sets :attr:`interrupted`."""
        stop = stop_requested()
        if self.procs is not None:
            stop = bool(self.procs.from_leader((float(stop),))[0])
        self.interrupted = self.interrupted or stop
        return stop

    def _tick(self, training: bool, agree: bool = True) -> None:
        self._clock.tick(training, agree)

    def _overhead(self):
        """Work that is not training (events, compilation, checkpoints): the steps dispatched before
        it finish first and count as training; the rest counts against the budget only."""
        return self._clock.overhead(lambda: jax.block_until_ready(self.model.params))

    # ------------------------------------------------------------------ events
    def _mask_update(self) -> None:
        tc, m, p = self.tc, self.model, self.pos
        t0 = time.perf_counter()
        reso = m.grid_size
        if int(np.prod(reso)) >= tc.mask_max_voxels and m.mask_grid_size is not None:
            reso = m.mask_grid_size  # official: the mask resolution stops growing at 256^3
        new_aabb = self._static_alpha_mask(reso) if tc.static_shapes else m.update_alpha_mask(reso)
        first = p.mask_done == 0
        event = {"event": "alpha_mask", "step": p.step, "elapsed": round(p.elapsed, 2),
                 "train_seconds": round(p.train_seconds, 2), "mask": list(reso)}
        if new_aabb is None:
            event["empty"] = True
            self.log(f"step {p.step}: the alpha mask would be empty; keeping the previous mask and box")
        elif first and tc.static_shapes:
            self._static_shrink(new_aabb)
            event.update(shrunk_aabb=m.aabb.tolist(), grid_size=m.grid_size)
        elif first:
            t_l, b_r, _, _ = am.shrink_box(m.aabb, m.grid_size, new_aabb, m.mask_grid_size)
            m.shrink(new_aabb)
            self.opt_state = map_adam_moments(
                self.opt_state, lambda g: crop_grid_tree(g, t_l, b_r, self.cfg.field.model)
            )
            event.update(shrunk_aabb=m.aabb.tolist(), grid_size=m.grid_size)
        if p.mask_done == 1 and tc.ray_filter and tc.ray_filter_mask and new_aabb is not None:
            keep = self._filter_rays_by_mask()
            if keep.size:
                self.sampler.restrict(keep)
            event["rays_kept"] = int(self.sampler.pool_size)
        self.schedule.note_mask_update(p)
        event["seconds"] = round(time.perf_counter() - t0, 2)
        self.events.append(event)
        self.log(f"step {p.step}: {json.dumps(event)}")

    def _filter_rays_by_mask(self) -> np.ndarray:
        """The pooled rays with an evaluation sample in the mask (official ``filtering_rays``)."""
        from .ray_filter import filter_rays_by_mask

        m = self.model
        s = m.state
        size = None if s.mask_size is None else np.asarray(s.mask_size)
        return filter_rays_by_mask(self.train_split, self.sampler.pool(), s.aabb, s.step_size, s.mask, s.mask_aabb,
                                   m.near_far[0], m.near_far[1], 256, mask_size=size)

    def _upsample(self) -> None:
        tc, m, p = self.tc, self.model, self.pos
        reso = n_to_reso(tc.voxel_schedule()[p.upsample_done], m.aabb)
        old = m.grid_size
        if tc.static_shapes:
            self._static_resize(reso)
        else:
            m.upsample(reso)
        if tc.optimizer_on_upsample == "recreate":
            scale = self.opt_state.scale if isinstance(self.opt_state, ScaledState) else None
            self.opt_state = init_optimizer_state(self.adam, m.params, self.policy, scale)
        elif not tc.static_shapes:  # static shapes: resampled with the grids
            self.opt_state = map_adam_moments(
                self.opt_state, lambda g: resize_grid_tree(g, reso, self.cfg.field.model)
            )
        self.schedule.note_upsample(p)  # the next step starts from the initial rates
        if not tc.static_shapes:
            self.shape.n_samples = train_n_samples(reso, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        self.events.append({"event": "upsample", "step": p.step, "elapsed": round(p.elapsed, 2),
                            "train_seconds": round(p.train_seconds, 2), "from": old, "to": reso})
        self.log(f"step {p.step}: upsample {old} -> {reso}, {self.shape.samples_in_use} samples per ray")

    # ------------------------------------------------------------------ main loop
    def run(self, max_steps: Optional[int] = None, on_log: Optional[Callable[[LogPoint], None]] = None) -> "Trainer":
        """Train until n_iters, the budget, or ``max_steps`` more steps (for tests and resumes)."""
        tc, p, sched = self.tc, self.pos, self.schedule
        start_step = p.step
        bar = progress_bar(None if sched.uses_time else tc.n_iters, self.progress)
        if bar is not None:
            bar.update(p.step)
        self._clock = TrainingClock(p, lambda: time.perf_counter(), None if self.procs is None else self.procs.from_leader)
        self._checkpoint_clock = p.elapsed
        if self._stop_requested():  # a Ctrl-C during set-up: do not compile for nothing
            return self
        compiled = self._step_fn()
        self._tick(training=False)
        window: list = []
        window_t0, window_step0 = p.train_seconds, p.step
        while not sched.done(p) and (max_steps is None or p.step - start_step < max_steps):
            if (self.procs is None or p.step % SYNC_EVERY == 0) and self._stop_requested():
                break  # Ctrl-C (tensorf_common.interrupt): the caller keeps the run
            args = self._step_args(self.sampler.next())
            self.model.params, self.opt_state, metrics = compiled(*args)
            window.append(metrics)
            p.step += 1
            synced = p.step % SYNC_EVERY == 0 or p.step % tc.log_every == 0 or self.first_step_at is None
            if synced:
                jax.block_until_ready(metrics["total"])
                if self.first_step_at is None:
                    self.first_step_at = time.perf_counter()
            self._tick(training=True, agree=synced)
            if bar is not None:
                bar.update(1)
            reconfigured = False
            if sched.mask_due(p) or sched.upsample_due(p):
                with self._overhead():
                    while sched.mask_due(p):
                        self._mask_update()
                        reconfigured = True
                    while sched.upsample_due(p):
                        self._upsample()
                        reconfigured = True
            if p.step % tc.log_every == 0 or reconfigured or sched.done(p):
                point = self._log_window(window, p.train_seconds - window_t0, p.step - window_step0)
                window, window_t0, window_step0 = [], p.train_seconds, p.step
                if point is not None and on_log is not None:
                    on_log(point)
                if bar is not None and point is not None:
                    bar.set_postfix(psnr=f"{point.psnr:.2f}", grid="x".join(map(str, self.model.grid_size)))
                self._tick(training=True, agree=False)
            if reconfigured or self._pending_recompile:
                with self._overhead():
                    if reconfigured:
                        self._set_capacities()
                    self._pending_recompile = False
                    compiled = self._step_fn()
            if self.out_dir is not None and self._checkpoint_due():
                with self._overhead():
                    self.save_checkpoint()
        if window:
            self._log_window(window, p.train_seconds - window_t0, p.step - window_step0)
        if bar is not None:
            bar.close()
        return self

    def _checkpoint_due(self) -> bool:
        """Every ``checkpoint_every`` steps, and ``checkpoint_minutes`` after the last checkpoint
        (or the start of :meth:`run`) by the budget clock's last reading."""
        tc = self.tc
        if tc.checkpoint_every and self.pos.step % tc.checkpoint_every == 0:
            return True
        return bool(tc.checkpoint_minutes) and self.pos.elapsed - self._checkpoint_clock >= 60.0 * tc.checkpoint_minutes

    def _log_window(self, window: list, seconds: float, steps: int) -> Optional[LogPoint]:
        if not window:
            return None
        host = jax.device_get(window)
        skipped = sum(not bool(m["finite"]) for m in host)
        self.skipped_steps += skipped
        # with dynamic loss scaling a non-finite step is an expected skip (the scale backs off);
        # without it, or when every step of the window failed, training cannot go on
        scaled = isinstance(self.opt_state, ScaledState)
        if skipped and (not scaled or skipped == len(host)):
            if self.out_dir is not None:
                self.save_checkpoint()
            raise TrainingError(
                f"non-finite loss at step <= {self.pos.step}; stopped with the last good parameters"
                + (f" saved in {self.out_dir}" if self.out_dir is not None else "")
            )
        mse = float(np.mean([m["mse"] for m in host]))
        p, m, sh = self.pos, self.model, self.shape
        total_samples = self.tc.batch_size * sh.samples_in_use
        point = LogPoint(
            step=p.step,
            elapsed=round(p.elapsed, 3),
            mse=mse,
            psnr=float(-10.0 * np.log10(max(mse, 1e-12))),
            lr_grid=float(self.schedule.learning_rates(p)[0]),
            rays_per_s=float(self.tc.batch_size * len(host) / max(seconds, 1e-9)),
            n_samples=sh.samples_in_use,
            grid_size=list(m.grid_size),
            sample_overflow=int(max(int(x["sample_overflow"]) for x in host)),
            app_overflow=int(max(int(x["app_overflow"]) for x in host)),
            valid_fraction=float(np.mean([int(x["valid_samples"]) for x in host]) / total_samples),
            app_fraction=float(np.mean([int(x["app_samples"]) for x in host]) / total_samples),
            train_seconds=round(p.train_seconds, 3),
        )
        self.history.append(point)
        self._grow_capacities(point)
        if not self.progress:
            self.log(log_line(point))
        return point

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs: ``{"arrays": {name: np.ndarray}, "meta": {...}}`` (the
        model, Adam's state, the sampler, the schedule position and the run's logs)."""
        arrays = ckpt.model_arrays(self.model.exact())
        opt = self.opt_state
        if self.tc.static_shapes:  # checkpoints hold exact-size arrays
            opt = map_adam_moments(opt, lambda g: sg.slice_grid(g, self.model.grid_size))
        if isinstance(opt, ScaledState):
            arrays["opt/loss_scale"] = np.asarray(opt.scale.scale)
            arrays["opt/loss_scale_fin_steps"] = np.asarray(opt.scale.fin_steps)
            opt = opt.adam
        arrays["opt/count"] = np.asarray(opt.count)
        arrays.update(ckpt.flatten(opt.mu, "opt/mu"))
        arrays.update(ckpt.flatten(opt.nu, "opt/nu"))
        sampler = dict(self.sampler.state_dict())
        bits = sampler.pop("pool_bits")
        if bits is not None:
            arrays["sampler/pool_bits"] = np.asarray(bits)
        meta = ckpt.model_meta(self.model.exact(), self.cfg)
        if self.tc.static_shapes:
            meta["static_buffers"] = {"grid": self.buf, "mask": self.mask_buf}
        meta.update(
            kind="trainer",
            schedule=dataclasses.asdict(self.pos),
            shape=dataclasses.asdict(self.shape),
            skipped_steps=self.skipped_steps,
            sampler=sampler,
            history=[dataclasses.asdict(p) for p in self.history],
            events=self.events,
            compiles=self.compiles,
            setup_seconds=self.setup_seconds,
        )
        return {"arrays": arrays, "meta": meta}

    @classmethod
    def from_state(cls, state: dict, dataset, *, where: str = "checkpoint", out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = lambda s: None, progress: bool = False) -> "Trainer":
        """A trainer ready to :meth:`run` on from :meth:`state_dict`'s output."""
        from tensorf_common.data import BatchSampler

        arrays, meta = state["arrays"], state["meta"]
        if meta.get("kind") != "trainer":
            raise CheckpointError(f"{where}: kind {meta.get('kind')!r} is a model, not a resumable training run")
        model, cfg = ckpt.model_from_arrays(arrays, meta, where)
        self = cls.__new__(cls)
        self._attach(cfg, dataset, out_dir, log, progress)
        try:
            self.pos = SchedulePosition(**meta["schedule"])
            self.shape = StepShape(**meta["shape"])
            self.history = [LogPoint(**p) for p in meta["history"]]
            sampler_state: dict[str, Any] = dict(meta["sampler"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}: '__meta__' has no valid schedule, shape, history or sampler ({exc})") from None
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.events = list(meta.get("events", []))
        self.compiles = list(meta.get("compiles", []))
        self.setup_seconds = float(meta.get("setup_seconds", 0.0))
        self.model = model
        model.mesh = self.mesh
        self.opt_state = self._optimizer_from_arrays(arrays, where)
        if cfg.train.static_shapes:
            try:
                bufs = meta["static_buffers"]
                self._to_static(bufs["grid"], bufs["mask"])
            except (KeyError, TypeError):
                raise CheckpointError(f"{where}: '__meta__' has no valid 'static_buffers' for a static-shape run") from None
            self.opt_state = map_adam_moments(self.opt_state, lambda g: sg.pad_grid(g, self.buf))
        sampler_state["pool_bits"] = arrays.get("sampler/pool_bits")
        sampler = BatchSampler(self.train_split.n_rays, cfg.train.batch_size, cfg.train.seed)
        try:
            sampler.load_state_dict(sampler_state)
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        if sampler.universe != self.train_split.n_rays:
            raise CheckpointError(
                f"{where}: the run was trained on {sampler.universe} rays, this dataset has {self.train_split.n_rays}"
            )
        self.sampler = sampler
        return self

    def _optimizer_from_arrays(self, arrays: dict, where: str):
        params = self.model.params
        template = jax.eval_shape(lambda: init_optimizer_state(self.adam, params, self.policy))
        adam_template = template.adam if isinstance(template, ScaledState) else template
        if "opt/count" not in arrays:
            raise CheckpointError(f"{where}: missing array 'opt/count'")
        adam_state = adam_template._replace(
            count=jnp.asarray(arrays["opt/count"]),
            mu=ckpt.unflatten(params, arrays, "opt/mu", where),
            nu=ckpt.unflatten(params, arrays, "opt/nu", where),
        )
        if not isinstance(template, ScaledState):
            return adam_state
        if "opt/loss_scale" not in arrays:
            raise CheckpointError(f"{where}: missing array 'opt/loss_scale' for a loss-scaled (fp16) run")
        scale = template.scale.replace(
            scale=jnp.asarray(arrays["opt/loss_scale"]), fin_steps=jnp.asarray(arrays["opt/loss_scale_fin_steps"])
        )
        return ScaledState(adam_state, scale)

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        """Write the run to ``path`` (default ``out_dir/checkpoint.npz``), atomically. With several
        processes every one gathers the state and process 0 writes it."""
        path = Path(path) if path is not None else Path(self.out_dir) / "checkpoint.npz"
        state = self.state_dict()
        if self.procs is None or self.procs.is_writer:
            ckpt.save_checkpoint(path, state)
        if self.procs is not None:
            self.procs.barrier("the checkpoint write")
        self._checkpoint_clock = self.pos.elapsed
        return path

    @classmethod
    def resume(cls, path: Path, dataset, **kwargs) -> "Trainer":
        """The run saved at ``path``, ready to continue (``out_dir`` defaults to its folder)."""
        kwargs.setdefault("out_dir", Path(path).parent)
        return cls.from_state(ckpt.load_checkpoint(path), dataset, where=str(path), **kwargs)


def _round_cap(n: int, total: int) -> int:
    """A capacity of at least ``n``, rounded up to one of a few sizes per octave (so that re-sized
    capacities rarely change the compiled shape), at most ``total``."""
    return int(bucket_capacity(n, total))


@functools.lru_cache(maxsize=None)
def _probe_fn(near: float, far: float, n_samples: int):
    """Valid samples (in the box and the mask) of jittered training rays: sizes the capacities."""
    from .sampling import sample_ray

    @jax.jit
    def fn(state, o, d, jitter):
        _, xyz, valid = sample_ray(o, d, state.aabb, near, far, state.step_size, n_samples, jitter)
        valid = valid & am.query_alpha_mask(state.mask, state.mask_aabb, xyz, state.mask_size)
        return jnp.sum(valid)

    return fn


def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple
