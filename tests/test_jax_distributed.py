"""Multi-process training on JAX's distributed runtime (``jax_tensorf.distributed``,
``tensorf-bench train --distributed``), with two local processes of two CPU devices each that
exchange gradients over gloo.

One module-scoped run (compiling the step in several processes is the cost): the reference, one
process with four devices, trains the smoke preset for 6 steps, checkpoints, and trains on to 10;
meanwhile two processes train the same 6 steps and process 0 checkpoints; then the CLI resumes the
two processes from that checkpoint (process 1 from a copy in its own folder, as on another host)
to step 10, and process 0 evaluates and writes the run. Both checkpoints must equal the
reference's, and process 1 must have written nothing. The failure tests check that a bad
coordinator and mismatched process counts end with one line and exit status 2, not a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

TIMEOUT = 600
"""Seconds a phase may take before the test fails (a hang, not a slow machine)."""

STEPS, FIRST = 10, 6

CONFIG = f"""
import dataclasses
from tensorf_common.config import preset
base = preset("smoke")  # its first upsample is at step 20: no events in 10 steps
CFG = dataclasses.replace(base, train=dataclasses.replace(base.train, n_iters={STEPS}, devices=4))
"""

REFERENCE = CONFIG + textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    from tensorf_common.data import load_from_config
    from jax_tensorf.training import Trainer

    out = Path(sys.argv[2])
    tr = Trainer(CFG, load_from_config(sys.argv[1], CFG.data, ("train",)), log=lambda s: None)
    tr.run(max_steps={FIRST})
    tr.save_checkpoint(out / "first.npz")
    tr.run()
    tr.save_checkpoint(out / "last.npz")
    """
)

FIRST_PHASE = CONFIG + textwrap.dedent(
    f"""
    import json, sys
    from jax_tensorf.distributed import initialize
    procs = initialize(sys.argv[3], 2, int(sys.argv[4]), timeout=120)
    import jax
    from tensorf_common.data import load_from_config
    from jax_tensorf.training import Trainer
    from jax_tensorf.xla import enable_compilation_cache

    enable_compilation_cache()  # as train_run does: the resumed processes load the step from it
    tr = Trainer(CFG, load_from_config(sys.argv[1], CFG.data, ("train",)), out_dir=sys.argv[2], log=lambda s: None)
    tr.run(max_steps={FIRST})
    tr.save_checkpoint()  # process 0 writes it
    print("RESULT " + json.dumps({{"index": procs.index, "count": procs.count, "devices": jax.device_count(),
                                   "local": jax.local_device_count(), "step": tr.pos.step}}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(repo_root: Path, tmp: Path, devices: int) -> dict:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        TENSORF_BENCH_JAX_CACHE=str(tmp / "jax-cache"),
        PYTHONPATH=os.pathsep.join([str(repo_root)] + [p for p in [env.get("PYTHONPATH")] if p]),
    )
    return env


def _start(args, env, cwd, log: Path):
    f = open(log, "w")
    proc = subprocess.Popen([str(a) for a in args], env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    proc.log_file = f  # type: ignore[attr-defined]
    return proc


def _finish(procs, timeout: float = TIMEOUT):
    """Wait for every process (killing all at the deadline); the exit codes and outputs."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p, c in zip(procs, codes):
        if c is None:
            p.kill()
            p.wait()
        p.log_file.close()
    return codes, [p.log.read_text() for p in procs]


def _cli(port: int, index: int, count: int, *extra) -> list[str]:
    return [sys.executable, "-m", "tensorf_bench.cli", "train", "--distributed", "--coordinator",
            f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(index), *map(str, extra)]


@pytest.fixture(scope="module")
def two_processes(small_scene, repo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    ref, runs = tmp / "ref", [tmp / "run0", tmp / "run1"]
    ref.mkdir()
    port = _free_port()
    started = [
        _start([sys.executable, "-c", REFERENCE, small_scene, ref], _env(repo_root, tmp, 4), repo_root, tmp / "ref.log")
    ] + [
        _start([sys.executable, "-c", FIRST_PHASE, small_scene, runs[i], f"127.0.0.1:{port}", i],
               _env(repo_root, tmp, 2), repo_root, tmp / f"first{i}.log")
        for i in range(2)
    ]
    codes, logs = _finish(started)
    assert codes == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)
    first = [json.loads([l for l in log.splitlines() if l.startswith("RESULT ")][-1][7:]) for log in logs[1:]]
    written_first = {i: sorted(p.name for p in runs[i].rglob("*")) if runs[i].exists() else [] for i in range(2)}
    shutil.copy(runs[0] / "checkpoint.npz", tmp / "first.npz")
    runs[1].mkdir(exist_ok=True)
    shutil.copy(runs[0] / "checkpoint.npz", runs[1] / "checkpoint.npz")  # "a copy on the other host"
    before = (runs[1] / "checkpoint.npz").read_bytes()
    port = _free_port()
    started = [
        _start(_cli(port, i, 2, "--data", small_scene, "--preset", "smoke", "--out", runs[i], "--resume",
                    "--no-progress", "--no-lpips"), _env(repo_root, tmp, 2), repo_root, tmp / f"resume{i}.log")
        for i in range(2)
    ]
    codes, cli_logs = _finish(started)
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in cli_logs)
    return {
        "tmp": tmp, "ref": ref, "runs": runs, "first": first, "written_first": written_first, "cli_logs": cli_logs,
        "copy_unchanged": (runs[1] / "checkpoint.npz").read_bytes() == before,
        "run1_files": sorted(p.name for p in runs[1].rglob("*")),
    }


def _max_abs(a_path: Path, b_path: Path) -> float:
    a, b = np.load(a_path), np.load(b_path)
    keys = sorted(k for k in a.files if a[k].dtype.kind == "f")
    assert keys == sorted(k for k in b.files if b[k].dtype.kind == "f")
    assert any(k.startswith("params/") for k in keys) and any(k.startswith("opt/mu") for k in keys)
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in keys)


def test_two_processes_share_one_mesh_of_four_devices(two_processes):
    for i, r in enumerate(two_processes["first"]):
        assert r == {"index": i, "count": 2, "devices": 4, "local": 2, "step": FIRST}


def test_parameters_equal_one_process_with_four_devices(two_processes):
    """Parameters and Adam's moments after 6 steps, and after resuming to 10, equal one process with
    all four devices (only the summation order of the gradient mean differs)."""
    t = two_processes
    assert _max_abs(t["tmp"] / "first.npz", t["ref"] / "first.npz") <= 1e-6
    assert _max_abs(t["runs"][0] / "checkpoint.npz", t["ref"] / "last.npz") <= 1e-6


def test_only_process_0_writes(two_processes):
    t = two_processes
    assert t["written_first"] == {0: ["checkpoint.npz"], 1: []}
    # resumed from its own copy of the checkpoint, process 1 wrote nothing into its folder
    assert t["run1_files"] == ["checkpoint.npz"] and t["copy_unchanged"]
    run = t["runs"][0]
    for name in ("checkpoint.npz", "model.npz", "run.json", "eval/metrics.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == STEPS and summary["processes"] == 2 and summary["config"]["train"]["devices"] == 4
    assert summary["eval"]["n_images"] == 2
    out0, out1 = t["cli_logs"]
    assert "mean test PSNR" in out0 and "mean test PSNR" not in out1
    assert "process 0 wrote the run folder" in out1


@pytest.fixture(scope="module")
def failures(small_scene, repo_root, tmp_path_factory):
    """Three processes at once: one whose coordinator does not exist (nothing listens at the
    address), and two started with different process counts."""
    tmp = tmp_path_factory.mktemp("failures")
    args = ("--data", small_scene, "--preset", "smoke", "--out", tmp / "run")
    port = _free_port()
    started = [_start(_cli(_free_port(), 1, 2, *args, "--connect-timeout", 5), _env(repo_root, tmp, 2), repo_root,
                      tmp / "absent.log")]
    started += [
        _start(_cli(port, i, count, *args, "--connect-timeout", 60), _env(repo_root, tmp, 2), repo_root, tmp / f"{i}.log")
        for i, count in ((0, 2), (1, 3))
    ]
    codes, logs = _finish(started, timeout=120)  # a hang fails here
    return {"codes": codes, "logs": logs, "wrote": (tmp / "run").exists()}


def _one_error_line(log: str) -> str:
    """The process's only output: one ``error:`` line (no runtime log, no traceback)."""
    lines = [l for l in log.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), log[-3000:]
    return lines[0]


def test_no_coordinator_is_a_one_line_error_after_the_timeout(failures):
    """Exit 2 with one line after --connect-timeout, instead of JAX's runtime waiting for its own
    deadline and then aborting the process."""
    code, log = failures["codes"][0], failures["logs"][0]
    assert code == 2, log[-3000:]
    line = _one_error_line(log)
    assert "did not all connect" in line and "within 5 s" in line
    assert not failures["wrote"]


def test_mismatched_process_counts_fail_on_every_process(failures):
    codes, logs = failures["codes"][1:], failures["logs"][1:]
    assert codes == [2, 2], "\n\n".join(logs)
    assert "process 1 with 3" in _one_error_line(logs[0])
    assert "process 0 with 2" in _one_error_line(logs[1])


# ---------------------------------------------------------------------------------------------
# In-process: the checks made before JAX's runtime is asked, and the single-process helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coordinator", "count", "index", "message"),
    [
        ("localhost", 2, 0, "expected HOST:PORT"),
        ("localhost:99999", 2, 0, "expected HOST:PORT"),
        ("no-such-host.invalid:1234", 2, 1, "cannot resolve"),
        ("localhost:1234", 2, 2, "not below --num-processes"),
        ("localhost:1234", 0, None, "must be >= 1"),
    ],
)
def test_bad_arguments_are_config_errors(coordinator, count, index, message):
    from jax_tensorf.distributed import _check_arguments
    from tensorf_common.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _check_arguments(coordinator, count, index)


def test_process_0_needs_a_local_address_and_a_free_port():
    from jax_tensorf.distributed import _check_arguments
    from tensorf_common.config import ConfigError

    with pytest.raises(ConfigError, match="not an address of this machine"):
        _check_arguments("192.0.2.1:1234", 2, 0)  # TEST-NET-1: never local
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as busy:
        busy.bind(("::" if socket.has_ipv6 else "", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="not free"):
            _check_arguments(f"127.0.0.1:{busy.getsockname()[1]}", 2, 0)
    _check_arguments(f"127.0.0.1:{_free_port()}", 2, 0)  # a free local port passes


def test_one_process_is_no_distributed_run():
    import jax

    from jax_tensorf.distributed import batch_rows, global_mesh, processes
    from tensorf_common.errors import TrainingError

    assert processes() is None
    mesh = global_mesh(jax.device_count())
    assert batch_rows(mesh, 8 * jax.device_count()) == slice(0, 8 * jax.device_count())
    with pytest.raises(TrainingError, match="trains on every device"):
        global_mesh(jax.device_count() + 1)
