"""jax_tensorf.checkpoint: model round trips (same arrays, same render), and every way a file can be
wrong (missing, not an npz, no metadata, another format or version, pickles, missing or misshapen
arrays, a model where a training run is expected) -> CheckpointError naming the file and the key."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import SMALL_CP_RGB, SMALL_VM_FEA, numpy_model, trees_bit_identical
from jax_tensorf.checkpoint import load_checkpoint, load_model, read_npz, save_model, write_npz
from jax_tensorf.model import render
from tensorf_common.config import ExperimentConfig, RenderConfig
from tensorf_common.errors import CheckpointError

AABB = np.array([[-1.0, -1.2, -0.8], [1.0, 1.2, 0.8]], np.float32)


@pytest.fixture(scope="module")
def model():
    m = numpy_model(SMALL_VM_FEA, [9, 11, 8], RenderConfig(appearance="topk", topk=8), AABB, seed=1, near_far=(1.5, 5.0))
    m.params = dict(m.params, density=jax.tree.map(lambda x: jnp.abs(x) * 3.0 + 0.9, m.params["density"]))  # visible
    mask = np.random.default_rng(0).random((6, 7, 5)) < 0.6  # (Z, Y, X)
    m.set_mask(mask, AABB * 0.9)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    save_model(model, path)
    return path


def test_model_round_trip_arrays_and_settings(model, saved):
    loaded, cfg = load_model(saved)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.field == model.field_cfg and cfg.render == model.render_cfg
    assert loaded.field_cfg == model.field_cfg and loaded.render_cfg == model.render_cfg
    assert trees_bit_identical(jax.tree.map(np.asarray, loaded.params), jax.tree.map(np.asarray, model.params))
    for name in ("aabb", "step_size", "mask", "mask_aabb"):
        a, b = np.asarray(getattr(loaded.state, name)), np.asarray(getattr(model.state, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert loaded.grid_size == model.grid_size == [9, 11, 8]
    assert loaded.mask_grid_size == [5, 7, 6] and loaded.has_mask()
    assert tuple(loaded.near_far) == (1.5, 5.0) and loaded.white_bg is True
    # the file holds no pickles and lists the params under readable keys
    arrays, meta = read_npz(saved)
    assert meta["kind"] == "model" and meta["grid_size"] == [9, 11, 8]
    assert "params/density/planes/0" in arrays and "params/render/mlp_0/kernel" in arrays
    assert not [p for p in saved.parent.iterdir() if p.name != saved.name]  # no temporary files left


def test_model_round_trip_renders_identically(model, saved):
    loaded, _ = load_model(saved)
    rng = np.random.default_rng(1)
    o = rng.normal(size=(128, 3))
    o = 3.0 * o / np.linalg.norm(o, axis=1, keepdims=True)
    d = rng.uniform(-0.6, 0.6, size=(128, 3)) - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o, d = jnp.asarray(o.astype(np.float32)), jnp.asarray(d.astype(np.float32))
    outs = []
    for m in (model, loaded):
        opts = m.render_options(m.n_samples, train=False, want_depth=True)
        out = render(m.params, m.state, o, d, cfg=m.field_cfg, opts=opts)
        outs.append({k: np.asarray(v) for k, v in out.items() if k != "stats"})
    assert outs[0]["acc"].max() > 0.5  # something is rendered
    for k in ("rgb", "depth", "acc"):
        np.testing.assert_array_equal(outs[1][k], outs[0][k], err_msg=k)


def test_cp_model_round_trip(tmp_path):
    m = numpy_model(SMALL_CP_RGB, [7, 6, 5], aabb=AABB)
    save_model(m, tmp_path / "cp.npz")
    loaded, cfg = load_model(tmp_path / "cp.npz")
    assert cfg.field.model == "CP" and loaded.grid_size == [7, 6, 5]
    assert trees_bit_identical(jax.tree.map(np.asarray, loaded.params), jax.tree.map(np.asarray, m.params))
    assert loaded.mask_grid_size is None
    save_model(m, tmp_path / "cp.npz")  # overwriting in place works (atomic rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.npz"]


# ------------------------------------------------------------------ bad files


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(CheckpointError, match="absent.npz"):
        load_model(path)
    with pytest.raises(CheckpointError, match="absent.npz"):
        load_checkpoint(path)


def test_not_an_npz_names_the_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.npz"):
        load_model(path)


def test_npz_without_metadata(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"plain\.npz.*__meta__"):
        load_model(path)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, __meta__=np.frombuffer(b"{}", np.uint8), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled.npz"):
        load_model(path)


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"format": "tensorf-bench-torch", "version": 1}, "format"),
        ({"version": 1}, "format"),
        ({"format": "tensorf-bench-jax", "version": 99}, "version"),
    ],
)
def test_wrong_format_or_version(tmp_path, meta, match):
    path = tmp_path / "other.npz"
    write_npz(path, {"x": np.zeros(2)}, meta)
    with pytest.raises(CheckpointError, match=rf"other\.npz.*{match}"):
        load_model(path)


def test_invalid_metadata_json(tmp_path):
    path = tmp_path / "badjson.npz"
    np.savez(path, __meta__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match=r"badjson\.npz.*JSON"):
        load_model(path)


def _rewrite(saved, dst, change):
    arrays, meta = read_npz(saved)
    change(arrays, meta)
    write_npz(dst, arrays, meta)
    return dst


def test_shape_mismatch_names_the_array(saved, tmp_path):
    def shrink_plane(arrays, meta):
        arrays["params/density/planes/1"] = arrays["params/density/planes/1"][:-1]

    path = _rewrite(saved, tmp_path / "bad_shape.npz", shrink_plane)
    with pytest.raises(CheckpointError, match=r"bad_shape\.npz.*params/density/planes/1.*shape"):
        load_model(path)

    def shorten_line(arrays, meta):
        arrays["params/app/lines/0"] = arrays["params/app/lines/0"][:, :-1]  # fewer components

    path = _rewrite(saved, tmp_path / "bad_comps.npz", shorten_line)
    with pytest.raises(CheckpointError, match=r"bad_comps\.npz.*params/app/lines/0"):
        load_model(path)


def test_missing_array_names_the_array(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "missing.npz", lambda a, m: a.pop("params/app/lines/2"))
    with pytest.raises(CheckpointError, match=r"missing\.npz.*params/app/lines/2"):
        load_model(path)
    path = _rewrite(saved, tmp_path / "nostate.npz", lambda a, m: a.pop("state/mask"))
    with pytest.raises(CheckpointError, match=r"nostate\.npz.*state/mask"):
        load_model(path)


def test_a_model_file_is_not_a_resumable_run(saved):
    with pytest.raises(CheckpointError, match=r"model\.npz.*model"):
        load_checkpoint(saved)


def test_config_mismatch_unknown_key(saved, tmp_path):
    def bad_cfg(arrays, meta):
        meta["config"]["field"]["not_a_field"] = 1

    path = _rewrite(saved, tmp_path / "badcfg.npz", bad_cfg)
    with pytest.raises((CheckpointError, ValueError), match="not_a_field"):
        load_model(path)
