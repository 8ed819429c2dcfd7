"""LPIPS v0.1 in both frameworks (jax_tensorf.lpips and torch_reference.lpips, plain torch without
torchvision), each against the same checks: the reference values of the LPIPS repository's examples,
batches, identical images, the weights' effect, input errors and the missing-weights path; then what
only one side has (feature shapes in its layout, jit, torch inputs)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from tensorf_common.evaluation import load_rgb
from tensorf_common.lpips_weights import ENV_VAR, LpipsInputError, LpipsUnavailable

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lpips_examples"

# distance(ex_ref, ex_p0), distance(ex_ref, ex_p1) of the official lpips code (inputs in [-1, 1]).
REFERENCE = {"alex": (0.722, 0.138), "vgg": (0.569, 0.422)}


@pytest.fixture(scope="module")
def examples() -> dict[str, np.ndarray]:
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is absent")
    return {n: load_rgb(EXAMPLES / f"ex_{n}.png") for n in ("ref", "p0", "p1")}


@pytest.fixture(scope="module", params=["jax_tensorf", "torch_reference"])
def lpips_mod(request):
    """The framework's ``lpips`` module (the twins share LPIPS and available_lpips)."""
    return importlib.import_module(f"{request.param}.lpips")


def _load_nets(mod) -> dict:
    try:
        return {"alex": mod.LPIPS("alex"), "vgg": mod.LPIPS("vgg")}
    except LpipsUnavailable as exc:
        pytest.skip(f"LPIPS weights not installed: {exc}")


@pytest.fixture(scope="module")
def nets(lpips_mod) -> dict:
    return _load_nets(lpips_mod)


def _noisy(seed: int, shape) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(shape, dtype=np.float32)
    return a, np.clip(a + 0.1 * rng.standard_normal(shape, dtype=np.float32), 0, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_reference_values(nets, examples, net):
    f = nets[net]
    d0 = f(examples["ref"], examples["p0"])
    d1 = f(examples["ref"], examples["p1"])
    assert isinstance(d0, float)
    assert (d0, d1) == pytest.approx(REFERENCE[net], abs=1e-3)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_batch_matches_single_calls(nets, examples, net):
    f = nets[net]
    ref, p0, p1 = examples["ref"], examples["p0"], examples["p1"]
    d = f.batch(np.stack([ref, ref]), np.stack([p0, p1]))
    assert d.shape == (2,)
    np.testing.assert_allclose(d, [f(ref, p0), f(ref, p1)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identical_images_give_zero_and_order_barely_matters(nets, net):
    a, b = _noisy(0, (64, 64, 3))
    f = nets[net]
    assert abs(f(a, a)) <= 1e-7
    d = f(a, b)
    assert d > 1e-3
    assert f(b, a) == pytest.approx(d, abs=1e-6)


def test_more_noise_is_further(nets):
    rng = np.random.default_rng(1)
    a = rng.random((64, 64, 3), dtype=np.float32)
    noise = rng.standard_normal(a.shape, dtype=np.float32)
    for net in ("alex", "vgg"):
        small = nets[net](a, np.clip(a + 0.02 * noise, 0, 1))
        large = nets[net](a, np.clip(a + 0.2 * noise, 0, 1))
        assert 0 < small < large


def test_weights_are_used(lpips_mod, nets, examples):
    """Scaling the last linear layer by 2 scales its stage's contribution (never a fixed backbone)."""
    from tensorf_common.lpips_weights import load_lpips_weights

    w = load_lpips_weights("alex")
    base = nets["alex"](examples["ref"], examples["p1"])
    w0 = dict(w, lin4=np.zeros_like(w["lin4"]))
    w2 = dict(w, lin4=2 * w["lin4"])
    without = lpips_mod.LPIPS("alex", weights=w0)(examples["ref"], examples["p1"])
    doubled = lpips_mod.LPIPS("alex", weights=w2)(examples["ref"], examples["p1"])
    assert without < base
    assert doubled - base == pytest.approx(base - without, abs=1e-6)


def test_source_is_recorded(nets):
    for f in nets.values():
        assert Path(f.source).is_file()


def test_input_errors(nets):
    a = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(LpipsInputError, match="differ"):
        nets["alex"](a, np.zeros((40, 41, 3), np.float32))
    with pytest.raises(LpipsInputError, match="at least 31x31"):
        nets["alex"](a[:20], a[:20])
    with pytest.raises(LpipsInputError, match="HxWx3"):
        nets["vgg"](a[None], a[None])
    with pytest.raises(LpipsInputError, match="NxHxWx3"):
        nets["vgg"].batch(a, a)


def test_missing_weights_give_a_reason_not_a_network(lpips_mod, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(LpipsUnavailable, match="not found"):
        lpips_mod.LPIPS("alex")
    fns = lpips_mod.available_lpips()
    assert set(fns) == {"alex", "vgg"}
    for net, v in fns.items():
        assert isinstance(v, str) and str(tmp_path) in v and "\n" not in v


def test_jax_feature_shapes_follow_torchvision():
    import jax.numpy as jnp

    from jax_tensorf import lpips

    nets = _load_nets(lpips)
    x = jnp.zeros((1, 64, 64, 3))
    alex = [f.shape[1:] for f in lpips.lpips_features(nets["alex"].params, x, "alex")]
    assert alex == [(15, 15, 64), (7, 7, 192), (3, 3, 384), (3, 3, 256), (3, 3, 256)]
    vgg = [f.shape[1:] for f in lpips.lpips_features(nets["vgg"].params, x, "vgg")]
    assert vgg == [(64, 64, 64), (32, 32, 128), (16, 16, 256), (8, 8, 512), (4, 4, 512)]


def test_jax_jittable_inside_a_larger_function():
    import jax
    import jax.numpy as jnp

    from jax_tensorf import lpips

    alex = _load_nets(lpips)["alex"]
    a, b = _noisy(2, (1, 64, 64, 3))
    f = jax.jit(lambda p, x, y: jnp.sum(lpips.lpips_distance(p, x, y, "alex")))
    assert float(f(alex.params, a, b)) == pytest.approx(alex(a[0], b[0]), abs=1e-6)


def test_torch_feature_shapes_follow_torchvision():
    import torch

    from torch_reference import lpips

    nets = _load_nets(lpips)
    x = torch.zeros(1, 3, 64, 64)
    alex = [tuple(f.shape[1:]) for f in nets["alex"].module.features(x)]
    assert alex == [(64, 15, 15), (192, 7, 7), (384, 3, 3), (256, 3, 3), (256, 3, 3)]
    vgg = [tuple(f.shape[1:]) for f in nets["vgg"].module.features(x)]
    assert vgg == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]


def test_torch_frozen_module_and_torch_inputs(examples):
    import torch

    from torch_reference import lpips

    f = _load_nets(lpips)["alex"]
    assert not any(p.requires_grad for p in f.module.parameters())
    d = f(torch.from_numpy(examples["ref"]), torch.from_numpy(examples["p1"]))
    assert d == pytest.approx(f(examples["ref"], examples["p1"]), abs=1e-7)
