"""tensorf_bench.report on small fake results: tables with the best value in bold, plots written,
a self-contained HTML page, results.json / CSV, the generated summary, failures listed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tensorf_bench.report import tables
from tensorf_bench.report.build import build_report, collect
from tensorf_bench.report.io import StageRecord, atomic_write_json, read_stages, write_stage
from tensorf_bench.report.results import benchmark_rows


def _bench(group, name, median, **extra):
    return {
        "group": group,
        "name": name,
        "fullname": f"benchmarks/test_{group}.py::{name}",
        "param": name.split("[")[-1].rstrip("]") if "[" in name else None,
        "params": {},
        "extra_info": extra,
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "median": median, "stddev": median / 10,
                  "iqr": median / 20, "q1": median, "q3": median, "rounds": 3},
    }


def fake_bench_json(scale: float = 1.0) -> dict:
    common = dict(size="quick", commit="abc", allocator="mimalloc", device="cpu:cpu", dtype="fp32")
    b = []
    for variant, t in (("flat", 0.2), ("pairs", 0.3), ("rays", 0.1), ("samples", 0.25)):
        for mode, f in (("forward", 1.0), ("forward+backward", 2.5)):
            b.append(_bench("vmap", f"test_vmap[{variant}-{mode}]", t * f * scale, framework="jax", impl="jax-jit",
                            workload="lookup", variant=variant, mode=mode, rays=1024, samples_per_ray=221,
                            points=1024 * 221, grid="64x64x64", compile_s=1.5, label=f"{variant} {mode}", **common))
    for label, app, k, t in (("all", "all", None, 0.8), ("threshold", "threshold", None, 0.5), ("topk-8", "topk", 8, 0.3),
                             ("topk-32", "topk", 32, 0.4)):
        for workload in ("train_step", "render"):
            b.append(_bench("appearance", f"test_{workload}[{label}]", t * scale * (1 if workload == "train_step" else 0.5),
                            framework="jax", impl="jax-jit", workload=workload, appearance=app, k=k, rays=1024,
                            label=label, compile_s=9.0, grid="64x64x64", **common))
    for dtype, t in (("fp32", 0.1), ("bf16", 0.15)):
        b.append(_bench("precision", f"test_precision[field-{dtype}]", t * scale, framework="jax", workload="field",
                        points=65536, label=f"field {dtype}", max_abs_vs_fp32=0.0 if dtype == "fp32" else 3e-3,
                        **{**common, "dtype": dtype}))
    for workload, tj, tt in (("field", 0.05, 0.2), ("train_step", 0.6, 1.2), ("render", 0.3, 0.2)):
        for impl, t in (("jax-jit", tj), ("torch-eager", tt)):
            b.append(_bench("framework", f"test_framework[{workload}-{impl}]", t * scale, workload=workload, impl=impl,
                            framework=impl.split("-")[0], rays=None if workload == "field" else 1024,
                            points=65536 if workload == "field" else None, label=f"{workload} {impl}", **common))
    for grid in (32, 96):
        b.append(_bench("compile", f"test_compile[render-{grid}]", 4.0 * scale, workload="compile_render",
                        grid=f"{grid}x{grid}x{grid}", grid_size=[grid] * 3, lower_s=0.8, compile_s=3.2 + grid / 100,
                        rays=1024, label=f"render {grid}^3", **common))
    for fw, peak in (("jax", 900 * 2**20), ("torch", 600 * 2**20)):
        b.append(_bench("memory", f"test_memory[train_step-{fw}]", 20.0, workload="memory_train_step", framework=fw,
                        peak_rss_bytes=peak, rss_before_bytes=peak - 200 * 2**20, rays=1024, label=f"train_step {fw}",
                        **common))
    for n, t in ((1, 0.6), (2, 0.66), (4, 0.9)):
        b.append(_bench("devices", f"test_devices[{n}dev]", t * scale, workload="train_step", framework="jax",
                        impl="jax-shard_map", devices=n, rays=1024, label=f"train_step {n} device(s)",
                        platform="cpu", **common))
    return {"benchmarks": b, "machine_info": {}, "commit_info": {}, "version": "5.3.1"}


def _png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def _run_json(framework, psnr, steps, rays_per_s, views):
    return {
        "framework": framework,
        "steps": steps,
        "train_seconds": 45.0,
        "setup_seconds": 1.0,
        "rays_per_s": rays_per_s,
        "config": {"train": {"batch_size": 2048}},
        "compiles": [{"seconds": 9.5}] if framework == "jax" else [],
        "grid_size": [62, 63, 66],
        "peak_rss_bytes": 1.5 * 2**30,
        "history": [{"step": 25 * i, "elapsed": 10.0 + 8 * i, "psnr": 12.0 + i * (psnr - 12) / 4} for i in range(5)],
        "eval": {"mean": {"psnr": psnr, "ssim": 0.8, "lpips_alex": 0.2, "lpips_vgg": "n/a"},
                 "per_image": [{"name": v, "psnr": psnr + i, "ssim": 0.8, "lpips_alex": 0.2, "lpips_vgg": None}
                               for i, v in enumerate(views)],
                 "n_images": len(views)},
    }


SPECS = [("jax-topk", "jax", "topk", 32, 24.5, 900), ("jax-threshold", "jax", "threshold", None, 25.1, 700),
         ("jax-all", "jax", "all", None, 23.0, 300), ("torch", "torch", "threshold", None, 22.0, 200)]


def make_fake_run(run_dir: Path, *, failed_quality: str = None, bench_scale: float = 1.0, with_parity=True) -> Path:
    """A complete fake report run folder (no training, no benchmarks run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "report.json", {
        "run_id": run_dir.name, "command": "tensorf-bench report --preset quick",
        "preset": {"name": "quick", "description": "fake"}, "quality_order": [s[0] for s in SPECS], "load_end": [0.5, 0.5, 0.5]})
    write_stage(run_dir, StageRecord("machine", "machine", "ok", data={
        "cpu_model": "Fake CPU", "cores": {"logical": 2, "usable": 2}, "memory_bytes": 8 * 2**30, "gpus": [],
        "libraries": {"jax": "0.10.2", "torch": "2.13.0"}, "git": {"short": "abc123", "dirty": False},
        "allocator": "mimalloc", "date": "2026-01-01T00:00:00+00:00", "load_average": [0.4, 0.4, 0.4], "python": "3.11"}))
    views = ["r_0", "r_50"]
    rng = np.random.default_rng(0)
    gt = {v: rng.random((16, 16, 3)) for v in views}
    for v in views:
        _png(run_dir / "quality" / "gt" / f"{v}.png", gt[v])
    write_stage(run_dir, StageRecord("data", "data", "ok", data={
        "path": "/fake/scene", "procedural": True, "summary": "16x16, 8 train / 2 test views",
        "figure_views": [{"name": v, "gt": f"quality/gt/{v}.png"} for v in views]}))
    atomic_write_json(run_dir / "bench" / "benchmarks.json", fake_bench_json(bench_scale))
    (run_dir / "bench" / "outcomes.jsonl").write_text(
        json.dumps({"test": "benchmarks/test_precision.py::test_precision[field-fp16]", "outcome": "failed",
                    "error": "AssertionError: field.rgb: fp16 differs from fp32 by 0.2", "when": "call"}) + "\n"
        + json.dumps({"test": "benchmarks/test_framework.py::test_framework[field-torch-compile]", "outcome": "skipped",
                      "error": "torch.compile failed: no compiler", "when": "setup"}) + "\n")
    write_stage(run_dir, StageRecord("bench", "bench", "failed", error="1 of 40 benchmarks failed", seconds=100.0,
                                     data={"json": "bench/benchmarks.json", "outcomes": "bench/outcomes.jsonl"}))
    for name, fw, app, k, psnr, steps in SPECS:
        spec = {"name": name, "framework": fw, "appearance": app, "topk": k, "precision": "fp32"}
        label = "torch reference (threshold)" if fw == "torch" else f"JAX {app}" + (f"-{k}" if k else "")
        if name == failed_quality:
            write_stage(run_dir, StageRecord(f"quality-{name}", "quality", "failed", error="MemoryError: out of memory",
                                             data={"spec": spec, "label": label, "budget_s": 45.0}))
            continue
        qdir = run_dir / "quality" / name
        atomic_write_json(qdir / "run.json", _run_json(fw, psnr, steps, steps * 2048 / 40.0, views))
        for v in views:
            _png(qdir / "eval" / f"{v}.png", gt[v] * 0.9)
        write_stage(run_dir, StageRecord(f"quality-{name}", "quality", "ok", seconds=60.0, data={
            "spec": spec, "label": label, "budget_s": 45.0, "run_json": f"quality/{name}/run.json",
            "eval_dir": f"quality/{name}/eval"}))
    if with_parity:
        atomic_write_json(run_dir / "parity" / "parity.json", {
            "summary": {"ok": False, "comparisons": 3, "comparisons_passed": 2, "tests_passed": 2, "tests_failed": 0,
                        "tests_xfailed": 1, "tests_skipped": 0},
            "comparisons": [
                {"component": "fields.grid_sample_2d", "max_abs": 1e-7, "tolerance": "fp32", "scaled": 0.01,
                 "passed": True, "test": "parity_tests/test_fields.py::test_x", "known_gap": False},
                {"component": "fields.vm_features", "max_abs": 2e-7, "tolerance": "fp32", "scaled": 0.02,
                 "passed": True, "test": "parity_tests/test_fields.py::test_y", "known_gap": False},
                {"component": "appearance.MLPRender_PE", "max_abs": 0.3, "tolerance": "fp32", "scaled": 3e4,
                 "passed": False, "test": "parity_tests/test_appearance.py::test_pe", "known_gap": True}],
            "outcomes": [{"test": "parity_tests/test_appearance.py::test_pe", "outcome": "skipped", "xfail": True,
                          "reason": "official MLP_PE crashes"}]})
        write_stage(run_dir, StageRecord("parity", "parity", "ok", data={"json": "parity/parity.json",
                                                                         "markdown": "parity/parity.md", "available": True}))
    return run_dir


# ---------------------------------------------------------------------------------------------


def test_mark_best_is_per_block_and_direction():
    df = pd.DataFrame({"w": ["a", "a", "b", "b", "c"], "t": [2.0, 1.0, 5.0, 5.0, 3.0], "q": [0.1, 0.3, None, 0.2, 0.4]})
    cols = [tables.Column("w", "w"), tables.Column("t", "time", best="min"), tables.Column("q", "quality", best="max")]
    bold = tables.mark_best(df, cols, ["w"])
    assert bold["time"].tolist() == [False, True, False, False, False]  # all equal or a single row: no best
    assert bold["quality"].tolist() == [False, True, False, False, False]
    md = tables.Table("t", df, cols, block=["w"]).to_markdown()
    assert "| a | **1.0** | **0.3** |" in md and "| b | 5.0 | – |" in md and "| c | 3.0 | 0.4 |" in md
    ties = tables.mark_best(pd.DataFrame({"t": [1.0, 1.0, 2.0]}), [tables.Column("t", "t", best="min")])
    assert ties["t"].tolist() == [True, True, False]


def test_markdown_and_html_escape_cells():
    t = tables.Table("x", pd.DataFrame({"a": ["x|y", "<b>"]}), [tables.Column("a", "A")])
    assert "x\\|y" in t.to_markdown()
    assert "&lt;b&gt;" in t.to_html()


def test_formatting():
    assert tables.fmt_seconds(0.0123) == "12.3 ms" and tables.fmt_seconds(2.5) == "2.50 s"
    assert tables.fmt_bytes(3 * 2**30) == "3 GiB" and tables.fmt_rate(1.5e6) == "1.5M"
    assert tables.fmt_seconds(None) == "–" and tables.fmt_ratio(float("nan")) == "–"


def test_benchmark_rows_throughput_units():
    rows = benchmark_rows(fake_bench_json())
    vm = next(r for r in rows if r["name"] == "test_vmap[rays-forward]")
    assert vm["throughput_unit"] == "rays/s" and vm["throughput"] == pytest.approx(1024 / 0.1)
    field = next(r for r in rows if r["name"] == "test_precision[field-fp32]")
    assert field["throughput_unit"] == "points/s"
    mem = next(r for r in rows if r["group"] == "memory")
    assert mem["throughput"] is None  # the probe's wall time is not a throughput
    assert [r["group"] for r in rows][0] == "vmap"


def test_build_report_writes_every_file(tmp_path):
    run = make_fake_run(tmp_path / "run-a", failed_quality="jax-all")
    paths = build_report(run)
    md = (run / "index.md").read_text()
    html = (run / "index.html").read_text()
    res = json.loads((run / "results.json").read_text())
    # header
    for text in ("Fake CPU", "tensorf-bench report --preset quick", "abc123", "/fake/scene", "jax 0.10.2"):
        assert text in md
    # quality table: best PSNR in bold, the failed run listed with its error
    assert "**25.10**" in md
    assert "MemoryError: out of memory" in md
    # speed next to quality: the appearance table carries the PSNR of the matching quality run
    assert "test PSNR of its quality run" in md and "24.50" in md
    # speed-up against torch eager in the framework table: field 0.2/0.05 = 4x, bold
    assert "**4.00×**" in md
    # failed and skipped benchmarks with their one-line error
    assert "fp16 differs from fp32 by 0.2" in md and "torch.compile failed: no compiler" in md
    # parity table by module, from tensorf-bench parity's JSON, with the known gap listed
    assert "| fields | 2 | 0 | 2e-07 | 0.02 | yes |" in md
    assert "| appearance | 1 | 1 |" in md and "official MLP_PE crashes" in md
    # generated summary sentences
    assert "`rays` is fastest" in md and "best mean test PSNR is `JAX threshold`" in md
    assert "torch reference reached 22.00 dB" in md
    # device scaling: 0.6 s on one device, 0.9 s on four -> 1.50x slower
    assert "Data parallel train step (1024 rays" in md and "4 devices 1.50× slower" in md
    assert "Group devices" in md
    # figures: files for markdown, embedded in the HTML (no external references)
    figs = sorted(p.name for p in (run / "figures").glob("*.png"))
    for name in ("psnr_time.png", "quality_speed.png", "per_view.png", "bench_vmap.png", "bench_framework.png",
                 "bench_compile.png", "view_r_0.png", "view_r_50.png"):
        assert name in figs
    assert html.count("data:image/png;base64,") == md.count("![")
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)
    # results.json and CSV
    assert {q["name"] for q in res["quality"]} == {"jax-topk", "jax-threshold", "jax-all", "torch"}
    assert next(q for q in res["quality"] if q["name"] == "jax-all")["status"] == "failed"
    assert len(pd.read_csv(run / "benchmarks.csv")) == len(res["benchmarks"])
    assert "csv:quality" in paths and (run / "per_view.csv").is_file()


def test_report_without_results_still_builds(tmp_path):
    run = tmp_path / "empty"
    write_stage(run, StageRecord("bench", "bench", "failed", error="pytest crashed"))
    build_report(run)
    md = (run / "index.md").read_text()
    assert "pytest crashed" in md and "1 part(s) failed" in md and "| bench | failed | 0 s | pytest crashed |" in md


def test_high_load_is_flagged(tmp_path):
    run = make_fake_run(tmp_path / "loaded")
    stage = read_stages(run)["machine"]
    stage.data["load_average"] = [3.5, 3.0, 2.0]
    write_stage(run, stage)
    build_report(run, load_end=[4.0, 3.0, 2.0])
    assert "the load was high" in (run / "index.md").read_text()


def test_collect_orders_quality_runs_as_the_preset(tmp_path):
    run = make_fake_run(tmp_path / "r")
    res = collect(run)
    assert [q["name"] for q in res["quality"]] == [s[0] for s in SPECS]


def test_quality_table_shows_gpu_peak_only_when_a_run_has_one():
    from tensorf_bench.report.tables import quality_table

    cpu = [{"label": "JAX topk-16", "framework": "jax", "rays_per_s": 9000.0, "peak_rss_bytes": 2 << 30}]
    assert "device_peak_bytes" not in [c.key for c in quality_table(cpu).columns]
    gpu = cpu + [{"label": "torch reference", "framework": "torch", "rays_per_s": 3000.0, "device_peak_bytes": 5 << 30}]
    table = quality_table(gpu)
    assert "device_peak_bytes" in [c.key for c in table.columns]
    assert list(table.numbers["vs_torch"])[0] == 3.0


def test_quality_table_shows_time_to_first_step_and_compiles_from_run_json(tmp_path):
    """From run.json: ``time_to_first_step`` (blank when absent) and ``compiles`` as count and total
    seconds ("0" for torch's empty list, blank when the key is absent)."""
    from tensorf_bench.report.results import quality_row
    from tensorf_bench.report.tables import quality_table

    jax_run = dict(_run_json("jax", 25.0, 100, 9000.0, ["r_0"]), time_to_first_step=12.25,
                   compiles=[{"seconds": 9.5, "grid_size": [32, 32, 32]}, {"seconds": 4.0, "grid_size": [48, 48, 48]}])
    torch_run = _run_json("torch", 22.0, 50, 3000.0, ["r_0"])
    old_run = {k: v for k, v in _run_json("jax", 24.0, 90, 8000.0, ["r_0"]).items() if k != "compiles"}
    recs = [StageRecord(f"quality-{n}", "quality", "ok", data={"spec": {"name": n, "framework": fw}, "label": n})
            for n, fw in (("jax-topk", "jax"), ("torch", "torch"), ("jax-old", "jax"))]
    rows = [quality_row(rec, run) for rec, run in zip(recs, (jax_run, torch_run, old_run))]
    shown = quality_table(rows).shown.set_index("configuration")
    assert shown.loc["jax-topk", "time to first step"] == "12.25 s"
    assert shown.loc["jax-topk", "compiles"] == "2 (13.50 s)"
    assert shown.loc["torch", "time to first step"] == "–" and shown.loc["torch", "compiles"] == "0"
    assert shown.loc["jax-old", "compiles"] == "–"
    md = quality_table(rows).to_markdown()
    assert "| time to first step | compiles |" in md and "| 12.25 s | 2 (13.50 s) |" in md


def test_official_settings_sentences_rank_and_pair_the_dense_lookup():
    from tensorf_bench.report.summary import official_sentences

    common = dict(size="full", grid="128x128x128", samples_per_ray=443, rays=4096, workload="train_step")
    rows = benchmark_rows({"benchmarks": [
        _bench("official", f"test_train_step[{label}]", t, label=label, **common)
        for label, t in (("threshold", 1.6), ("topk-8", 0.8), ("topk-8+dense", 0.4), ("threshold+dense", 1.2))
    ]})
    s = official_sentences(rows)
    assert s[0].startswith("Train step at the official lego settings (4096 rays, grid 128x128x128, 443 samples per ray)")
    assert "`topk-8+dense` is fastest at 10.2k rays/s, 4.00× the official `threshold` strategy" in s[0], s[0]
    assert s[1] == ("The dense density lookup against the factored one: `topk-8` 2.00× faster, "
                    "`threshold` 1.33× faster."), s[1]
    assert official_sentences(benchmark_rows(fake_bench_json())) == []  # no group, no sentence
