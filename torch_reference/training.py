"""The training loop of the torch reference: set-up, the schedule's events, logging and checkpoints
(the twin of :mod:`jax_tensorf.training`, with the same :class:`Trainer` methods).

The step is :mod:`torch_reference.step`; every schedule decision (learning rates, TV weights, when
masks and upsamples happen, when training ends) is :mod:`tensorf_common.schedule`'s, shared with
the JAX trainer. Events at iteration i happen after the optimizer step of iteration i, masks before
upsamples (official): the first mask update shrinks the box and switches the L1 weight, the second
filters the training rays; an upsample resizes the grids (log-space voxel counts), resets the
learning rates and re-creates Adam (or, optionally, resizes its moments). Set-up as in JAX: the box
from the dataset or carved from the training views' alpha (:func:`tensorf_common.bounds.training_box`),
the rays that miss the box filtered out.

Learning rates: on iterations (official) they decay multiplicatively in the optimizer after every
step, by :func:`tensorf_common.schedule.lr_factor`; on seconds of training (``schedule_unit='fraction'``
with a budget) they are set before every step from the schedule's clock of training seconds (set-up,
mask updates, ray filtering and checkpoints excluded; CUDA is synchronised before such work is timed).

Deliberate differences from the official code:

- the official shrink replaces the grid Parameters but keeps the old optimizer, which then steps the
  orphaned pre-shrink tensors until the next upsample re-creates Adam (invisible in the official
  configs, where the first mask update and an upsample share an iteration). Here Adam is rebuilt
  after a shrink with its moments cropped like the grids (as the JAX twin does);
- with ``lr_upsample_reset=False`` the official new Adam starts at ``ratio ** (iteration / n_iters)``,
  one step behind its own decay; here it continues at the schedule's rate, as in JAX.

Not supported (ConfigError naming the field): see :func:`check_supported`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from tensorf_common.config import ConfigError, ExperimentConfig
from tensorf_common.errors import CheckpointError, TrainingError
from tensorf_common.geometry import n_to_reso, train_n_samples
from tensorf_common.interrupt import stop_requested
from tensorf_common.schedule import Schedule, SchedulePosition, TrainingClock, checkpoint_due, lr_factor
from tensorf_common.training_log import LogPoint, log_line, progress_bar, window_point

from . import checkpoint as ckpt
from .alpha_mask import AlphaGridMask, shrink_box
from .model import TensorBase
from .step import (
    LossWeights,
    decay_learning_rates,
    grid_transform,
    learning_rates_of,
    make_optimizer,
    rebuild_optimizer,
    set_learning_rates,
    train_step,
)

IGNORED_FIELDS = (
    "render.vmap_variant",
    "render.density_lookup",
    "render.sample_capacity",
    "render.app_capacity",
    "train.static_shapes",
)
"""JAX speed knobs without semantic effect (how lookups are vectorised, how samples are compacted,
whether buffers have a fixed size): the torch reference ignores them (``train_run`` records them)."""


def check_supported(cfg: ExperimentConfig) -> dict[str, Any]:
    """Refuse (ConfigError naming the field) what the torch reference cannot honour; return the
    ignored JAX-only fields (:data:`IGNORED_FIELDS`) with their values."""
    tc, rc = cfg.train, cfg.render
    if tc.precision != "fp32":
        raise ConfigError(f"train.precision: the torch reference trains in fp32 only, got {tc.precision!r}")
    if tc.devices != 1:
        raise ConfigError(f"train.devices: the torch reference trains on one device, got {tc.devices}")
    if rc.depth != "mean":
        raise ConfigError(f"render.depth: the torch reference renders the expected depth (mean) only, got {rc.depth!r}")
    if rc.n_samples_eval is not None:
        raise ConfigError(
            f"render.n_samples_eval: the torch reference evaluates with the model's own sample count, got {rc.n_samples_eval}"
        )
    out = {}
    for name in IGNORED_FIELDS:
        section, field = name.split(".")
        out[name] = getattr(getattr(cfg, section), field)
    return out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to_rays(o: np.ndarray, d: np.ndarray, device: torch.device) -> Tensor:
    return torch.cat([torch.as_tensor(np.asarray(o, np.float32)), torch.as_tensor(np.asarray(d, np.float32))], -1).to(device)


def _stderr(s: str) -> None:
    print(s, file=sys.stderr)


class Trainer:
    """Train a torch TensoRF on a Blender-format dataset with the official schedule.

    ``trainer = Trainer(cfg, dataset); trainer.run()``; ``trainer.model`` is the result. The dataset
    is a :class:`tensorf_common.data.BlenderDataset` (or anything with ``["train"]``, ``aabb``,
    ``near_far`` and ``white_bg``). ``Trainer.resume(path, dataset)`` continues a run from
    :meth:`save_checkpoint`'s file. Batches are :class:`tensorf_common.data.BatchSampler`'s (the JAX
    trainer's), the jitter a torch generator seeded with ``train.seed``; the initial grids come from
    ``train.seed`` too (the global torch RNG is left alone).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        dataset,
        *,
        out_dir: Optional[Path] = None,
        log: Callable[[str], None] = _stderr,
        progress: bool = False,
        device: Union[str, torch.device, None] = None,
    ):
        self._attach(cfg, dataset, out_dir, log, progress, device)
        self.pos = self.schedule.start()
        self.history: list[LogPoint] = []
        self.events: list[dict] = []
        self._setup()
        self.pos.elapsed = self.setup_seconds  # set-up counts against the budget

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.tc)

    def _attach(self, cfg: ExperimentConfig, dataset, out_dir, log, progress, device) -> None:
        """Host-side objects derived from the config and the dataset (a fresh run and a resumed one alike)."""
        self.ignored = check_supported(cfg)
        self.cfg, self.tc = cfg, cfg.train
        self.dataset = dataset
        self.train_split = dataset["train"]
        self.white_bg = bool(dataset.white_bg)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.log = log
        self.progress = progress
        self.device = torch.device(device) if device is not None else default_device()
        self.generator = torch.Generator().manual_seed(self.tc.seed)
        self.compiles: list[dict] = []  # eager torch: nothing is compiled
        self.first_step_at: Optional[float] = None
        """``time.perf_counter()`` when the first step of this process had finished (None before)."""

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from tensorf_common.bounds import require_rays_in_box, training_box
        from tensorf_common.data import BatchSampler

        t0 = time.perf_counter()
        tc, split, cfg = self.tc, self.train_split, self.cfg
        box = training_box(split, self.dataset.aabb, tc)
        if box.event is not None:
            self.events.append(box.event)
        reso = n_to_reso(tc.n_voxel_init, box.aabb)
        with torch.random.fork_rng(devices=[]):  # the initial grids from the run's seed (drawn on the CPU)
            torch.default_generator.manual_seed(tc.seed)
            self.model = TensorBase.from_config(
                cfg.field, cfg.render, box.aabb.tolist(), reso, [float(v) for v in self.dataset.near_far], self.device
            )
        if box.mask is not None:
            self.model.alphaMask = AlphaGridMask(torch.as_tensor(box.mask_aabb), torch.from_numpy(box.mask)).to(self.device)
        self.n_samples = train_n_samples(reso, cfg.render.step_ratio, cfg.render.max_samples)
        self.mask_reso: Optional[list[int]] = None
        self.optimizer = make_optimizer(self.model, tc)
        self.sampler = BatchSampler(split.n_rays, tc.batch_size, tc.seed)
        if tc.ray_filter:
            keep = self._keep_rays(self.sampler.pool(), bbox_only=True)
            source = "data.aabb" if cfg.data.aabb is not None else "the dataset's default box"
            require_rays_in_box(keep.size, split, box.aabb, source + (", carved" if box.event is not None else ""))
            self.sampler.restrict(keep)
            self.events.append({"event": "ray_filter_box", "kept": int(self.sampler.pool_size), "of": int(split.n_rays)})
        self._sync()
        self.setup_seconds = time.perf_counter() - t0

    @torch.no_grad()
    def _keep_rays(self, pool: np.ndarray, bbox_only: bool, chunk: int = 1 << 16) -> np.ndarray:
        """The rays of ``pool`` that the official ``filtering_rays`` keeps (box or mask)."""
        keep = np.zeros(pool.size, dtype=bool)
        for start in range(0, pool.size, chunk):
            idx = pool[start : start + chunk]
            o, d = self.train_split.rays(idx)
            rays = _to_rays(o, d, self.device)
            keep[start : start + idx.size] = self.model.ray_keep_mask(rays, bbox_only=bbox_only).cpu().numpy()
        return pool[keep]

    def _sync(self) -> None:
        """Wait for the queued device work (before work is timed as training or as overhead)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ events
    def _mask_update(self) -> None:
        tc, m, p = self.tc, self.model, self.pos
        t0 = time.perf_counter()
        grid = m.gridSize.tolist()
        if self.mask_reso is None or math.prod(grid) < tc.mask_max_voxels:
            self.mask_reso = grid  # official: the mask resolution stops growing at 256^3
        reso = list(self.mask_reso)
        new_aabb = m.updateAlphaMask(tuple(reso))
        first = p.mask_done == 0
        event: dict[str, Any] = {"event": "alpha_mask", "step": p.step, "elapsed": round(p.elapsed, 2),
                                 "train_seconds": round(p.train_seconds, 2), "mask": reso}
        if new_aabb is None:
            event["empty"] = True
            self.log(f"step {p.step}: the alpha mask would be empty; keeping the previous mask and box")
        elif first:
            mask_grid = m.alphaMask.gridSize if m.alphaMask is not None else grid
            t_l, b_r, _, _ = shrink_box(m.aabb.cpu(), grid, torch.as_tensor(new_aabb).cpu(), mask_grid)
            m.shrink(new_aabb)
            self.optimizer = rebuild_optimizer(self.optimizer, m, tc, grid_transform(m, "crop", t_l, b_r))
            event.update(shrunk_aabb=m.aabb.tolist(), grid_size=m.gridSize.tolist())
        if p.mask_done == 1 and tc.ray_filter and tc.ray_filter_mask and new_aabb is not None:
            keep = self._keep_rays(self.sampler.pool(), bbox_only=False)
            if keep.size:
                self.sampler.restrict(keep)
            event["rays_kept"] = int(self.sampler.pool_size)
        self.schedule.note_mask_update(p)
        event["seconds"] = round(time.perf_counter() - t0, 2)
        self.events.append(event)
        self.log(f"step {p.step}: {json.dumps(event)}")

    def _upsample(self) -> None:
        tc, m, p, sched = self.tc, self.model, self.pos, self.schedule
        reso = n_to_reso(tc.voxel_schedule()[p.upsample_done], m.aabb.cpu().numpy())
        old = m.gridSize.tolist()
        m.upsample_volume_grid(reso)
        if tc.optimizer_on_upsample == "resize":
            self.optimizer = rebuild_optimizer(self.optimizer, m, tc, grid_transform(m, "resize", reso))
        else:
            self.optimizer = make_optimizer(m, tc)
        sched.note_upsample(p)  # the next step starts from the initial rates (lr_upsample_reset)
        set_learning_rates(self.optimizer, m, *sched.learning_rates(p))
        self.n_samples = train_n_samples(reso, self.cfg.render.step_ratio, self.cfg.render.max_samples)
        self.events.append({"event": "upsample", "step": p.step, "elapsed": round(p.elapsed, 2),
                            "train_seconds": round(p.train_seconds, 2), "from": old, "to": list(reso)})
        self.log(f"step {p.step}: upsample {old} -> {list(reso)}, {self.n_samples} samples per ray")

    # ------------------------------------------------------------------ main loop
    def _step(self, weights: LossWeights) -> dict[str, Tensor]:
        o, d, rgb = self.train_split.batch(self.sampler.next())
        rays = _to_rays(o, d, self.device)
        rgbs = torch.as_tensor(np.asarray(rgb, np.float32)).to(self.device)
        jitter = torch.rand(rays.shape[0], generator=self.generator).to(self.device)
        coin = None if self.white_bg else bool(torch.rand(1, generator=self.generator) < 0.5)
        return train_step(self.model, self.optimizer, rays, rgbs, weights, n_samples=self.n_samples,
                          white_bg=self.white_bg, jitter=jitter, train_white_bg=coin)

    def run(self, max_steps: Optional[int] = None, on_log: Optional[Callable[[LogPoint], None]] = None) -> "Trainer":
        """Train until n_iters, the budget, or ``max_steps`` more steps (for tests and resumes)."""
        tc, p, sched = self.tc, self.pos, self.schedule
        start_step = p.step
        bar = progress_bar(None if sched.uses_time else tc.n_iters, self.progress)
        if bar is not None:
            bar.update(p.step)
        clock = TrainingClock(p, lambda: time.perf_counter())  # read late: tests swap this module's time
        window: list[dict[str, Tensor]] = []
        window_t0 = p.train_seconds
        used: tuple[float, float, float] = (0.0, 0.0, 0.0)
        last_checkpoint = p.elapsed  # the periodic checkpoint counts from here (budget clock)
        while not sched.done(p) and (max_steps is None or p.step - start_step < max_steps):
            if stop_requested():  # Ctrl-C (tensorf_common.interrupt): the caller keeps the run
                break
            if sched.uses_time:
                set_learning_rates(self.optimizer, self.model, *sched.learning_rates(p))
            weights = LossWeights(**sched.loss_weights(p))
            used = (*learning_rates_of(self.optimizer), p.l1_weight)
            window.append(self._step(weights))
            p.step += 1
            if self.first_step_at is None:
                self._sync()
                self.first_step_at = time.perf_counter()
            clock.tick(training=True)
            if not sched.uses_time:
                decay_learning_rates(self.optimizer, lr_factor(tc, sched.span(p)))
            if bar is not None:
                bar.update(1)
            events_due = sched.mask_due(p) or sched.upsample_due(p)
            if p.step % tc.log_every == 0 or events_due or sched.done(p):
                point = self._log_window(window, used, p.train_seconds - window_t0)
                window, window_t0 = [], p.train_seconds
                if on_log is not None:
                    on_log(point)
                if bar is not None:
                    bar.set_postfix(psnr=f"{point.psnr:.2f}", grid="x".join(map(str, point.grid_size)))
                clock.tick(training=True)
            if events_due:
                with clock.overhead(self._sync):
                    while sched.mask_due(p):
                        self._mask_update()
                    while sched.upsample_due(p):
                        self._upsample()
            if self.out_dir is not None and checkpoint_due(tc, p, last_checkpoint):
                with clock.overhead(self._sync):
                    self.save_checkpoint()
                last_checkpoint = p.elapsed
        if window:
            point = self._log_window(window, used, p.train_seconds - window_t0)
            if on_log is not None:
                on_log(point)
        if bar is not None:
            bar.close()
        return self

    def _log_window(self, window: list[dict[str, Tensor]], used: tuple[float, float, float], seconds: float) -> LogPoint:
        p, m = self.pos, self.model
        totals = torch.stack([w["total"] for w in window])
        if not bool(torch.isfinite(totals).all()):
            raise TrainingError(f"non-finite loss at step <= {p.step}")
        point = window_point(
            step=p.step, elapsed=p.elapsed, train_seconds=p.train_seconds, seconds=seconds, batch_size=self.tc.batch_size,
            n_samples=self.n_samples, grid_size=m.gridSize.tolist(),
            mse=torch.stack([w["mse"] for w in window]).cpu().numpy(),
            valid=torch.stack([w["n_density"] for w in window]).float().cpu().numpy(),
            app=torch.stack([w["n_appearance"] for w in window]).float().cpu().numpy(),
            lr_grid=used[0], total=float(totals.mean()), lr_basis=used[1], l1_weight=used[2],
        )
        self.history.append(point)
        if not self.progress:
            self.log(log_line(point))
        return point

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs: the model's official checkpoint dict whose
        ``'tensorf_bench'`` entry holds the config, Adam's state, the schedule position, the sampler
        and jitter-generator state and the run's logs (plain data and tensors)."""
        sampler = dict(self.sampler.state_dict())
        if sampler["pool_bits"] is not None:
            sampler["pool_bits"] = torch.from_numpy(np.asarray(sampler["pool_bits"]))
        extra = {
            "kind": "trainer",
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": dataclasses.asdict(self.pos),
            "sampler": sampler,
            "generator": self.generator.get_state(),
            "n_samples": int(self.n_samples),
            "mask_reso": self.mask_reso,
            "history": [dataclasses.asdict(h) for h in self.history],
            "events": self.events,
            "setup_seconds": float(self.setup_seconds),
        }
        return ckpt.checkpoint_dict(self.model, extra=extra)

    @classmethod
    def from_state(cls, state: dict, dataset, *, where: str = "checkpoint", out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = lambda s: None, progress: bool = False,
                   device: Union[str, torch.device, None] = None) -> "Trainer":
        """A trainer ready to :meth:`run` on from :meth:`state_dict`'s output; a damaged state is
        refused with a CheckpointError naming ``where`` and the field."""
        from tensorf_common.data import BatchSampler

        extra = state.get(ckpt.EXTRA_KEY)
        if not isinstance(extra, dict) or extra.get("kind") != "trainer":
            raise CheckpointError(f"{where}: no {ckpt.EXTRA_KEY!r} training state: a model, not a resumable training run")

        def field(name: str):
            if name not in extra:
                raise CheckpointError(f"{where}: {ckpt.EXTRA_KEY}/{name} is missing")
            return extra[name]

        def bad(name: str, exc: BaseException) -> CheckpointError:
            return CheckpointError(f"{where}: {ckpt.EXTRA_KEY}/{name} is not valid ({type(exc).__name__}: {exc})")

        try:
            cfg = ExperimentConfig.from_dict(field("config"))
        except (ConfigError, TypeError) as exc:
            raise bad("config", exc) from None
        self = cls.__new__(cls)
        self._attach(cfg, dataset, out_dir, log, progress, device)
        model = ckpt.model_from_checkpoint(state, self.device, source=where)
        model.appearance, model.topk = cfg.render.appearance, int(cfg.render.topk)  # not in the official kwargs
        self.model = model
        self.optimizer = make_optimizer(model, self.tc)
        try:
            self.optimizer.load_state_dict(field("optimizer"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise bad("optimizer", exc) from None
        for p, st in self.optimizer.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st and tuple(st[key].shape) != tuple(p.shape):
                    raise bad("optimizer", ValueError(f"{key} of shape {tuple(st[key].shape)} for a parameter of shape {tuple(p.shape)}"))
        try:
            self.pos = SchedulePosition(**field("schedule"))
        except TypeError as exc:
            raise bad("schedule", exc) from None
        try:
            self.generator.set_state(field("generator"))
        except (TypeError, RuntimeError) as exc:
            raise bad("generator", exc) from None
        try:
            self.history = [LogPoint(**h) for h in field("history")]
        except TypeError as exc:
            raise bad("history", exc) from None
        sampler_state = dict(field("sampler"))
        bits = sampler_state.get("pool_bits")
        sampler_state["pool_bits"] = bits.numpy() if isinstance(bits, Tensor) else bits
        try:
            self.sampler = BatchSampler.restored(sampler_state, self.train_split.n_rays)
        except ValueError as exc:
            raise CheckpointError(f"{where}: {ckpt.EXTRA_KEY}/sampler: {exc}") from None
        self.n_samples = int(field("n_samples"))
        self.mask_reso = field("mask_reso")
        self.events = list(field("events"))
        self.setup_seconds = float(field("setup_seconds"))
        return self

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        """Write the run to ``path`` (default ``out_dir/checkpoint.th``), atomically."""
        path = Path(path) if path is not None else Path(self.out_dir) / "checkpoint.th"
        return ckpt.save_training_state(path, self.state_dict())

    @classmethod
    def resume(cls, path: Path, dataset, **kwargs) -> "Trainer":
        """The run saved at ``path``, ready to continue (``out_dir`` defaults to its folder)."""
        kwargs.setdefault("out_dir", Path(path).parent)
        return cls.from_state(ckpt.load_training_state(path), dataset, where=str(path), **kwargs)
