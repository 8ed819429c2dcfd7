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


from tensorf_common.atomic import atomic_dir, write_json
from tensorf_common.config import ExperimentConfig
from tensorf_common.interrupt import raise_if_stop_requested, stops_on_interrupt
from tensorf_common.runtime import peak_rss_bytes


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
) -> dict:
    """Train a JAX TensoRF and evaluate it on the test split. Returns the summary written to
    ``out_dir/run.json``. Ctrl-C stops training between steps, writes the checkpoint and raises
    :class:`tensorf_common.interrupt.TrainingInterrupted` (no evaluation)."""
    from tensorf_common.data import load_from_config

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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    trainer.run(on_log=on_log)
    trainer.save_checkpoint(ckpt)
    raise_if_stop_requested(f"interrupted at step {trainer.pos.step}; {ckpt} holds the run (continue with --resume)")
    model = trainer.model.exact()  # static-shape runs train in padded buffers
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
    summary["peak_rss_train_bytes"] = peak_rss_bytes()
    if evaluate:
        trainer.drop_executables()
        release_host_memory()
        test = dataset["test"]
        with atomic_dir(out_dir / "eval") as eval_dir:  # a failed or interrupted evaluation leaves no renders
            results, render_s = evaluate_split(
                model, test, eval_dir, eval_views(test, cfg), lpips=lpips,
                progress=lambda done, total: raise_if_stop_requested(f"interrupted while evaluating; {ckpt} holds the run"),
            )
        summary["eval"] = results.to_json_dict()
        summary["eval_render_seconds"] = round(render_s, 3)
    summary["peak_rss_bytes"] = peak_rss_bytes()
    summary["device"] = device_info()["device"]
    summary["cpu_dispatch"] = cpu_dispatch()
    summary.update(device_peak_bytes())
    write_json(out_dir / "run.json", summary)
    return summary


def _steady_rays_per_s(trainer) -> Optional[float]:
    """Training rays per second over the whole run: steps x batch over the seconds spent in steps
    (set-up, compilation, mask updates and checkpoints excluded)."""
    p = trainer.pos
    if p.step == 0 or p.train_seconds <= 0:
        return None
    return round(p.step * trainer.tc.batch_size / p.train_seconds, 1)
