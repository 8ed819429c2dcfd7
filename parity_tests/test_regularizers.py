"""regularizers: density L1, TV (VM planes x 1e-2, CP lines x 1e-3) and ortho, values and gradients,
JAX vs torch on the same (converted) grids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.regularizers as jr
import torch_reference.regularizers as tr
from compare import GRAD, assert_close
from tensorf_convert.state_dict import ModelSpec, jax_to_torch, line_to_jax, line_to_torch, plane_to_jax

def _grids(model: str, seed: int = 0, comps=(3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    grid = (13, 11, 9)
    import torch_reference.fields as tf

    if model == "VM":
        planes = [torch.randn(tf.plane_shape(grid, k, comps[k]), generator=g).requires_grad_() for k in range(3)]
        lines = [torch.randn(tf.line_shape(grid, k, comps[k]), generator=g).requires_grad_() for k in range(3)]
        t_grid = {"planes": planes, "lines": lines}
        j_grid = {
            "planes": [jnp.asarray(plane_to_jax(p)) for p in planes],
            "lines": [jnp.asarray(line_to_jax(l)) for l in lines],
        }
    else:
        lines = [torch.randn(tf.line_shape(grid, k, comps[0]), generator=g).requires_grad_() for k in range(3)]
        t_grid = {"lines": lines}
        j_grid = {"lines": [jnp.asarray(line_to_jax(l)) for l in lines]}
    return t_grid, j_grid


def _grad_to_torch_layout(g_tree: dict) -> dict:
    out = {}
    if "planes" in g_tree:
        out["planes"] = [np.ascontiguousarray(np.asarray(p).transpose(2, 0, 1)[None]) for p in g_tree["planes"]]
    out["lines"] = [line_to_torch(l) for l in g_tree["lines"]]
    return out


def _check(name: str, jfn, tfn, model: str):
    t_grid, j_grid = _grids(model)
    v_j, g_j = jax.jit(jax.value_and_grad(jfn))(j_grid)
    v_t = tfn(t_grid)
    v_t.backward()
    assert_close(f"regularizers.{name}[{model}]", v_j, v_t)
    g_t = {k: [torch.zeros_like(t) if t.grad is None else t.grad for t in v] for k, v in t_grid.items()}
    assert_close(f"regularizers.{name}[{model}].grad", _grad_to_torch_layout(g_j), g_t, GRAD)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_density_l1(model):
    _check("density_l1", jr.density_l1, tr.density_l1, model)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_tv_loss(model):
    _check("tv_loss", jr.tv_loss, tr.tv_loss, model)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_ortho_loss(model):
    _check("ortho_loss", lambda g: jr.ortho_loss(g["lines"]), lambda g: tr.ortho_loss(g["lines"]), model)


def test_ortho_loss_single_component_lines():
    """A one-component line adds 0 on both sides (officially a NaN mean; found here, fixed in 172c979)."""
    lines = [torch.randn(1, 1, n, 1) for n in (9, 11, 13)]
    got = jr.ortho_loss([jnp.asarray(line_to_jax(l)) for l in lines])
    assert_close("regularizers.ortho_loss[one component]", got, tr.ortho_loss(lines))


def test_model_regularizer_methods_match_the_functions(twins):
    """The torch model's official methods (density_L1, TV_loss_*, vector_comp_diffs) against the JAX
    functions on the converted model params: the whole-model wiring of the regularisers."""
    for model in ("VM", "CP"):
        tm, jm = twins.make_pair(model)
        got = jax.jit(
            lambda p: {
                "l1": jr.density_l1(p["density"]),
                "tv_density": jr.tv_loss(p["density"]),
                "tv_app": jr.tv_loss(p["app"]),
                "ortho": jr.ortho_loss(p["density"]["lines"]) + jr.ortho_loss(p["app"]["lines"]),
            }
        )(jm.params)
        with torch.no_grad():
            want = {"l1": tm.density_L1(), "tv_density": tm.TV_loss_density(), "tv_app": tm.TV_loss_app(), "ortho": tm.vector_comp_diffs()}
        assert_close(f"regularizers.model_methods[{model}]", got, want)
    # the converted tree really is the model's (not a fresh init)
    sd, _ = jax_to_torch(jm.params, ModelSpec.from_field_config(jm.field_cfg, jm.grid_size), as_torch=False)
    assert all(np.array_equal(sd[k], v.numpy()) for k, v in tm.state_dict().items())
