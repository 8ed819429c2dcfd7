"""One training run of the torch reference end to end (the twin of :mod:`jax_tensorf.run`): load
data, train (or resume), checkpoint, evaluate, summarise.

Used by ``tensorf-bench train --framework torch`` and by the report runner. The run folder has the
JAX run's layout: ``run.json`` (the same keys, :mod:`tensorf_common.run_summary`), ``eval/``
(renders and metrics), the model file ``model.th`` (the official checkpoint layout; its extra
``'tensorf_bench'`` entry holds the config) and ``checkpoint.th`` (the resumable training state).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

from tensorf_common.atomic import atomic_dir
from tensorf_common.config import ExperimentConfig
from tensorf_common.errors import CheckpointError
from tensorf_common.interrupt import raise_if_stop_requested, stops_on_interrupt
from tensorf_common.run_summary import evaluation_summary, training_summary, write_run_summary

if TYPE_CHECKING:
    import torch

CHECKPOINT = "checkpoint.th"
MODEL = "model.th"


def _warm_library() -> None:
    """Import what the first optimizer step imports (``torch.optim.Adam`` loads ``torch._dynamo``,
    seconds on a CPU): library start-up, like importing jax, is not the run's time."""
    import torch

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


@stops_on_interrupt
def train_run(
    cfg: ExperimentConfig,
    data_dir,
    out_dir: Path,
    *,
    resume: bool = False,
    evaluate: bool = True,
    lpips: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    on_log=None,
    device: Union[str, torch.device, None] = None,
    tensorboard: bool = True,
) -> dict:
    """Train a torch TensoRF and evaluate it on the test split. Returns the summary written to
    ``out_dir/run.json``. ``on_log`` is called with a dict per log point (the fields of
    :class:`tensorf_common.training_log.LogPoint`); with ``tensorboard`` the log points, events and the
    evaluation also go to event files in ``out_dir/tensorboard/``. A resumed run (``resume`` and ``out_dir/checkpoint.th``) keeps its saved config.
    Config fields the torch reference cannot honour raise ConfigError before anything is read;
    the JAX-only speed knobs it ignores are recorded under ``ignored_config``. Ctrl-C stops training
    between steps, writes the checkpoint and raises :class:`tensorf_common.interrupt.TrainingInterrupted`
    (no evaluation)."""
    import torch

    from tensorf_common.data import load_from_config
    from tensorf_common.tensorboard import RunWriter

    from .checkpoint import save_checkpoint
    from .evaluation import evaluate_split
    from .training import Trainer, check_supported

    check_supported(cfg)
    _warm_library()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tb = RunWriter(out_dir, enabled=tensorboard, framework="torch", warn=log)
    t_start = time.perf_counter()
    t_load = time.perf_counter()
    splits = ("train", "test") if evaluate else ("train",)
    dataset = load_from_config(data_dir, cfg.data, splits)
    load_seconds = time.perf_counter() - t_load
    ckpt = out_dir / CHECKPOINT
    resumed = resume and ckpt.exists()
    if resumed:
        trainer = Trainer.resume(ckpt, dataset, out_dir=out_dir, log=log, progress=progress, device=device)
        cfg = trainer.cfg
        log(f"resumed {ckpt} at step {trainer.pos.step} ({trainer.pos.elapsed:.1f} s of budget used)")
    else:
        trainer = Trainer(cfg, dataset, out_dir=out_dir, log=log, progress=progress, device=device)
    if resumed:
        tb.mark_logged(trainer.events, trainer.compiles)  # the interrupted process logged these
    trainer.run(on_log=tb.follow(trainer, None if on_log is None else lambda point: on_log(dataclasses.asdict(point))))
    tb.log_records(trainer.events, trainer.compiles)
    trainer.save_checkpoint(ckpt)
    raise_if_stop_requested(f"interrupted at step {trainer.pos.step}; {ckpt} holds the run (continue with --resume)")
    model = trainer.model
    save_checkpoint(model, out_dir / MODEL, extra={"config": cfg.to_dict()})

    summary = training_summary(
        "torch", data_dir, trainer, grid_size=model.gridSize.tolist(), aabb=model.aabb.cpu().tolist(),
        load_seconds=load_seconds, t_start=t_start, resumed=resumed,
    )
    summary["ignored_config"] = trainer.ignored
    if evaluate:
        test = dataset["test"]
        with atomic_dir(out_dir / "eval") as eval_dir:  # a failed or interrupted evaluation leaves no renders
            results, render_s = evaluate_split(  # every view of the (already strided/limited) test split
                model, test, eval_dir, lpips=lpips, chunk=cfg.render.chunk, appearance=cfg.render.eval_appearance,
                progress=lambda done, total: raise_if_stop_requested(f"interrupted while evaluating; {ckpt} holds the run"),
            )
        summary.update(evaluation_summary(results, render_s))
        tb.log_evaluation(results, trainer.pos.step, out_dir / "eval")
    tb.close()
    dev = trainer.device
    summary["device"] = f"cuda:{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else dev.type
    if dev.type == "cuda":
        summary["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    write_run_summary(out_dir, summary)
    return summary


def load_run_model(path: Path, device: Optional[Union[str, torch.device]] = None):
    """``(model, config)`` of a run's ``model.th`` / ``checkpoint.th`` or any official ``.th``
    (whose config is then the default one: the Blender data settings)."""
    from .checkpoint import EXTRA_KEY, model_from_checkpoint, read_checkpoint
    from .training import default_device

    ck = read_checkpoint(path)
    extra = ck.get(EXTRA_KEY)
    cfg = ExperimentConfig()
    if isinstance(extra, dict) and "config" in extra:
        try:
            cfg = ExperimentConfig.from_dict(extra["config"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: {EXTRA_KEY}/config is not valid ({exc})") from None
    model = model_from_checkpoint(ck, device or default_device(), source=str(path))
    return model, cfg
