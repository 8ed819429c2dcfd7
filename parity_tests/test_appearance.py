"""appearance: every render module and the basis matrix, JAX vs torch on the same (converted) weights.

The twins are whole models built by torch_reference and converted by tensorf_convert, so the MLP
kernels went through the key table (``mlp.{0,2,4}.weight`` -> ``render/mlp_{0,2,4}/kernel``).
``MLPRender_PE`` feeds ``[feat, dir, pts, PE(pts), PE(dir)]`` on both sides (the official forward
omits ``pts`` and cannot run; this suite found the JAX twin doing that, fixed in 172c979).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from compare import assert_close
from jax_tensorf.appearance import apply_render

def _inputs(n: int, app_dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    d = rng.normal(size=(n, 3))
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    feat = rng.normal(0, 0.8, (n, app_dim)).astype(np.float32)
    return pts, d, feat


@pytest.mark.parametrize("shading", ["MLP_Fea", "MLP", "MLP_PE", "SH", "RGB"])
def test_render_module(twins, shading):
    tm, jm = twins.make_pair(shading=shading)
    pts, d, feat = _inputs(1024, jm.field_cfg.app_dim, seed=1)
    fn = jax.jit(lambda p, a, b, c: apply_render(jm.field_cfg, p, a, b, c))
    got = fn(jm.params.get("render", {}), jnp.asarray(pts), jnp.asarray(d), jnp.asarray(feat))
    with torch.no_grad():
        want = tm.renderModule(torch.from_numpy(pts), torch.from_numpy(d), torch.from_numpy(feat))
    assert_close(f"appearance.{shading}", got, want)


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_basis_matrix(twins, model):
    tm, jm = twins.make_pair(model=model)
    n_in = jm.params["basis_mat"]["kernel"].shape[0]
    x = np.random.default_rng(2).normal(0, 0.5, (800, n_in)).astype(np.float32)
    got = jax.jit(lambda k, v: v @ k)(jm.params["basis_mat"]["kernel"], jnp.asarray(x))
    with torch.no_grad():
        want = tm.basis_mat(torch.from_numpy(x))
    assert_close(f"appearance.basis_mat[{model}]", got, want)
