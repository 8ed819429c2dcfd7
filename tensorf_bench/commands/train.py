"""Training subcommands: ``train``, ``eval`` and ``render`` (the JAX TensoRF)."""

from __future__ import annotations

import dataclasses
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tensorf_common.config import ConfigError, ExperimentConfig, Precision, preset


def _preset_from_argv(argv, default: str) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return default


@dataclass
class Train:
    """Train the JAX TensoRF on a Blender-format dataset, then evaluate it on the test split.

    Writes RUN_DIR/checkpoint.npz (resumable), model.npz, eval/<frame>.png (+ depth/), eval/metrics.json
    and .csv, and run.json (config, PSNR curve over wall-clock, throughput, compile times, peak memory).
    The last line printed is the mean test PSNR.
    """

    data: Optional[str] = None
    """Dataset folder; default: the built-in procedural scene (generated once into the cache)."""
    preset: str = "cpu"
    """Preset whose values are the defaults below: official (the published lego config), cpu (a
    2-core CPU and a wall-clock budget), gpu (one H100/H200 and a wall-clock budget), smoke (seconds,
    for tests)."""
    out: Optional[Path] = None
    """Run folder (RUN_DIR); default: runs/<preset>-<timestamp>."""
    minutes: Optional[float] = None
    """Wall-clock training budget in minutes (overrides config.train.minutes)."""
    steps: Optional[int] = None
    """Training iterations (overrides config.train.n_iters)."""
    precision: Optional[Precision] = None
    """Compute precision of lookups, features and the MLP: fp32, bf16 or fp16 (overrides
    config.train.precision; parameters and Adam stay fp32)."""
    resume: bool = False
    """Continue the run in --out from its checkpoint."""
    eval: bool = True
    """Evaluate on the test split at the end."""
    lpips: bool = True
    """Compute LPIPS (alex and vgg) in the evaluation."""
    progress: bool = True
    """Show a progress bar while stderr is a terminal (a redirected run logs the periodic step lines
    only)."""
    distributed: bool = False
    """Train on several processes (hosts) with JAX's distributed runtime: start the same command on
    every host; the mesh spans every process's devices (config.train.devices left at 1 becomes their
    total), each process loads the dataset at --data and feeds its share of each batch, process 0
    alone writes --out (required; the same path on every process, where --resume reads the
    checkpoint). On CPU the processes exchange gradients over gloo."""
    coordinator: Optional[str] = None
    """With --distributed: HOST:PORT of process 0, where JAX's coordinator listens (the same on
    every process); default: detected from SLURM, Open MPI or a cloud TPU environment."""
    num_processes: Optional[int] = None
    """With --distributed: the number of processes; default: detected like --coordinator."""
    process_id: Optional[int] = None
    """With --distributed: this process's id, 0 .. N-1 (0 writes the run folder); default:
    detected like --coordinator."""
    connect_timeout: float = 120.0
    """With --distributed: seconds to wait for every process to connect before giving up (exit 2)."""
    config: ExperimentConfig = dataclasses.field(default_factory=lambda: preset("cpu"))
    """Every setting; the preset's values are the defaults."""

    @classmethod
    def defaults_from_argv(cls, argv) -> "Train":
        name = _preset_from_argv(argv, "cpu")
        return cls(preset=name, config=preset(name))

    def resolved_config(self) -> ExperimentConfig:
        cfg = self.config
        train = cfg.train
        if self.minutes is not None:
            train = dataclasses.replace(train, minutes=self.minutes)
        if self.steps is not None:
            train = dataclasses.replace(train, n_iters=self.steps)
        if self.precision is not None:
            train = dataclasses.replace(train, precision=self.precision)
        return dataclasses.replace(cfg, train=train)

    def run(self) -> int:
        from tensorf_common.data.scene_cache import resolve_data_dir

        from jax_tensorf.run import train_run

        cfg = self.resolved_config()
        procs = None
        if self.distributed:
            import jax

            from jax_tensorf.distributed import initialize

            procs = initialize(self.coordinator, self.num_processes, self.process_id, timeout=self.connect_timeout)
            if cfg.train.devices == 1:  # the default: every device of every process
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, devices=jax.device_count()))
        from jax_tensorf.distributed import together

        with together(procs, "checking the options"):
            if procs is not None and self.out is None:
                raise ConfigError("--out: give the run folder with --distributed (the same path on every process)")
            data_dir = resolve_data_dir(self.data)
            out = self.out or Path("runs") / f"{self.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            if self.resume and not (Path(out) / "checkpoint.npz").exists():
                raise ConfigError(f"--resume: {out}/checkpoint.npz does not exist")
        quiet = procs is not None and not procs.is_writer
        where = "" if procs is None else f" as process {procs.index} of {procs.count}"
        print(f"training ({self.preset}) on {data_dir} -> {out}{where}", file=sys.stderr)
        summary = train_run(
            cfg, data_dir, out, resume=self.resume, evaluate=self.eval, lpips=self.lpips,
            progress=self.progress and sys.stderr.isatty() and not quiet,
            **({"log": lambda s: None} if quiet else {}),
        )
        if quiet:
            print(f"steps {summary['steps']}; process 0 wrote the run folder")
            return 0
        print(
            f"steps {summary['steps']}, trained {summary['train_seconds']:.1f} s, "
            f"{summary['rays_per_s'] or 0:.0f} rays/s, grid {'x'.join(map(str, summary['grid_size']))}, "
            f"peak memory {summary['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
        if self.eval:
            mean = summary["eval"]["mean"]
            print(f"mean test PSNR {mean['psnr']:.2f} dB (SSIM {mean['ssim']:.4f}) over {summary['eval']['n_images']} views")
        return 0


def _load_model(ckpt: Path):
    from jax_tensorf.checkpoint import load_model

    return load_model(ckpt)


def _checkpoint_path(run: Optional[Path], ckpt: Optional[Path]) -> Path:
    if ckpt is not None:
        return Path(ckpt)
    if run is not None:
        return Path(run) / "model.npz"
    raise ConfigError("give --run-dir RUN_DIR or --ckpt FILE")


@dataclass
class Eval:
    """Evaluate a trained JAX model on a split: PSNR / SSIM / LPIPS per view and mean, with renders."""

    run_dir: Optional[Path] = None
    """Run folder written by `train` (reads RUN_DIR/model.npz)."""
    ckpt: Optional[Path] = None
    """A model or training checkpoint (.npz) instead of --run-dir."""
    data: Optional[str] = None
    """Dataset folder; default: the run's dataset, else the built-in procedural scene."""
    split: str = "test"
    """Split to evaluate."""
    out: Optional[Path] = None
    """Where to write renders and metrics; default RUN_DIR/eval-<split> (or next to the checkpoint)."""
    stride: int = 1
    """Evaluate every n-th view of the split."""
    max_views: Optional[int] = None
    """Evaluate at most this many views."""
    lpips: bool = True
    """Compute LPIPS (alex and vgg)."""

    def run(self) -> int:
        import json

        from tensorf_common.data.blender import load_blender
        from tensorf_common.data.scene_cache import resolve_data_dir

        from jax_tensorf.evaluation import evaluate_split

        path = _checkpoint_path(self.run_dir, self.ckpt)
        model, cfg = _load_model(path)
        data = self.data
        if data is None and self.run_dir is not None and (Path(self.run_dir) / "run.json").exists():
            data = json.loads((Path(self.run_dir) / "run.json").read_text()).get("data")
        data_dir = resolve_data_dir(data)
        ds = load_blender(
            data_dir,
            splits=(self.split,),
            downsample=cfg.data.downsample,
            white_bg=cfg.data.white_bg,
            near_far=cfg.data.near_far,
            aabb=cfg.data.aabb,
            max_views=self.max_views,
            stride=self.stride,
        )
        out = self.out or path.parent / f"eval-{self.split}"
        results, render_s = evaluate_split(model, ds[self.split], out, lpips=self.lpips)
        m = results.mean
        print(f"wrote {len(results.per_image)} renders and metrics to {out} ({render_s:.1f} s rendering)")
        print(json.dumps({k: m[k] for k in m}, default=str))
        print(f"mean {self.split} PSNR {m['psnr']:.2f} dB")
        return 0


@dataclass
class Render:
    """Render RGB and depth PNGs of chosen views of a split, or an orbit GIF around the scene."""

    run_dir: Optional[Path] = None
    """Run folder written by `train` (reads RUN_DIR/model.npz)."""
    ckpt: Optional[Path] = None
    """A model or training checkpoint (.npz) instead of --run-dir."""
    data: Optional[str] = None
    """Dataset folder (for cameras); default: the run's dataset, else the built-in procedural scene."""
    split: str = "test"
    """Split whose cameras are used."""
    views: tuple[int, ...] = (0,)
    """Views of the split to render."""
    orbit: int = 0
    """Also render an orbit of this many frames (0: none) as orbit.gif, at the split's elevation."""
    out: Optional[Path] = None
    """Output folder; default RUN_DIR/render."""

    def run(self) -> int:
        import json

        import numpy as np

        from tensorf_common.data.blender import load_blender
        from tensorf_common.data.scene_cache import resolve_data_dir
        from tensorf_common.images import to_uint8, write_depth_png, write_png

        from jax_tensorf.evaluation import render_view

        path = _checkpoint_path(self.run_dir, self.ckpt)
        model, cfg = _load_model(path)
        data = self.data
        if data is None and self.run_dir is not None and (Path(self.run_dir) / "run.json").exists():
            data = json.loads((Path(self.run_dir) / "run.json").read_text()).get("data")
        ds = load_blender(resolve_data_dir(data), splits=(self.split,), downsample=cfg.data.downsample)
        split = ds[self.split]
        out = Path(self.out or path.parent / "render")
        (out / "depth").mkdir(parents=True, exist_ok=True)
        for v in self.views:
            if not 0 <= v < split.n_views:
                raise ConfigError(f"--views: view {v} is outside 0..{split.n_views - 1} of split {self.split}")
            r = render_view(model, split, v)
            name = split.frame_names[v]
            write_png(out / f"{name}.png", to_uint8(r["rgb"]))
            write_depth_png(out / "depth" / f"{name}.png", r["depth"], *model.near_far)
        print(f"wrote {len(self.views)} views to {out}")
        if self.orbit > 0:
            gif = render_orbit(model, split, self.orbit, out / "orbit.gif")
            print(f"wrote {gif}")
        return 0


def render_orbit(model, split, n_frames: int, path: Path) -> Path:
    """Render ``n_frames`` around the vertical axis at the split's mean camera distance and
    elevation, and write an animated GIF (atomically)."""
    import imageio.v2 as imageio
    import numpy as np

    from tensorf_common.atomic import atomic_path
    from tensorf_common.data.rays import get_ray_directions, get_rays
    from tensorf_common.images import to_uint8

    centres = split.c2w[:, :3, 3]
    radius = float(np.mean(np.linalg.norm(centres, axis=-1)))
    elev = float(np.mean(np.arcsin(np.clip(centres[:, 2] / np.linalg.norm(centres, axis=-1), -1, 1))))
    dirs = get_ray_directions(split.height, split.width, split.focal, split.cx, split.cy)
    frames = []
    for i in range(n_frames):
        az = 2 * np.pi * i / n_frames
        eye = radius * np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        c2w = np.eye(4, dtype=np.float32)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye  # OpenCV axes
        o, d = get_rays(dirs, c2w)
        out = model.render_chunks(o.reshape(-1, 3), d.reshape(-1, 3), want_depth=False)
        frames.append(to_uint8(out["rgb"].reshape(split.height, split.width, 3)))
    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, frames, duration=0.08, loop=0)
    return path
