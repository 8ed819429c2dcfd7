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
from typing import Callable, Optional


from tensorf_common.atomic import write_json
from tensorf_common.config import ExperimentConfig
from tensorf_common.runtime import peak_rss_bytes


def eval_views(split, cfg: ExperimentConfig) -> list[int]:
    """The views evaluated: every one of the (already strided/limited) loaded test split."""
    return list(range(split.n_views))


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
) -> dict:
    """Train a JAX TensoRF and evaluate it on the test split. Returns the summary written to
    ``out_dir/run.json``.

    Several processes (:mod:`jax_tensorf.distributed`): every one loads the dataset and trains its
    share of each batch; process 0 alone writes the run folder and evaluates. A resumed run reads
    ``out_dir/checkpoint.npz`` on every process."""
    from tensorf_common.data import load_from_config
    from tensorf_common.errors import TrainingError

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

    t_start = time.perf_counter()
    prefer_synchronous_cpu_dispatch()  # before anything creates the CPU client
    cache_dir = enable_compilation_cache()
    procs = distributed.processes()
    writer = procs is None or procs.is_writer
    out_dir = Path(out_dir)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
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
    trainer.run(on_log=on_log)
    trainer.save_checkpoint(ckpt)
    model = trainer.model.exact()  # static-shape runs train in padded buffers
    if writer:
        save_model(model, out_dir / "model.npz", cfg)

    summary = {
        "framework": "jax",
        "data": str(data_dir),
        "config": cfg.to_dict(),
        "steps": trainer.pos.step,
        "train_seconds": round(trainer.pos.elapsed, 3),
        "step_seconds": round(trainer.pos.train_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "setup_seconds": round(trainer.setup_seconds, 3),
        "time_to_first_step": (
            None if resumed or trainer.first_step_at is None else round(trainer.first_step_at - t_start, 3)
        ),
        "compile_seconds": round(sum(c["seconds"] for c in trainer.compiles), 3),
        "compilation_cache": str(cache_dir) if cache_dir is not None else None,
        "grid_size": trainer.model.grid_size,
        "aabb": trainer.model.aabb.tolist(),
        "compiles": trainer.compiles,
        "events": trainer.events,
        "history": [dataclasses.asdict(p) for p in trainer.history],
        "rays_per_s": _steady_rays_per_s(trainer),
    }
    if procs is not None:
        summary["processes"] = procs.count
    summary["peak_rss_train_bytes"] = peak_rss_bytes()
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
                results, render_s = evaluate_split(
                    model, test, out_dir / "eval", eval_views(test, cfg), lpips=lpips
                )
                summary["eval"] = results.to_json_dict()
                summary["eval_render_seconds"] = round(render_s, 3)
            summary["peak_rss_bytes"] = peak_rss_bytes()
            summary["device"] = device_info()["device"]
            summary["cpu_dispatch"] = cpu_dispatch()
            summary.update(device_peak_bytes())
            write_json(out_dir / "run.json", summary)
    return summary


EVAL_WAIT_S = 7 * 24 * 3600.0
"""How long the other processes wait for process 0's evaluation (all test views of a large scene
on a slow machine); a process 0 that dies is reported sooner by JAX's runtime."""


def _steady_rays_per_s(trainer) -> Optional[float]:
    """Training rays per second over the whole run: steps x batch over the seconds spent in steps
    (set-up, compilation, mask updates and checkpoints excluded)."""
    p = trainer.pos
    if p.step == 0 or p.train_seconds <= 0:
        return None
    return round(p.step * trainer.tc.batch_size / p.train_seconds, 1)
