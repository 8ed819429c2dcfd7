"""Training subcommands: ``train``, ``eval`` and ``render``, for the JAX TensoRF or the torch
reference (``--framework``)."""

from __future__ import annotations

import dataclasses
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from tensorf_common.config import ConfigError, ExperimentConfig, Precision, preset

Framework = Literal["jax", "torch"]

RUN_FILES = {"jax": ("checkpoint.npz", "model.npz"), "torch": ("checkpoint.th", "model.th")}
"""(resumable checkpoint, model file) of a run folder, per framework."""


def _preset_from_argv(argv, default: str) -> str:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return default


@dataclass
class Train:
    """Train a TensoRF on a Blender-format dataset, then evaluate it on the test split: the JAX one
    (--framework jax, the default) or the torch reference (--framework torch, official semantics).

    Writes RUN_DIR/run.json (config, PSNR curve over wall-clock, throughput, compile times, peak
    memory; the same keys for both frameworks), eval/<frame>.png (+ depth/), eval/metrics.json and
    .csv, the model (JAX: model.npz; torch: model.th, the official checkpoint layout) and a resumable
    checkpoint (checkpoint.npz / checkpoint.th), and TensorBoard event files in tensorboard/. The last line printed is the mean test PSNR. The
    torch reference refuses settings it cannot honour (a precision other than fp32, more than one
    device, median depth, n_samples_eval) and ignores the JAX speed knobs (vmap_variant,
    density_lookup, sample/app capacities, static_shapes), recorded in run.json.
    """

    framework: Framework = "jax"
    """Which implementation trains: jax (jax_tensorf) or torch (torch_reference)."""
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
    """Continue the run in --out from its checkpoint (RUN_DIR/checkpoint.npz, or checkpoint.th for
    torch), which a run writes every config.train.checkpoint-minutes, on Ctrl-C (training stops after
    the current step; exit 130) and at the end."""
    overwrite: bool = False
    """Replace the run already in --out: its files are deleted first. Without it (or --resume) a
    folder that holds a run is refused."""
    eval: bool = True
    """Evaluate on the test split at the end."""
    lpips: bool = True
    """Compute LPIPS (alex and vgg) in the evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files into RUN_DIR/tensorboard/ (train PSNR and MSE, rays/s, learning
    rates, grid size, compile and schedule events, test metrics and a render); watch them with
    `tensorboard --logdir runs/` (pip install tensorboard)."""
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
        import contextlib

        from tensorf_common.data.scene_cache import resolve_data_dir

        from tensorf_bench.run_folder import check_run_folder, removed_on_failure

        cfg = self.resolved_config()
        if self.framework == "torch":
            from torch_reference.run import train_run
            from torch_reference.training import check_supported

            if self.distributed:
                raise ConfigError("--distributed: the torch reference trains on one process; use --framework jax")
            check_supported(cfg)  # before anything is read or written
        else:
            from jax_tensorf.run import train_run

        procs = None
        together = lambda procs, what: contextlib.nullcontext()  # noqa: E731 (one process: no agreement)
        if self.distributed:
            import jax

            from jax_tensorf.distributed import initialize, together

            procs = initialize(self.coordinator, self.num_processes, self.process_id, timeout=self.connect_timeout)
            if cfg.train.devices == 1:  # the default: every device of every process
                cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, devices=jax.device_count()))
        writer = procs is None or procs.is_writer
        checkpoint = RUN_FILES[self.framework][0]
        with together(procs, "checking the options"):
            if procs is not None and self.out is None:
                raise ConfigError("--out: give the run folder with --distributed (the same path on every process)")
            data_dir = resolve_data_dir(self.data)
            out = Path(self.out or Path("runs") / f"{self.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            existed = out.exists()
            if writer:  # only process 0 may delete an old run (--overwrite)
                check_run_folder(out, resume=self.resume, overwrite=self.overwrite, checkpoint=checkpoint)
            elif self.resume and not (out / checkpoint).is_file():
                raise ConfigError(f"--resume: {out}/{checkpoint} does not exist")
        quiet = not writer
        where = "" if procs is None else f" as process {procs.index} of {procs.count}"
        print(f"training {self.framework} ({self.preset}) on {data_dir} -> {out}{where}", file=sys.stderr)
        with removed_on_failure(out, existed) if writer else contextlib.nullcontext():
            summary = train_run(
                cfg, data_dir, out, resume=self.resume, evaluate=self.eval, lpips=self.lpips,
                progress=self.progress and sys.stderr.isatty() and not quiet, tensorboard=self.tensorboard,
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


def _framework_of(run: Optional[Path], ckpt: Optional[Path], framework: Optional[str]) -> str:
    """The framework of a run folder (its run.json, else its model file) or of a checkpoint (.th:
    torch); an explicit --framework that disagrees is a ConfigError."""
    import json

    found = None
    if ckpt is not None:
        if Path(ckpt).suffix.lower() == ".th":
            return framework or "torch"  # --framework jax converts it on loading
        found = "jax"
    elif run is not None:
        run_json = Path(run) / "run.json"
        if run_json.is_file():
            found = json.loads(run_json.read_text()).get("framework")
        if found not in RUN_FILES:
            found = next((fw for fw, (_, model) in RUN_FILES.items() if (Path(run) / model).is_file()), None)
    if framework is not None and found is not None and framework != found:
        raise ConfigError(f"--framework: {framework} given, but {ckpt or run} holds a {found} model")
    return framework or found or "jax"


def _load_model(framework: str, ckpt: Path):
    """``(model, config)`` of a model or training checkpoint; for JAX also of a converted model
    (.safetensors) or an official .th, converted on loading."""
    if framework == "torch":
        from torch_reference.run import load_run_model

        return load_run_model(ckpt)
    from tensorf_convert.files import load_jax_model_and_config

    return load_jax_model_and_config(ckpt)


def _checkpoint_path(run: Optional[Path], ckpt: Optional[Path], framework: str = "jax") -> Path:
    if ckpt is not None:
        return Path(ckpt)
    if run is not None:
        return Path(run) / RUN_FILES[framework][1]
    raise ConfigError("give --run-dir RUN_DIR or --ckpt FILE")


def _open_model_and_split(framework: Optional[str], run_dir: Optional[Path], ckpt: Optional[Path],
                          data: Optional[str], split_name: str, max_views: Optional[int] = None, stride: int = 1):
    """What `eval` and `render` start from: (framework, model file, model, config, the split's views)
    loaded as the model was trained (downsampling, background, near/far, box); the dataset is
    ``data``, else the run's (its run.json), else the built-in scene."""
    import json

    from tensorf_common.data.blender import load_blender
    from tensorf_common.data.scene_cache import resolve_data_dir

    framework = _framework_of(run_dir, ckpt, framework)
    path = _checkpoint_path(run_dir, ckpt, framework)
    model, cfg = _load_model(framework, path)
    if data is None and run_dir is not None and (Path(run_dir) / "run.json").exists():
        data = json.loads((Path(run_dir) / "run.json").read_text()).get("data")
    ds = load_blender(
        resolve_data_dir(data),
        splits=(split_name,),
        downsample=cfg.data.downsample,
        white_bg=cfg.data.white_bg,
        near_far=cfg.data.near_far,
        aabb=cfg.data.aabb,
        max_views=max_views,
        stride=stride,
    )
    return framework, path, model, cfg, ds[split_name]


def _evaluate(framework: str, model, cfg: ExperimentConfig, split, out: Path, lpips: bool):
    if framework == "torch":
        from torch_reference.evaluation import evaluate_split

        return evaluate_split(model, split, out, lpips=lpips, chunk=cfg.render.chunk, appearance=cfg.render.eval_appearance)
    from jax_tensorf.evaluation import evaluate_split

    return evaluate_split(model, split, out, lpips=lpips)


def _render_view(framework: str, model, split, view: int) -> dict:
    if framework == "torch":
        from torch_reference.evaluation import render_view
    else:
        from jax_tensorf.evaluation import render_view
    return render_view(model, split, view)


def _render_rgb(framework: str, model, o, d):
    """RGB ``(N, 3)`` numpy of rays ``o``, ``d`` ``(N, 3)``, rendered in chunks for evaluation."""
    if framework == "torch":
        import numpy as np
        import torch

        from torch_reference.model import render_batched

        rays = torch.cat([torch.as_tensor(np.asarray(o, np.float32)), torch.as_tensor(np.asarray(d, np.float32))], -1)
        return render_batched(model, rays)[0].cpu().numpy()
    return model.render_chunks(o, d, want_depth=False)["rgb"]


@dataclass
class Eval:
    """Evaluate a trained model on a split: PSNR / SSIM / LPIPS per view and mean, with renders.
    Takes a JAX run (model.npz) or a torch one (model.th), or a checkpoint file (.npz: JAX, .th: torch,
    official files included)."""

    framework: Optional[Framework] = None
    """jax or torch; default: the run folder's (or the checkpoint's: .th is torch)."""
    run_dir: Optional[Path] = None
    """Run folder written by `train` (reads RUN_DIR/model.npz or model.th)."""
    ckpt: Optional[Path] = None
    """A model or training checkpoint (.npz: JAX, .th: torch) instead of --run-dir; with --framework
    jax a converted model (.safetensors) or an official .th is converted on loading and evaluated at
    the dataset's full resolution."""
    data: Optional[str] = None
    """Dataset folder; default: the run's dataset, else the built-in procedural scene."""
    split: str = "test"
    """Split to evaluate."""
    out: Optional[Path] = None
    """Where to write renders and metrics (whole or not at all; an existing folder is replaced only if
    it holds an evaluation); default RUN_DIR/eval-<split> (or next to the checkpoint)."""
    stride: int = 1
    """Evaluate every n-th view of the split."""
    max_views: Optional[int] = None
    """Evaluate at most this many views."""
    lpips: bool = True
    """Compute LPIPS (alex and vgg)."""

    def run(self) -> int:
        import json

        from tensorf_bench.run_folder import evaluation_folder

        framework, path, model, cfg, split = _open_model_and_split(
            self.framework, self.run_dir, self.ckpt, self.data, self.split, max_views=self.max_views, stride=self.stride
        )
        out = self.out or path.parent / f"eval-{self.split}"
        with evaluation_folder(out) as tmp:
            results, render_s = _evaluate(framework, model, cfg, split, tmp, self.lpips)
        m = results.mean
        print(f"wrote {len(results.per_image)} renders and metrics to {out} ({render_s:.1f} s rendering)")
        print(json.dumps({k: m[k] for k in m}, default=str))
        print(f"mean {self.split} PSNR {m['psnr']:.2f} dB")
        return 0


@dataclass
class Render:
    """Render RGB and depth PNGs of chosen views of a split, or an orbit GIF around the scene, with a
    JAX or a torch model (as `eval`)."""

    framework: Optional[Framework] = None
    """jax or torch; default: the run folder's (or the checkpoint's: .th is torch)."""
    run_dir: Optional[Path] = None
    """Run folder written by `train` (reads RUN_DIR/model.npz or model.th)."""
    ckpt: Optional[Path] = None
    """A model or training checkpoint (.npz: JAX, .th: torch) instead of --run-dir; with --framework
    jax a converted model (.safetensors) or an official .th is converted on loading and evaluated at
    the dataset's full resolution."""
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
        from tensorf_common.images import to_uint8, write_depth_png, write_png

        framework, path, model, _, split = _open_model_and_split(
            self.framework, self.run_dir, self.ckpt, self.data, self.split
        )
        out = Path(self.out or path.parent / "render")
        (out / "depth").mkdir(parents=True, exist_ok=True)
        for v in self.views:
            if not 0 <= v < split.n_views:
                raise ConfigError(f"--views: view {v} is outside 0..{split.n_views - 1} of split {self.split}")
            r = _render_view(framework, model, split, v)
            name = split.frame_names[v]
            write_png(out / f"{name}.png", to_uint8(r["rgb"]))
            write_depth_png(out / "depth" / f"{name}.png", r["depth"], *model.near_far)
        print(f"wrote {len(self.views)} views to {out}")
        if self.orbit > 0:
            gif = render_orbit(lambda o, d: _render_rgb(framework, model, o, d), split, self.orbit, out / "orbit.gif")
            print(f"wrote {gif}")
        return 0


def render_orbit(render_rgb, split, n_frames: int, path: Path) -> Path:
    """Render ``n_frames`` around the vertical axis at the split's mean camera distance and
    elevation with ``render_rgb(o, d) -> (N, 3)``, and write an animated GIF (atomically)."""
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
        rgb = render_rgb(o.reshape(-1, 3), d.reshape(-1, 3))
        frames.append(to_uint8(rgb.reshape(split.height, split.width, 3)))
    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, frames, duration=0.08, loop=0)
    return path
