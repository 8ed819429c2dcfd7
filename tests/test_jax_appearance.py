"""jax_tensorf.appearance: parameter shapes per shading mode (official widths), the official init
(zero last bias, torch Linear bounds), the MLP_Fea input order, colour ranges, SH and RGB decoders."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_tensorf.appearance import apply_render, init_render_params, make_render_module
from jax_tensorf.encoding import positional_encoding
from tensorf_common.config import ConfigError, FieldConfig

OFFICIAL = FieldConfig()  # MLP_Fea, app_dim 27, view_pe 2, fea_pe 2, pos_pe 6, featureC 128


@pytest.mark.parametrize(
    "mode, in_width",
    [
        ("MLP_Fea", 150),  # 27 + 3 + 2*2*27 + 2*2*3 (official in_mlpC)
        ("MLP_PE", 81),  # (3 + 2*2*3) + (3 + 2*6*3) + 27: feat, dir, pts, PE(pts), PE(dir) (official in_mlpC)
        ("MLP", 42),  # (3 + 2*2*3) + 27
    ],
)
def test_mlp_param_shapes_and_init(mode, in_width):
    cfg = dataclasses.replace(OFFICIAL, shading_mode=mode)
    p = init_render_params(cfg, jax.random.PRNGKey(0))
    assert set(p) == {"mlp_0", "mlp_2", "mlp_4"}
    shapes = {k: {n: tuple(v.shape) for n, v in layer.items()} for k, layer in p.items()}
    assert shapes == {
        "mlp_0": {"kernel": (in_width, 128), "bias": (128,)},
        "mlp_2": {"kernel": (128, 128), "bias": (128,)},
        "mlp_4": {"kernel": (128, 3), "bias": (3,)},
    }
    np.testing.assert_array_equal(np.asarray(p["mlp_4"]["bias"]), 0.0)  # official: last bias zeroed
    for name, fan_in in (("mlp_0", in_width), ("mlp_2", 128), ("mlp_4", 128)):
        bound = 1.0 / math.sqrt(fan_in)  # torch nn.Linear default
        k = np.asarray(p[name]["kernel"])
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
    b0 = np.asarray(p["mlp_0"]["bias"])
    assert 0 < np.abs(b0).max() <= 1.0 / math.sqrt(in_width)


def test_sh_and_rgb_have_no_params():
    assert init_render_params(dataclasses.replace(OFFICIAL, shading_mode="SH"), jax.random.PRNGKey(0)) == {}
    rgb_cfg = dataclasses.replace(OFFICIAL, shading_mode="RGB", app_dim=3)
    assert init_render_params(rgb_cfg, jax.random.PRNGKey(0)) == {}


@pytest.mark.parametrize("mode", ["MLP_Fea", "MLP_PE", "MLP"])
def test_mlp_outputs_are_colours_in_unit_range(mode):
    cfg = dataclasses.replace(OFFICIAL, shading_mode=mode, feature_c=16)
    p = init_render_params(cfg, jax.random.PRNGKey(1))
    # make the last layer loud so that the sigmoid saturates on both sides
    p = dict(p, mlp_4={"kernel": p["mlp_4"]["kernel"] * 400.0, "bias": p["mlp_4"]["bias"]})
    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.uniform(-1, 1, (64, 3)).astype(np.float32))
    d = rng.normal(size=(64, 3))
    d = jnp.asarray((d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32))
    feat = jnp.asarray(rng.normal(scale=5.0, size=(64, 27)).astype(np.float32))
    rgb = np.asarray(jax.jit(lambda p, a, b, c: apply_render(cfg, p, a, b, c))(p, pts, d, feat))
    assert rgb.shape == (64, 3)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert rgb.min() < 0.05 and rgb.max() > 0.95  # saturated on both sides, yet in range


def test_mlp_fea_input_order_is_official():
    """Input is [feat (27), viewdir (3), PE(feat, 2) (108), PE(viewdir, 2) (12)]: route one input
    column through the network (identity-like weights) and read it back as sigmoid(column)."""
    cfg = OFFICIAL
    H = cfg.feature_c
    feat = jnp.asarray(np.linspace(0.05, 0.6, 27, dtype=np.float32)[None])
    d = jnp.asarray(np.array([[0.36, 0.48, 0.8]], np.float32))
    want_input = np.concatenate(
        [np.asarray(feat)[0], np.asarray(d)[0], np.asarray(positional_encoding(feat, 2))[0], np.asarray(positional_encoding(d, 2))[0]]
    )
    assert want_input.shape == (150,)

    @jax.jit
    def read_column(i):
        k0 = jnp.zeros((150, H)).at[i, 0].set(1.0)
        k2 = jnp.zeros((H, H)).at[0, 0].set(1.0)
        k4 = jnp.zeros((H, 3)).at[0, 0].set(1.0)
        p = {
            "mlp_0": {"kernel": k0, "bias": jnp.zeros(H)},
            "mlp_2": {"kernel": k2, "bias": jnp.zeros(H)},
            "mlp_4": {"kernel": k4, "bias": jnp.zeros(3)},
        }
        return apply_render(cfg, p, jnp.zeros((1, 3)), d, feat)[0, 0]

    # feat[3], dir y, PE(feat) sin(feat0 * 2), sin(feat1 * 1), cos(feat0), PE(dir) sin(2 dir_x), cos(dir_z)
    for i in (3, 28, 31, 32, 30 + 54, 138 + 1, 138 + 6 + 4):
        x = want_input[i]
        assert x > 0  # chosen so that the ReLUs pass it through
        np.testing.assert_allclose(float(read_column(i)), 1.0 / (1.0 + np.exp(-x)), rtol=0, atol=1e-6, err_msg=str(i))


def test_sh_render_known_values():
    cfg = dataclasses.replace(OFFICIAL, shading_mode="SH")
    d = jnp.asarray(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32))
    feat = np.zeros((2, 27), np.float32)
    feat[:, 0] = 1.0  # red, constant band
    feat[:, 9 + 2] = 2.0  # green, z band
    feat[:, 18 + 0] = -10.0  # blue, constant band -> clipped by the relu
    rgb = np.asarray(apply_render(cfg, {}, jnp.zeros((2, 3)), d, jnp.asarray(feat)))
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    np.testing.assert_allclose(rgb, [[c0 + 0.5, 2 * c1 + 0.5, 0.0], [c0 + 0.5, 0.5, 0.0]], rtol=0, atol=1e-6)


def test_rgb_render_is_the_feature():
    cfg = dataclasses.replace(OFFICIAL, shading_mode="RGB", app_dim=3)
    f = jnp.asarray(np.array([[0.1, 0.2, 0.3], [-1.0, 2.0, 0.5]], np.float32))
    np.testing.assert_array_equal(np.asarray(apply_render(cfg, {}, jnp.zeros((2, 3)), jnp.zeros((2, 3)), f)), np.asarray(f))


def test_unknown_shading_mode_raises_config_error():
    with pytest.raises(ConfigError, match="shading_mode"):
        make_render_module(dataclasses.replace(OFFICIAL, shading_mode="NeuS"))
