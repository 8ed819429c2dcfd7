"""Data-parallel training and rendering on several devices (jax.sharding + shard_map).

JAX fixes its device count when its backend starts, so the multi-device checks run in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four CPU devices)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tensorf_common.config import ConfigError, TrainConfig, preset

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from tensorf_common.config import preset
    from tensorf_common.data.blender import load_blender
    from jax_tensorf.training import Trainer
    from tensorf_common.errors import TrainingError

    ds = load_blender(sys.argv[1], splits=("train", "test"))
    base = preset("smoke")
    params, out = {}, {"devices": len(jax.devices())}
    for nd in (1, 4):
        cfg = dataclasses.replace(
            base,
            train=dataclasses.replace(base.train, n_iters=10, devices=nd, upsample_at=(), alpha_mask_at=()),
            render=dataclasses.replace(base.render, sample_capacity=0.9),
        )
        tr = Trainer(cfg, ds, log=lambda s: None)
        tr.run()
        params[nd] = [np.asarray(x) for x in jax.tree.leaves(tr.model.params)]
        out[f"overflow_{nd}"] = max(p.sample_overflow for p in tr.history)
        if nd == 1:
            model = tr.model
    out["param_max_abs"] = max(float(np.abs(a - b).max()) for a, b in zip(params[1], params[4]))
    o, d = ds["test"].view_rays(0)
    single = model.render_chunks(o, d, chunk=512)
    model.mesh = Mesh(np.array(jax.devices()), ("data",))
    model._eval_caps.clear()
    multi = model.render_chunks(o, d, chunk=512)
    out["render_max_abs"] = {k: float(np.abs(single[k] - multi[k]).max()) for k in single}
    try:
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, devices=8))
        Trainer(cfg, ds, log=lambda s: None)
        out["too_many"] = "no error"
    except TrainingError as exc:
        out["too_many"] = str(exc)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def multi_device_result(small_scene):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(small_scene)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_four_host_devices_are_used(multi_device_result):
    assert multi_device_result["devices"] == 4


def test_ten_data_parallel_steps_match_one_device(multi_device_result):
    r = multi_device_result
    assert r["overflow_1"] == 0 and r["overflow_4"] == 0  # same work on both sides
    assert r["param_max_abs"] <= 1e-5, r["param_max_abs"]


def test_data_parallel_rendering_matches(multi_device_result):
    for key, err in multi_device_result["render_max_abs"].items():
        assert err <= 1e-5, (key, err)


def test_more_devices_than_available_is_a_clear_error(multi_device_result):
    assert "8 requested" in multi_device_result["too_many"]


def test_batch_must_split_evenly_across_devices():
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(batch_size=250, devices=4)
    assert dataclasses.replace(preset("smoke").train, devices=4).devices == 4
