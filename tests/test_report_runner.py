"""tensorf_bench.report_runner: stages recorded atomically, a failing stage does not sink the report,
exit codes, --resume skipping finished stages, interrupted runs, subprocess handling; the quality-run
child process on the small scene; `tensorf-bench compare` and `report` on the command line."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pytest

from tensorf_bench.report_runner import children, quality, stages
from tensorf_bench.report_runner import run as runner
from tensorf_bench.report.compare import compare_markdown
from tensorf_bench.report.io import read_stages
from tensorf_bench.report.presets import report_preset

from test_report_build import make_fake_run


class FakeStages:
    """Stage functions that count their calls; ``fail`` names stages that raise, ``interrupt`` one
    that raises KeyboardInterrupt."""

    def __init__(self, fail=(), interrupt=None):
        self.calls: list[str] = []
        self.fail = set(fail)
        self.interrupt = interrupt

    def fn(self, name):
        def run(ctx):
            self.calls.append(name)
            if name == self.interrupt:
                raise KeyboardInterrupt
            if name in self.fail:
                raise RuntimeError(f"{name} broke\nsecond line of the traceback")
            if name.startswith("quality-"):
                return "ok", None, {"spec": {"name": name[8:], "framework": "jax"}, "label": name, "budget_s": 6.0}
            if name == "parity":
                return "skipped", "no `tensorf-bench parity` command in this checkout", {"available": False}
            return "ok", None, {"stage": name}

        return run

    def overrides(self, preset):
        names = ["machine", "data", "bench", "parity"] + [f"quality-{q.name}" for q in preset.quality]
        return {n: self.fn(n) for n in names}


def _runner(run_dir, fakes, resume=False, **kw):
    preset = report_preset("smoke")
    return runner.ReportRun(run_dir=run_dir, preset=preset, command="tensorf-bench report --preset smoke", resume=resume,
                        progress=False, stage_overrides=fakes.overrides(preset), **kw)


def test_all_stages_ok_exit_zero_and_report_written(tmp_path):
    fakes = FakeStages()
    code = _runner(tmp_path / "run", fakes).run()
    assert code == 0
    recs = read_stages(tmp_path / "run")
    assert {r.status for r in recs.values()} == {"ok"}  # the smoke preset has no parity stage
    assert fakes.calls[:3] == ["machine", "data", "bench"]
    assert (tmp_path / "run" / "index.md").is_file() and (tmp_path / "run" / "index.html").is_file()
    meta = json.loads((tmp_path / "run" / "report.json").read_text())
    assert meta["preset"]["name"] == "smoke" and meta["command"].startswith("tensorf-bench report")


def test_failing_stage_is_recorded_and_the_rest_still_runs(tmp_path):
    fakes = FakeStages(fail={"bench", "quality-jax-all"})
    code = _runner(tmp_path / "run", fakes).run()
    assert code == 1
    recs = read_stages(tmp_path / "run")
    assert recs["bench"].status == "failed" and recs["bench"].error == "RuntimeError: bench broke"
    assert recs["quality-torch"].status == "ok"  # ran after the failures
    md = (tmp_path / "run" / "index.md").read_text()
    assert "RuntimeError: bench broke" in md and "RuntimeError: quality-jax-all broke" in md
    assert "second line" not in md


def test_resume_skips_finished_stages(tmp_path):
    run = tmp_path / "run"
    assert _runner(run, FakeStages(fail={"quality-jax-topk"})).run() == 1
    again = FakeStages()
    assert _runner(run, again, resume=True).run() == 0
    assert again.calls == ["quality-jax-topk"]  # only the failed stage ran again
    assert read_stages(run)["quality-jax-topk"].status == "ok"
    meta = json.loads((run / "report.json").read_text())
    assert len(meta["resumed"]) == 1


def test_interrupted_run_resumes_where_it_stopped(tmp_path, capsys):
    run = tmp_path / "run"
    code = _runner(run, FakeStages(interrupt="quality-jax-threshold")).run()
    assert code == 130
    assert "--resume" in capsys.readouterr().err
    recs = read_stages(run)
    assert "quality-jax-threshold" not in recs and recs["quality-jax-topk"].status == "ok"
    again = FakeStages()
    assert _runner(run, again, resume=True).run() == 0
    assert again.calls == ["quality-jax-threshold", "quality-jax-all", "quality-torch"]


def test_refuses_a_used_folder_and_a_bad_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    with pytest.raises(runner.ReportError, match="--resume"):
        _runner(run, FakeStages()).run()
    with pytest.raises(runner.ReportError, match="not a report run"):
        _runner(tmp_path / "nothing", FakeStages(), resume=True).run()


def test_skip_and_only_select_stages(tmp_path):
    fakes = FakeStages()
    _runner(tmp_path / "run", fakes, skip=("bench",), quality_only=("torch",)).run()
    assert fakes.calls == ["machine", "data", "quality-torch"]


def test_parity_not_available_is_skipped_not_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "parity_available", lambda: False)
    status, error, data = stages.stage_parity(None)
    assert status == "skipped" and "no `tensorf-bench parity`" in error and data == {"available": False}


def test_run_child_logs_output_times_out_and_names_the_error(tmp_path):
    lines = []
    code = ("import sys\nprint('hello', flush=True)\nprint('@@progress {\"step\": 1}', flush=True)\n"
            "raise MemoryError('out of memory in step 3')\n")
    rc, tail = children.run_child([sys.executable, "-c", code], tmp_path / "a.log", env=children.child_env(), timeout_s=60,
                            on_line=lines.append)
    assert rc == 1 and "hello" in lines and (tmp_path / "a.log").read_text().count("\nhello\n") == 1
    assert children.error_line(rc, tail) == "MemoryError: out of memory in step 3"
    rc, tail = children.run_child([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log",
                            env=children.child_env(), timeout_s=1)
    assert rc == 124 and "time limit" in children.error_line(rc, tail)
    assert children.error_line(-9, []).startswith("killed by signal 9")


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the thread case forks on purpose (preexec_fn)
def test_timed_out_child_is_interrupted_first_then_killed(tmp_path, monkeypatch):
    """A timeout sends SIGINT first, so a child can save what it has (pytest-benchmark writes its JSON
    on KeyboardInterrupt); one that ignores SIGINT is killed after the grace period."""
    saved = tmp_path / "saved.txt"
    code = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
            f"    open({str(saved)!r}, 'w').write('partial')\n")
    rc, _ = children.run_child([sys.executable, "-c", code], tmp_path / "a.log", env=children.child_env(), timeout_s=4)
    assert rc == 124 and saved.read_text() == "partial"
    # started in the background by a shell (SIGINT ignored, inherited by children): still interrupted
    saved.unlink()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc, _ = children.run_child([sys.executable, "-c", code], tmp_path / "c.log", env=children.child_env(), timeout_s=4)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # this process's choice is left as it was
        assert rc == 124 and saved.read_text() == "partial"
        saved.unlink()
        out = {}  # the same from a thread (the child resets SIGINT itself)
        t = threading.Thread(target=lambda: out.update(rc=children.run_child(
            [sys.executable, "-c", code], tmp_path / "d.log", env=children.child_env(), timeout_s=4)[0]))
        t.start()
        t.join(60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.get("rc") == 124 and saved.read_text() == "partial"
    monkeypatch.setattr(children, "INTERRUPT_GRACE_S", 1.0)
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    rc, _ = children.run_child([sys.executable, "-c", stubborn], tmp_path / "b.log", env=children.child_env(), timeout_s=1)
    assert rc == 124 and time.monotonic() - t0 < 30


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_quality_child_trains_evaluates_and_prunes(tmp_path, small_scene, framework):
    """One real quality run on the small scene: run.json written (steps, history, evaluation), renders
    pruned, no TensorBoard files. The budget is generous so that the run ends at n_iters on any machine (stopping at a
    budget is tested in test_torch_training_wall_clock.py and by the JAX trainer's tests)."""
    import dataclasses

    from tensorf_common.config import preset

    cfg = preset("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, minutes=5.0, n_iters=6, upsample_at=(),
                                                              alpha_mask_at=(), log_every=2),
                              render=dataclasses.replace(cfg.render, appearance="topk", topk=8))
    out = tmp_path / framework
    out.mkdir()
    job = {"spec": {"name": framework, "framework": framework, "appearance": "topk", "topk": 8, "precision": "fp32"},
           "config": cfg.to_dict(), "data_dir": str(small_scene), "out_dir": str(out), "lpips": False,
           "keep_models": False, "keep_renders": False, "figure_views": ["r_1"]}
    (out / "job.json").write_text(json.dumps(job))
    assert quality.quality_main(str(out / "job.json")) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["framework"] == framework and run["budget_s"] == pytest.approx(300.0)
    assert run["steps"] == 6 and run["eval"]["n_images"] == 2 and run["rays_per_s"] > 0
    assert all("elapsed" in h for h in run["history"])
    assert sorted(p.name for p in (out / "eval").glob("*.png")) == ["r_1.png"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(("model.", "checkpoint."))]
    assert (out / "eval" / "metrics.json").is_file()
    assert not (out / "tensorboard").exists()  # no event files in a committed report
    from tensorf_common.run_summary import SHARED_KEYS

    assert set(SHARED_KEYS) | {"eval", "eval_render_seconds", "budget_s", "spec"} <= set(run)
    assert run["step_seconds"] <= run["train_seconds"] and run["time_to_first_step"] > 0
    assert (run["compiles"] == []) == (framework == "torch")


def test_compare_two_runs(tmp_path):
    a = make_fake_run(tmp_path / "a")
    b = make_fake_run(tmp_path / "b", bench_scale=0.5, failed_quality="jax-all")
    from tensorf_bench.report.build import build_report

    build_report(a)
    build_report(b)
    md = compare_markdown(a, b)
    assert "**A**" in md and "**B**" in md
    assert "| vmap | lookup | rays forward | 100 ms | 50 ms | 2.00× |" in md
    assert "| JAX threshold | PSNR | 25.10 | 25.10 | +0 |" in md
    assert "| JAX all | PSNR | 23.00 | – | – |" in md


def test_cli_compare_and_report_errors(tmp_path, capsys):
    from tensorf_bench.cli import main
    from tensorf_bench.report.build import build_report

    a = make_fake_run(tmp_path / "a")
    build_report(a)
    assert main(["compare", str(a), str(a), "--out", str(tmp_path / "cmp.md")]) == 0
    assert "1.00×" in (tmp_path / "cmp.md").read_text()
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main(["report", "--resume", str(tmp_path / "missing")]) == 2
    assert main(["report", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown report preset" in capsys.readouterr().err


def test_run_benchmarks_records_json_outcomes_and_progress(tmp_path):
    """The benchmark stage's subprocess on one cheap benchmark (smoke size, timed once)."""
    seen = []
    res = stages.run_benchmarks(tmp_path / "b.json", tmp_path / "o.jsonl", tmp_path / "b.log", "smoke", timeout_s=600,
                            extra_args=("-k", "test_framework and field and torch"),
                            progress=lambda f, t: seen.append((f, t)))
    assert res["returncode"] == 0 and res["error"] is None, (tmp_path / "b.log").read_text()[-2000:]
    bench = json.loads((tmp_path / "b.json").read_text())
    names = [b["name"] for b in bench["benchmarks"]]
    assert names == ["test_framework[field-torch-eager]"]
    info = bench["benchmarks"][0]["extra_info"]
    assert info["impl"] == "torch-eager" and info["size"] == "smoke" and info["allocator"] in ("mimalloc", "system")
    outcomes = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert {o["outcome"] for o in outcomes} <= {"passed", "skipped"}
    assert seen and seen[-1][0] == 1.0


def test_bench_targets_list_every_benchmark_file_most_informative_first():
    from pathlib import Path

    targets = stages.bench_targets()
    on_disk = sorted(f"benchmarks/{p.name}" for p in (Path(children.REPO_ROOT) / "benchmarks").glob("test_*.py"))
    assert sorted(targets) == on_disk and len(set(targets)) == len(targets)
    assert targets[0] == "benchmarks/test_precision.py" and targets[1] == "benchmarks/test_framework.py"


def test_quality_child_entry_point_is_the_module_the_stage_spawns():
    """``quality_stage`` starts ``python -m tensorf_bench.report_runner quality JOB.json``: that module
    runs (its usage line and exit 2 without a job)."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "tensorf_bench.report_runner"], capture_output=True, text=True,
                         cwd=children.REPO_ROOT, timeout=120)
    assert out.returncode == 2 and "python -m tensorf_bench.report_runner quality JOB.json" in out.stderr


@pytest.mark.parametrize(
    "damage,message",
    [
        ("report.json invalid", "report.json: not valid JSON"),
        ("report.json a list", "report.json: expected a JSON object, got list"),
        ("report.json without preset", "report.json: missing 'preset.name'"),
        ("report.json without data", "report.json: missing 'data'"),
        ("report.json unknown preset", "report.json: preset.name 'bogus' is not a report preset"),
        ("stage a list", "stages/machine.json: not a stage record (expected a JSON object, got list)"),
        ("stage invalid", "stages/machine.json: not a stage record"),
    ],
)
def test_resume_of_a_damaged_run_folder_exits_2_naming_the_file(damage, message, tmp_path, capsys):
    """It was a traceback (exit 1), and an unknown preset in report.json was blamed on --preset."""
    from tensorf_bench.cli import main

    run = tmp_path / "run"
    assert _runner(run, FakeStages()).run() == 0
    capsys.readouterr()
    meta_path, stage_path = run / "report.json", run / "stages" / "machine.json"
    meta = json.loads(meta_path.read_text())
    if damage == "report.json invalid":
        meta_path.write_text('{"preset": ')
    elif damage == "report.json a list":
        meta_path.write_text("[1, 2]")
    elif damage == "report.json without preset":
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "preset"}))
    elif damage == "report.json without data":
        meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "data"}))
    elif damage == "report.json unknown preset":
        meta_path.write_text(json.dumps({**meta, "preset": {**meta["preset"], "name": "bogus"}}))
    elif damage == "stage a list":
        stage_path.write_text("[]")
    else:
        stage_path.write_text("{")
    before = {p: p.read_bytes() for p in (meta_path, stage_path)}
    assert main(["report", "--resume", str(run), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "--preset" not in err[0]
    assert {p: p.read_bytes() for p in before} == before  # nothing rewritten


def test_progress_in_a_log_writes_plain_status_lines(capsys, monkeypatch):
    """A report redirected to a file gets no progress bar (no carriage returns), but a status line
    when the stage's status changes, at most every LOG_EVERY_S."""
    import time as _time

    from tensorf_bench.report_runner.progress import Progress

    monkeypatch.setattr(Progress, "LOG_EVERY_S", 0.05)
    prog = Progress(100.0, tty=False)
    prog.start_stage("quality-x", 50.0)
    prog.update(0.5, "step 10, 5/60 s")
    _time.sleep(0.3)  # several ticks, one status
    prog.end_stage("  ok quality-x")
    prog.close()
    err = capsys.readouterr().err
    assert prog.bar is None and "\r" not in err
    status = [line for line in err.splitlines() if line.startswith("  ... ")]
    assert len(status) == 1 and "quality-x: step 10, 5/60 s" in status[0] and "of 100 est. s" in status[0]
    assert "  ok quality-x" in err
