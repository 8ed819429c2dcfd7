"""One training run end to end: load data, train (or resume), checkpoint, evaluate, summarise.

Used by ``tensorf-bench train`` and by the report runner. Everything a reader needs to trust the
numbers goes into ``RUN_DIR/run.json``: the config, the machine, the PSNR curve over wall-clock,
throughput, compile times, schedule events, peak memory and the evaluation.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

from tensorf_common.atomic import atomic_dir
from tensorf_common.config import ExperimentConfig
from tensorf_common.interrupt import TrainingInterrupted, raise_if_stop_requested, stop_requested, stops_on_interrupt
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
    :class:`tensorf_common.interrupt.TrainingInterrupted` (no evaluation).

    Several processes (:mod:`jax_tensorf.distributed`): every one loads the dataset and trains its
    share of each batch; process 0 alone writes the run folder (TensorBoard included) and evaluates.
    A resumed run reads ``out_dir/checkpoint.npz`` on every process."""
    from tensorf_common.data import load_from_config
    from tensorf_common.errors import TrainingError
    from tensorf_common.tensorboard import RunWriter

    from . import distributed
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

    prefer_synchronous_cpu_dispatch()  # before anything creates the CPU client
    procs = distributed.processes()
    writer = procs is None or procs.is_writer
    out_dir = Path(out_dir)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    # the writer imports its library, and JAX its backend, before the run's clock starts
    tb = RunWriter(out_dir, enabled=tensorboard and writer, framework="jax", warn=log)
    t_start = time.perf_counter()
    cache_dir = enable_compilation_cache()
    t_load = time.perf_counter()
    splits = ("train", "test") if evaluate else ("train",)
    ckpt = out_dir / "checkpoint.npz"
    with distributed.together(procs, "loading the dataset"):
        dataset = load_from_config(data_dir, cfg.data, splits)
        resumed = resume and ckpt.exists()
    load_seconds = time.perf_counter() - t_load
    if procs is not None:
        found = procs.all_values(str(int(resumed)), "the checkpoint check")
        if len(set(found)) > 1:
            raise TrainingError(
                f"{ckpt}: found by processes {[i for i, f in enumerate(found) if f == '1']} but not by "
                f"{[i for i, f in enumerate(found) if f == '0']}; every process reads the checkpoint "
                "(a shared folder, or a copy at the same path on every host)"
            )
    with distributed.together(procs, "setting up the trainer"):
        if resumed:
            trainer = Trainer.resume(ckpt, dataset, out_dir=out_dir, log=log, progress=progress)
            cfg = trainer.cfg
            log(f"resumed {ckpt} at step {trainer.pos.step} ({trainer.pos.elapsed:.1f} s of budget used)")
        else:
            trainer = Trainer(cfg, dataset, out_dir=out_dir, log=log, progress=progress)
    if procs is not None and resumed:
        steps = procs.all_values(str(trainer.pos.step), "the resume check")
        if len(set(steps)) > 1:
            raise TrainingError(f"{ckpt}: the processes resumed at different steps {steps} (copies that differ)")
    if resumed:
        tb.mark_logged(trainer.events, trainer.compiles)  # the interrupted process logged these

    trainer.run(on_log=tb.follow(trainer, on_log))
    tb.log_records(trainer.events, trainer.compiles)
    trainer.save_checkpoint(ckpt)
    # with several processes every one stops on process 0's Ctrl-C (trainer.interrupted)
    if trainer.interrupted or (procs is None and stop_requested()):
        raise TrainingInterrupted(f"interrupted at step {trainer.pos.step}; {ckpt} holds the run (continue with --resume)")
    model = trainer.model.exact()  # static-shape runs train in padded buffers
    if writer:
        save_model(model, out_dir / "model.npz", cfg)

    summary = training_summary(
        "jax", data_dir, trainer, grid_size=trainer.model.grid_size, aabb=trainer.model.aabb.tolist(),
        load_seconds=load_seconds, t_start=t_start, resumed=resumed,
    )
    summary["compilation_cache"] = str(cache_dir) if cache_dir is not None else None
    if procs is not None:
        summary["processes"] = procs.count
    # process 0 evaluates and writes alone; the others wait for it, so that no process leaves the
    # distributed runtime while it still works (and they fail too if it fails)
    with distributed.together(procs, "evaluating and writing the run", timeout=EVAL_WAIT_S):
        if writer:
            if evaluate:
                trainer.drop_executables()
                release_host_memory()
                if procs is not None:  # render on this process's devices only
                    model = dataclasses.replace(
                        model, params=distributed.to_local(model.params), state=distributed.to_local(model.state),
                        mesh=distributed.local_mesh(), _compiled_renders={}, _eval_caps={},
                    )
                test = dataset["test"]
                with atomic_dir(out_dir / "eval") as eval_dir:  # a failed or interrupted evaluation leaves no renders
                    results, render_s = evaluate_split(
                        model, test, eval_dir, eval_views(test, cfg), lpips=lpips,
                        progress=lambda done, total: raise_if_stop_requested(
                            f"interrupted while evaluating; {ckpt} holds the run"
                        ),
                    )
                summary.update(evaluation_summary(results, render_s))
                tb.log_evaluation(results, trainer.pos.step, out_dir / "eval")
            tb.close()
            summary["device"] = device_info()["device"]
            summary["cpu_dispatch"] = cpu_dispatch()
            summary.update(device_peak_bytes())
            write_run_summary(out_dir, summary)
    return summary


EVAL_WAIT_S = 7 * 24 * 3600.0
"""How long the other processes wait for process 0's evaluation (all test views of a large scene
on a slow machine); a process 0 that dies is reported sooner by JAX's runtime."""
