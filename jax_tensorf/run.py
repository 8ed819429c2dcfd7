"""One training run end to end: load data, train (or resume), checkpoint, evaluate, summarise.

Used by ``tensorf-bench train`` and by the report runner. Everything a reader needs to trust the
numbers goes into ``RUN_DIR/run.json``: the config, the machine, the PSNR curve over wall-clock,
throughput, compile times, schedule events, peak memory and the evaluation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from tensorf_common.atomic import atomic_dir
from tensorf_common.config import ExperimentConfig
from tensorf_common.interrupt import raise_if_stop_requested, stops_on_interrupt
from tensorf_common.run_summary import evaluation_summary, training_summary, write_run_summary


def eval_views(split, cfg: ExperimentConfig) -> list[int]:
    """The views evaluated: every one of the (already strided/limited) loaded test split."""
    return list(range(split.n_views))


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
    tensorboard: bool = True,
) -> dict:
    """Train a JAX TensoRF and evaluate it on the test split. Returns the summary written to
    ``out_dir/run.json``. With ``tensorboard``, the log points, events, compiles and the evaluation
    also go to TensorBoard event files in ``out_dir/tensorboard/`` (:mod:`tensorf_common.tensorboard`).
    Ctrl-C stops training between steps, writes the checkpoint and raises
    :class:`tensorf_common.interrupt.TrainingInterrupted` (no evaluation)."""
    from tensorf_common.data import load_from_config
    from tensorf_common.tensorboard import RunWriter

    from .checkpoint import save_model
    from .evaluation import evaluate_split
    from .training import Trainer
    from .xla import (
        cpu_dispatch,
        device_info,
        device_peak_bytes,
        enable_compilation_cache,
        prefer_synchronous_cpu_dispatch,
        release_host_memory,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the writer imports its library before the run's clock starts, as importing jax does
    tb = RunWriter(out_dir, enabled=tensorboard, framework="jax", warn=log)
    t_start = time.perf_counter()
    prefer_synchronous_cpu_dispatch()  # before anything creates the CPU client
    cache_dir = enable_compilation_cache()
    t_load = time.perf_counter()
    splits = ("train", "test") if evaluate else ("train",)
    dataset = load_from_config(data_dir, cfg.data, splits)
    load_seconds = time.perf_counter() - t_load
    ckpt = out_dir / "checkpoint.npz"
    resumed = resume and ckpt.exists()
    if resumed:
        trainer = Trainer.resume(ckpt, dataset, out_dir=out_dir, log=log, progress=progress)
        cfg = trainer.cfg
        log(f"resumed {ckpt} at step {trainer.pos.step} ({trainer.pos.elapsed:.1f} s of budget used)")
    else:
        trainer = Trainer(cfg, dataset, out_dir=out_dir, log=log, progress=progress)
    if resumed:
        tb.mark_logged(trainer.events, trainer.compiles)  # the interrupted process logged these

    trainer.run(on_log=tb.follow(trainer, on_log))
    tb.log_records(trainer.events, trainer.compiles)
    trainer.save_checkpoint(ckpt)
    raise_if_stop_requested(f"interrupted at step {trainer.pos.step}; {ckpt} holds the run (continue with --resume)")
    model = trainer.model.exact()  # static-shape runs train in padded buffers
    save_model(model, out_dir / "model.npz", cfg)

    summary = training_summary(
        "jax", data_dir, trainer, grid_size=trainer.model.grid_size, aabb=trainer.model.aabb.tolist(),
        load_seconds=load_seconds, t_start=t_start, resumed=resumed,
    )
    summary["compilation_cache"] = str(cache_dir) if cache_dir is not None else None
    if evaluate:
        trainer.drop_executables()
        release_host_memory()
        test = dataset["test"]
        with atomic_dir(out_dir / "eval") as eval_dir:  # a failed or interrupted evaluation leaves no renders
            results, render_s = evaluate_split(
                model, test, eval_dir, eval_views(test, cfg), lpips=lpips,
                progress=lambda done, total: raise_if_stop_requested(f"interrupted while evaluating; {ckpt} holds the run"),
            )
        summary.update(evaluation_summary(results, render_s))
        tb.log_evaluation(results, trainer.pos.step, out_dir / "eval")
    tb.close()
    summary["device"] = device_info()["device"]
    summary["cpu_dispatch"] = cpu_dispatch()
    summary.update(device_peak_bytes())
    write_run_summary(out_dir, summary)
    return summary
