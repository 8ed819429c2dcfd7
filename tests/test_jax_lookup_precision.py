"""Mixed precision and the grid lookups (``jax_tensorf.precision``, ``model.density_at`` /
``app_features_at``): the grids' gradients are float32 under every policy, the default policies
(``precision_parts`` without ``grid``: lookups in float32, cast after the gather) never scatter-add
in 16 bits, whatever the lookup variant or density lookup, and the ``grid`` part keeps its meaning
(16-bit lookups; 16-bit scatter-adds in the XLA variants, float32 ones in ``LOOKUP_VARIANTS``).

Programs are traced and lowered, not compiled: the dtypes are properties of the program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_helpers import SMALL_VM_RGB, numpy_model, scatter_dtypes
from jax_tensorf import fields
from jax_tensorf.model import app_features_at, density_at
from jax_tensorf.precision import DEFAULT_PARTS, PARTS, policy
from tensorf_common.config import TrainConfig

HALF = {"bf16", "f16"}
GRID = [6, 7, 5]


@pytest.fixture(scope="module")
def model():
    return numpy_model(SMALL_VM_RGB, GRID)


def _points(variant: str):
    """World points shaped as the variant needs: (rays, samples, 3) for the per-ray layouts."""
    xyz = np.random.default_rng(0).uniform(-0.9, 0.9, size=(8, 6, 3)).astype(np.float32)
    return jnp.asarray(xyz if variant in ("rays", "samples") else xyz.reshape(-1, 3))


def _grad_fn(m, variant: str, pol, lookup: str = "factored"):
    cfg, aabb = m.field_cfg, m.state.aabb

    def loss(params, xyz):
        sigma = density_at(params, cfg, aabb, xyz, variant, pol, lookup)
        feat = app_features_at(params, cfg, aabb, xyz, variant, pol)
        return jnp.sum(sigma) + jnp.sum(feat.astype(jnp.float32))

    return jax.grad(loss)


def _scatters(m, variant: str, pol, lookup: str = "factored") -> list[str]:
    xyz = _points(variant)
    return scatter_dtypes(jax.jit(_grad_fn(m, variant, pol, lookup)).lower(m.params, xyz).as_text())


def test_default_parts_cast_after_the_lookup():
    assert DEFAULT_PARTS == TrainConfig().precision_parts == ("features", "mlp")
    for name in ("bf16", "fp16"):
        p = policy(name)
        assert p.grid is None and p.features is not None and p.mlp is not None
    assert policy("bf16", PARTS).grid == jnp.bfloat16


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("parts", [DEFAULT_PARTS, PARTS, ("grid",)], ids=["default", "all", "grid"])
@pytest.mark.parametrize("variant", ["flat", "vjp"])
def test_grid_gradients_are_float32_under_every_policy(model, name, parts, variant):
    grads = jax.eval_shape(_grad_fn(model, variant, policy(name, parts)), model.params, _points(variant))
    for kind in ("density", "app"):
        leaves = jax.tree.leaves(grads[kind])
        assert len(leaves) == 6
        assert all(g.dtype == jnp.float32 for g in leaves), (kind, [g.dtype for g in leaves])


@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.parametrize("variant", fields.VMAP_VARIANTS)
def test_default_half_policies_never_scatter_in_16_bits(model, name, variant):
    """Every lookup variant's backward scatter-adds into the grids in float32 under the default
    parts; there are scatters (the check is not vacuous)."""
    scatters = _scatters(model, variant, policy(name))
    assert scatters and not set(scatters) & HALF, scatters


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_dense_density_lookup_scatters_in_float32_by_default(model, name):
    """The recomposed density grid is built and looked up in the grid's dtype (float32 by default),
    so its 8 scalar scatter-adds per point are float32 too."""
    pol = policy(name)

    def grad(params, xyz):
        return jax.grad(lambda p: jnp.sum(density_at(p, model.field_cfg, model.state.aabb, xyz, "flat", pol, "dense")))(params)

    scatters = scatter_dtypes(jax.jit(grad).lower(model.params, _points("flat")).as_text())
    assert scatters and not set(scatters) & HALF, scatters


@pytest.mark.parametrize("variant", fields.VMAP_VARIANTS)
def test_the_grid_part_scatters_in_16_bits_only_in_the_xla_lookups(model, variant):
    """``grid`` in the parts looks up 16-bit copies of the grids: the XLA lookups' backward then
    scatter-adds in bf16 (the compare-and-swap loops of a GPU), the weighted-row-gather variants
    still accumulate in float32."""
    scatters = set(_scatters(model, variant, policy("bf16", PARTS)))
    if variant in fields.LOOKUP_VARIANTS:
        assert scatters and not scatters & HALF, scatters
    else:
        assert "bf16" in scatters, scatters
