"""LPIPS: jax_tensorf.lpips and torch_reference.lpips give the same distances (<= 1e-5) and the same
per-stage trunk activations, on random images of several sizes and on the LPIPS examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tensorf_common.lpips_weights import LpipsUnavailable

jl = pytest.importorskip("jax_tensorf.lpips")
tl = pytest.importorskip("torch_reference.lpips")

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lpips_examples"
TOL = 1e-5


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple]:
    try:
        return {net: (jl.LPIPS(net), tl.LPIPS(net)) for net in ("alex", "vgg")}
    except LpipsUnavailable as exc:
        pytest.skip(f"LPIPS weights not installed: {exc}")


@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("shape", [(64, 64), (37, 53)])
def test_random_images(pairs, net, shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random((2, *shape, 3), dtype=np.float32)
    smooth = np.clip(0.5 + 0.5 * np.cumsum(rng.standard_normal((2, *shape, 3), dtype=np.float32), axis=2) / 8, 0, 1)
    b = np.stack([np.clip(a[0] + 0.15 * rng.standard_normal(a[0].shape, dtype=np.float32), 0, 1), smooth[1]])
    j, t = pairs[net]
    dj, dt = j.batch(a, b), t.batch(a, b)
    assert np.all(dj > 1e-3)
    np.testing.assert_allclose(dj, dt, rtol=0, atol=TOL)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_examples(pairs, net):
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is absent")
    from tensorf_common.evaluation import load_rgb

    ref, p0, p1 = (load_rgb(EXAMPLES / f"ex_{n}.png") for n in ("ref", "p0", "p1"))
    j, t = pairs[net]
    for x in (p0, p1):
        assert abs(j(ref, x) - t(ref, x)) <= TOL


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_trunk_activations(pairs, net):
    import jax.numpy as jnp
    import torch

    from tensorf_common.lpips_weights import SCALING_SCALE, SCALING_SHIFT

    rng = np.random.default_rng(3)
    x = rng.random((1, 48, 48, 3), dtype=np.float32)
    scaled = ((2 * x - 1) - np.asarray(SCALING_SHIFT, np.float32)) / np.asarray(SCALING_SCALE, np.float32)
    j, t = pairs[net]
    fj = jl.lpips_features(j.params, jnp.asarray(scaled), net)
    with torch.inference_mode():
        ft = t.module.features(torch.from_numpy(scaled).permute(0, 3, 1, 2))
    assert len(fj) == len(ft) == 5
    for a, b in zip(fj, ft):
        b = b.permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
