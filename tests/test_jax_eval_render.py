"""jax_tensorf.eval_render: the chunked evaluation render equals the uncompacted render at any chunk
size, re-renders only overflowing chunks (with capacities from their exact counts), reads results on
the host once per round rather than once per chunk, makes rays on the device as
``tensorf_common.data.get_rays`` does, sizes chunks from device memory; and
jax_tensorf.evaluation records render and compile seconds apart."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import blob_model, rays_at_box
from jax_tensorf import eval_render
from jax_tensorf.eval_render import RenderStats, camera_rays, given_rays, render_chunked
from tensorf_common.config import RenderConfig
from tensorf_common.data import get_ray_directions, get_rays

N_RAYS = 600


def _reference(m, o, d):
    opts = m.render_options(m.n_samples, train=False, want_depth=True, appearance="threshold")
    assert opts.sample_capacity is None and opts.app_capacity is None
    return {k: np.asarray(v) for k, v in m.render(jnp.asarray(o), jnp.asarray(d), opts).items() if k != "stats"}


@pytest.fixture(scope="module")
def blob():
    """The blob model (chunk sized from memory unless a call fixes it; its executables are shared by
    the tests, which keeps their compilations few), rays of which a third miss the box, and their
    uncompacted render."""
    m = blob_model(render_cfg=RenderConfig(chunk=None))
    o, d = rays_at_box(N_RAYS, miss=np.arange(0, N_RAYS, 3))
    ref = _reference(m, o, d)
    assert ref["acc"].max() > 0.9 and (ref["acc"] < 1e-6).sum() >= N_RAYS // 3
    return m, o, d, ref


def _assert_equal(got, ref, what):
    for k in ("rgb", "acc", "depth"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=2e-6, err_msg=f"{k}, {what}")


def test_overflowing_chunks_are_rendered_again_and_the_result_is_the_uncompacted_one(blob, monkeypatch):
    """The probe that sizes the first capacities is made to count no valid sample, so that the first
    chunk overflows the smallest capacities. Since the capacities are not known yet, it goes alone
    first: only it is rendered again, with capacities from its exact counts, and the other four
    chunks then fit them. The result equals the uncompacted render. A second call starts from the
    grown capacities: no re-render, nothing compiled."""
    m = blob[0]
    o, d = rays_at_box(2560, seed=7, miss=np.arange(0, 2560, 3))
    ref = _reference(m, o, d)
    m._eval_caps.clear()
    monkeypatch.setattr(eval_render, "count_valid_samples", lambda *a, **k: jnp.int32(0))
    stats = RenderStats()
    got = render_chunked(m, given_rays(o, d), chunk=512, stats=stats)
    monkeypatch.undo()
    _assert_equal(got, ref, "after re-renders")
    (s0, a0), *grown = stats.capacities
    assert s0 == 1024 and a0 == 1024  # the smallest bucket: the probe saw no valid sample
    assert stats.rerendered == 1 and stats.chunks == 6
    assert len(grown) == 1 and grown[0][0] > s0 and grown[0][1] > a0
    again = RenderStats()
    got2 = render_chunked(m, given_rays(o, d), chunk=512, stats=again)
    assert again.rerendered == 0 and again.compiles == 0 and again.capacities == grown
    _assert_equal(got2, ref, "second call")


def test_result_does_not_depend_on_the_chunk_size(blob):
    m, o, d, ref = blob
    for chunk in (128, 1024):
        _assert_equal(render_chunked(m, given_rays(o, d), chunk=chunk), ref, f"chunk {chunk}")


def test_results_are_read_on_the_host_once_per_round_not_per_chunk(blob, monkeypatch):
    """With capacities known, a call of 5 chunks reads device values on the host exactly twice (the
    chunks' counts, then the assembled outputs), both through ``jax.device_get``; nothing reads a
    device value in between (a per-chunk ``int(overflow)`` would)."""
    from jax._src.array import ArrayImpl

    m, o, d, ref = blob
    render_chunked(m, given_rays(o, d), chunk=128)  # capacities and executables ready
    calls = {"device_get": 0, "other_reads": 0}
    inside = [False]
    real_get, real_value = jax.device_get, ArrayImpl._value

    def device_get(x):
        calls["device_get"] += 1
        inside[0] = True
        try:
            return real_get(x)
        finally:
            inside[0] = False

    def value(self):
        if not inside[0]:
            calls["other_reads"] += 1
        return real_value.fget(self)

    source = given_rays(o, d)
    monkeypatch.setattr(jax, "device_get", device_get)
    monkeypatch.setattr(ArrayImpl, "_value", property(value))
    stats = RenderStats()
    got = render_chunked(m, source, chunk=128, stats=stats)
    monkeypatch.undo()
    assert stats.chunks == 5 and stats.rerendered == 0
    assert calls == {"device_get": 2, "other_reads": 0}
    _assert_equal(got, ref, "host reads")


def test_camera_rays_are_get_rays_made_on_the_device():
    """Rays of three views made by the device ray function equal ``get_rays`` on the host (to float32
    rounding), view-major and row-major."""
    rng = np.random.default_rng(1)
    c2w = np.zeros((3, 4, 4), np.float32)
    for v in range(3):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        c2w[v, :3, :3], c2w[v, :3, 3], c2w[v, 3, 3] = q, rng.normal(size=3) * 4, 1.0
    dirs = get_ray_directions(6, 8, 7.5)
    src = camera_rays(dirs, c2w)
    assert src.total == 3 * 48
    o, d = jax.device_get(eval_render._rays_of_cameras(*src.arrays))
    for v in range(3):
        o_ref, d_ref = get_rays(dirs, c2w[v])
        np.testing.assert_allclose(o[v * 48 : (v + 1) * 48], o_ref, rtol=0, atol=0)
        np.testing.assert_allclose(d[v * 48 : (v + 1) * 48], d_ref, rtol=0, atol=3e-7)


def test_render_views_of_a_split_equal_the_uncompacted_render_of_their_rays(blob, small_dataset):
    """``render_views`` renders several views in one call from rays made on the device: those of
    ``view_rays`` to float32 rounding. The renders are compared on the very rays it made (its compiled
    ray function): a ray that differs in the last bit may have one more sample on the box's face."""
    from jax_tensorf.evaluation import render_view, render_views

    m = blob[0]
    split = small_dataset["test"]
    views = render_views(m, split, [2, 0], chunk=512)
    src = camera_rays(split.directions(), split.c2w[[2, 0]])
    o, d = jax.device_get(eval_render.compiled(m, "camera_rays", eval_render._rays_of_cameras, src.arrays)(*src.arrays))
    hw = split.n_pixels
    for i, (v, got) in enumerate(zip((2, 0), views)):
        o_v, d_v = o[i * hw : (i + 1) * hw], d[i * hw : (i + 1) * hw]
        np.testing.assert_allclose(d_v, split.view_rays(v)[1], rtol=0, atol=3e-7)
        ref = _reference(m, o_v, d_v)
        assert ref["acc"].max() > 0.5  # the blob is in view
        _assert_equal({k: x.reshape(ref[k].shape) for k, x in got.items()}, ref, f"view {v}")
    one = render_view(m, split, 2, chunk=1024)
    assert one["rgb"].shape == (split.height, split.width, 3) and one["depth"].shape == (split.height, split.width)
    np.testing.assert_allclose(one["rgb"], views[0]["rgb"], rtol=0, atol=2e-6)
    with pytest.raises(IndexError):
        render_view(m, split, split.n_views)


def test_evaluate_split_records_render_and_compile_seconds_apart(small_dataset, tmp_path):
    from jax_tensorf.evaluation import evaluate_split

    m = blob_model(render_cfg=RenderConfig(chunk=512))  # a model of its own: the first call compiles
    split = small_dataset["test"]
    seen = []
    results, render_s = evaluate_split(m, split, tmp_path / "a", views=[0, 1], lpips=False,
                                       progress=lambda i, n: seen.append((i, n)))
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())["settings"]
    assert seen == [(1, 2), (2, 2)]
    assert first["eval_compiles"] >= 3 and first["eval_compile_seconds"] > 0  # render, rays, assembly
    assert first["render_seconds"] == pytest.approx(render_s, abs=1e-3) and render_s > 0
    assert first["eval_chunk"] == 512
    again, _ = evaluate_split(m, split, tmp_path / "b", views=[0, 1], lpips=False)
    assert again.settings["eval_compiles"] == 0 and again.settings["eval_compile_seconds"] == 0
    assert [r["psnr"] for r in again.per_image] == [r["psnr"] for r in results.per_image]
    assert (tmp_path / "b" / "r_1.png").is_file() and (tmp_path / "b" / "depth" / "r_0.png").is_file()


def test_chunk_sized_from_memory_and_halved_when_the_executable_does_not_fit(blob, monkeypatch):
    """Without a fixed chunk, the chunk is a power of two from the device's memory, at most 1/16 of
    the rays; an executable whose temporaries exceed the free memory is compiled again at half the
    chunk, down to the smallest chunk."""
    m = blob[0]
    assert m.render_cfg.chunk is None
    n = 16 * 2048
    o, d = rays_at_box(n, seed=5)
    stats = RenderStats()
    got = render_chunked(m, given_rays(o, d), want_depth=False, stats=stats)
    assert stats.chunk == 2048  # memory allows more on this host; 1/16 of the rays caps it
    assert set(got) == {"rgb", "acc"} and got["rgb"].shape == (n, 3)
    monkeypatch.setattr(eval_render, "render_memory_bytes", lambda: 0)  # nothing fits
    small = RenderStats()
    got_small = render_chunked(m, given_rays(o, d), want_depth=False, stats=small)
    assert small.chunk == eval_render.CHUNK_LIMITS[0] == 1024 and len(small.capacities) >= 2
    for k in got:
        np.testing.assert_allclose(got_small[k], got[k], rtol=0, atol=2e-6, err_msg=k)


@pytest.mark.parametrize("strategy", ["all", "topk"])
def test_other_eval_appearance_strategies_equal_their_uncompacted_render(strategy):
    """``all`` (packed samples, no appearance capacity) and ``topk`` (density compacted in place, the
    k largest weights per ray) evaluate like their uncompacted renders too."""
    m = blob_model(render_cfg=RenderConfig(chunk=256, eval_appearance=strategy, topk=4))
    o, d = rays_at_box(300, seed=11)
    opts = m.render_options(m.n_samples, train=False, want_depth=True, appearance=strategy)
    ref = {k: np.asarray(v) for k, v in m.render(jnp.asarray(o), jnp.asarray(d), opts).items() if k != "stats"}
    assert ref["acc"].max() > 0.9
    stats = RenderStats()
    _assert_equal(render_chunked(m, given_rays(o, d), stats=stats), ref, strategy)
    assert stats.capacities[0][0] is not None and stats.capacities[0][1] is None
