"""The training loop: set-up, the schedule's events, compilation, logging and checkpoints.

The step is the pure function of :mod:`jax_tensorf.step`, compiled ahead of time once per static
shape (:mod:`jax_tensorf.capacities`; :attr:`Trainer.compiles` records each compilation); the
schedule (learning rates, event points, the clock of training seconds) is
:mod:`tensorf_common.schedule`, shared with the torch reference. Events at iteration i follow its
optimizer step, masks before upsamples (official): the first mask update shrinks the box and
switches the L1 weight, the second filters the training rays; an upsample resizes the grids,
resets the learning rates and re-creates Adam (or resizes its moments, like the seed). The loop
syncs with the device every ``SYNC_EVERY`` steps, at log points and before events; only the time
spent in steps advances the schedule clock.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import ExperimentConfig
from tensorf_common.data import BatchSampler
from tensorf_common.errors import CheckpointError, TrainingError
from tensorf_common.interrupt import stop_requested
from tensorf_common.geometry import n_to_reso, train_n_samples
from tensorf_common.schedule import Schedule, TrainingClock, checkpoint_due
from tensorf_common.training_log import LogPoint, log_line, progress_bar, window_point

from . import alpha_mask as am
from . import capacities as caps
from . import checkpoint as ckpt
from . import grid_buffers as gb
from . import static_grid as sg
from .capacities import StepShape
from .model import TensoRF
from .placement import Placement
from .precision import policy_from_config
from .ray_filter import filter_rays_by_box, filter_rays_by_model_mask
from .run_state import LOGS, read_run_state, run_state
from .step import (
    RegFlags,
    ScaledState,
    crop_grid_tree,
    init_optimizer_state,
    make_optimizer,
    make_sharded_step,
    map_adam_moments,
    optimizer_from_arrays,
    resize_grid_tree,
    train_step,
)
from .xla import compile_lowered, release_host_memory

SYNC_EVERY = 10
"""Steps between host syncs in the loop (bounds how far the host runs ahead of the device)."""


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
        self.compiles, self.history, self.events = [], [], []  # see run.json
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
        self.cfg, self.tc, self.dataset, self.train_split = cfg, cfg.train, dataset, dataset["train"]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log, self.progress = log, progress
        self.policy = policy_from_config(self.tc)
        self.adam = make_optimizer(self.tc)
        self.key = jax.random.PRNGKey(self.tc.seed)
        self._compiled: dict = {}
        self._pending_recompile = False
        self._clock: Optional[TrainingClock] = None
        self._checkpoint_clock: Optional[float] = None
        """``pos.elapsed`` at the last checkpoint or :meth:`run`'s start (``checkpoint_minutes`` count from it)."""
        self.first_step_at: Optional[float] = None
        """``time.perf_counter()`` when the first step of this process had finished (None before)."""
        self.interrupted = False
        """:meth:`run` stopped early on a Ctrl-C (the run is whole up to its last step)."""
        self.placement = Placement(self.tc.devices, self.tc.batch_size)
        self.mesh, self.procs = self.placement.mesh, self.placement.procs

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        """The box (carved from the views' alpha, or the dataset's), the initial model, the
        sampler with the rays that miss the box filtered out, and the compaction capacities. The
        carving and the ray filter run as compiled JAX on the default device (on the CPU backend
        numpy carves: the same hull without a compilation, which costs more than it saves there)."""
        from tensorf_common.bounds import require_rays_in_box, training_box
        from .carving import carve_visual_hull

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

    # ------------------------------------------------------------------ shapes
    def _to_static(self, buf, mask_buf=None) -> None:
        """Move the model into fixed buffers (:mod:`jax_tensorf.grid_buffers`)."""
        largest = max(self.tc.n_voxel_init, self.tc.n_voxel_final)
        self.buf, self.mask_buf = gb.place_in_buffers(self.model, self.shape, buf, mask_buf, largest, self.cfg.render)

    def _set_capacities(self, initial: bool = False) -> None:
        """Capacities sized by a probe of a few batches (:mod:`jax_tensorf.capacities`)."""
        probe = lambda: caps.probe_valid_samples(  # noqa: E731
            self.model, self.train_split, self.sampler, self.tc.batch_size, self.shape.samples_in_use,
            self.tc.seed + 7919 * (self.pos.step + 1))
        caps.set_capacities(self.shape, self.cfg.render, self.tc.batch_size, probe, self.history,
                            static=self.tc.static_shapes, initial=initial)

    # ------------------------------------------------------------------ compile
    def _step_fn(self):
        """The compiled train step for the current shapes (compiled ahead of time on first use)."""
        m, sh, n_dev = self.model, self.shape, self.tc.devices
        opts = m.render_options(sh.n_samples, train=True, sample_capacity=caps.per_device(sh.sample_capacity, n_dev),
                                app_capacity=caps.per_device(sh.app_capacity, n_dev))
        reg = RegFlags.of(self.tc)
        sig = (tuple(self.buf if self.tc.static_shapes else m.grid_size), tuple(m.state.mask.shape), opts, reg)
        if sig not in self._compiled:
            args = self._step_args(np.zeros(self.tc.batch_size, np.int64))
            static = dict(cfg=self.cfg.field, opts=opts, variant=self.cfg.render.vmap_variant, reg=reg,
                          adam=self.adam, policy=self.policy)
            if self.mesh is None:
                lowered = train_step.lower(*args, **static)
            else:
                lowered = make_sharded_step(self.mesh, **static).lower(*args)
            compiled, timing = compile_lowered(lowered, "train")
            # grids only grow: executables of other grid sizes are not needed again (a resume
            # recompiles); keeping them would only hold memory
            for old in [k for k in self._compiled if k[0] != sig[0]]:
                del self._compiled[old]
            self._compiled[sig] = compiled
            info = {"grid_size": list(m.grid_size), "n_samples": sh.n_samples, "mask": list(m.state.mask.shape),
                    "sample_capacity": sh.sample_capacity, "app_capacity": sh.app_capacity,
                    "step": self.pos.step} | timing
            self.compiles.append(info)
            release_host_memory(clear_caches=not self.tc.static_shapes)
            if self.procs is not None:  # compilation times differ between processes
                self.procs.barrier("the compilation of the train step")
            self.log(f"compiled train step #{len(self.compiles)} for grid {m.grid_size}, N={sh.n_samples} in {timing['seconds']:.1f}s")
        return self._compiled[sig]

    def drop_executables(self) -> None:
        """Forget the compiled train steps (memory back at the next release); :meth:`run` compiles again."""
        self._compiled.clear()

    def _hyper(self) -> dict:
        """The step's traced hyperparameters: learning rates and regulariser weights (the TV weights
        decay every step and are never reset, official)."""
        sched, p = self.schedule, self.pos
        hyper = dict(zip(("lr_grid", "lr_basis"), sched.learning_rates(p))) | sched.loss_weights(p)
        return {k: jnp.float32(v) for k, v in hyper.items()} | (
            {"n_samples": jnp.int32(self.shape.n_active)} if self.tc.static_shapes else {})

    def _step_args(self, idx: np.ndarray):
        """The step's arguments for the global batch ``idx`` (every process draws the same one
        and loads only its own rows)."""
        o, d, rgb = self.train_split.batch(self.placement.local_rows(idx))
        key = jax.random.fold_in(self.key, self.pos.step + 1)
        if self.mesh is not None:
            self.model.params, self.opt_state, self.model.state = self.placement.put(
                (self.model.params, self.opt_state, self.model.state))
            o, d, rgb = self.placement.put((o, d, rgb), batch=True)
            key, hyper = self.placement.put((key, self._hyper()))
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
        if tc.static_shapes:
            new_aabb = gb.alpha_mask_in_buffers(m, self.mask_buf, reso, self.cfg.field, self.cfg.render.alpha_mask_thres)
        else:
            new_aabb = m.update_alpha_mask(reso)
        first = p.mask_done == 0
        event = {"event": "alpha_mask", "step": p.step, "elapsed": round(p.elapsed, 2),
                 "train_seconds": round(p.train_seconds, 2), "mask": list(reso)}
        if new_aabb is None:
            event["empty"] = True
            self.log(f"step {p.step}: the alpha mask would be empty; keeping the previous mask and box")
        elif first:
            if tc.static_shapes:
                self.opt_state = gb.shrink_in_buffers(m, self.opt_state, new_aabb)
            else:
                t_l, b_r, _, _ = am.shrink_box(m.aabb, m.grid_size, new_aabb, m.mask_grid_size)
                m.shrink(new_aabb)
                self.opt_state = map_adam_moments(self.opt_state, lambda g: crop_grid_tree(g, t_l, b_r, self.cfg.field.model))
            event.update(shrunk_aabb=m.aabb.tolist(), grid_size=m.grid_size)
        if p.mask_done == 1 and tc.ray_filter and tc.ray_filter_mask and new_aabb is not None:
            keep = filter_rays_by_model_mask(self.train_split, self.sampler.pool(), m)
            if keep.size:
                self.sampler.restrict(keep)
            event["rays_kept"] = int(self.sampler.pool_size)
        self.schedule.note_mask_update(p)
        event["seconds"] = round(time.perf_counter() - t0, 2)
        self.events.append(event)
        self.log(f"step {p.step}: {json.dumps(event)}")

    def _upsample(self) -> None:
        tc, m, p = self.tc, self.model, self.pos
        reso = n_to_reso(tc.voxel_schedule()[p.upsample_done], m.aabb)
        old = m.grid_size
        if tc.static_shapes:
            self.opt_state, self.buf, self.mask_buf = gb.resize_in_buffers(
                m, self.opt_state, self.shape, self.buf, self.mask_buf, reso, self.cfg.render,
                tc.optimizer_on_upsample == "resize", lambda s: self.log(f"step {p.step}: {s}"))
        else:
            m.upsample(reso)
        if tc.optimizer_on_upsample == "recreate":
            scale = self.opt_state.scale if isinstance(self.opt_state, ScaledState) else None
            self.opt_state = init_optimizer_state(self.adam, m.params, self.policy, scale)
        elif not tc.static_shapes:  # static shapes: resampled with the grids
            self.opt_state = map_adam_moments(self.opt_state, lambda g: resize_grid_tree(g, reso, self.cfg.field.model))
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
        self._clock.tick(training=False)
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
            self._clock.tick(training=True, agree=synced)
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
                self._clock.tick(training=True, agree=False)
            if reconfigured or self._pending_recompile:
                with self._overhead():
                    if reconfigured:
                        self._set_capacities()
                    self._pending_recompile = False
                    compiled = self._step_fn()
            if self.out_dir is not None and checkpoint_due(tc, p, self._checkpoint_clock):
                with self._overhead():
                    self.save_checkpoint()
        if window:
            self._log_window(window, p.train_seconds - window_t0, p.step - window_step0)
        if bar is not None:
            bar.close()
        return self

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
        p, sh = self.pos, self.shape
        point = window_point(
            step=p.step, elapsed=p.elapsed, train_seconds=p.train_seconds, seconds=seconds, batch_size=self.tc.batch_size,
            n_samples=sh.samples_in_use, grid_size=self.model.grid_size, mse=[m["mse"] for m in host],
            valid=[m["valid_samples"] for m in host], app=[m["app_samples"] for m in host],
            lr_grid=self.schedule.learning_rates(p)[0],
            sample_overflow=max(int(x["sample_overflow"]) for x in host),
            app_overflow=max(int(x["app_overflow"]) for x in host),
        )
        self.history.append(point)
        grown = dataclasses.replace(self.shape)
        if caps.grow_capacities(grown, self.tc.batch_size, point):
            left = None if self.procs is not None else self.schedule.seconds_left(p)  # processes always grow
            if caps.compile_pays_off(left, [c["seconds"] for c in self.compiles]):
                self.shape = sh = grown
                self.events.append({"event": "capacity", "step": p.step, "sample": sh.sample_capacity, "app": sh.app_capacity})
                self.log(f"step {p.step}: capacity overflow; sample capacity {sh.sample_capacity}, app capacity {sh.app_capacity}")
                self._pending_recompile = True  # the step compiles again at the next schedule check
            elif not any(e["event"] == "capacity_kept" for e in self.events):
                self.events.append({"event": "capacity_kept", "step": p.step, "seconds_left": round(left, 1)})
                self.log(f"step {p.step}: capacity overflow; kept the compiled step ({left:.0f} s of budget left)")
        if not self.progress:
            self.log(log_line(point))
        return point

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs (:func:`jax_tensorf.run_state.run_state`)."""
        logs = {k: getattr(self, k) for k in LOGS}
        buffers = (self.buf, self.mask_buf) if self.tc.static_shapes else None
        return run_state(self.model, self.opt_state, self.sampler, self.cfg, self.pos, self.shape, self.history,
                         logs, buffers)

    @classmethod
    def from_state(cls, state: dict, dataset, *, where: str = "checkpoint", out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = lambda s: None, progress: bool = False) -> "Trainer":
        """A trainer ready to :meth:`run` on from :meth:`state_dict`'s output."""
        parts = read_run_state(state, where)
        self = cls.__new__(cls)
        self._attach(parts.cfg, dataset, out_dir, log, progress)
        self.pos, self.shape, self.history = parts.pos, parts.shape, parts.history
        for k in LOGS:
            setattr(self, k, parts.logs[k])
        self.model = parts.model
        self.model.mesh = self.mesh
        self.opt_state = optimizer_from_arrays(parts.arrays, self.adam, self.model.params, self.policy, where)
        if parts.buffers is not None:
            self._to_static(*parts.buffers)
            self.opt_state = map_adam_moments(self.opt_state, lambda g: sg.pad_grid(g, self.buf))
        try:
            self.sampler = BatchSampler.restored(parts.sampler, self.train_split.n_rays)
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        return self

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

