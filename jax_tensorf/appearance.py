"""Appearance decoders (the official render modules) as flax modules.

Each module is called as ``module.apply({"params": p}, pts, viewdirs, features) -> rgb (P, 3)``,
with ``pts`` the normalised [-1, 1] sample positions, ``viewdirs`` unit ray directions and
``features`` the appearance features after the basis matrix. Parameter names mirror the torch
``renderModule.mlp.{0,2,4}`` layers as ``mlp_0``, ``mlp_2``, ``mlp_4`` (flax kernels are (in, out)).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tensorf_common.config import ConfigError, FieldConfig

from .encoding import eval_sh_bases, positional_encoding


def _torch_linear_init(fan_in: int):
    """torch ``nn.Linear`` default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dot_precision(dtype) -> jax.lax.Precision:
    """Matmul precision of a compute dtype: full float32 for float32 (``HIGHEST``; GPUs would
    otherwise use TF32, which torch does not by default), the default for bf16 / fp16 inputs."""
    return jax.lax.Precision.HIGHEST if dtype in (None, jnp.float32) else jax.lax.Precision.DEFAULT


def _to(dtype, *xs):
    """Cast the decoder inputs to its compute dtype (mixed precision), or keep them."""
    return xs if dtype is None else tuple(x.astype(dtype) for x in xs)


class _MLP(nn.Module):
    """Linear -> ReLU -> Linear -> ReLU -> Linear(3) -> sigmoid, last bias zero (official)."""

    in_features: int
    hidden: int
    dtype: Optional[jnp.dtype] = None

    @nn.compact
    def __call__(self, x):
        dense = lambda n, fan_in, name, bias_init=None: nn.Dense(
            n,
            name=name,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            precision=dot_precision(self.dtype),
            kernel_init=_torch_linear_init(fan_in),
            bias_init=bias_init or _torch_linear_init(fan_in),
        )
        x = nn.relu(dense(self.hidden, self.in_features, "mlp_0")(x))
        x = nn.relu(dense(self.hidden, self.hidden, "mlp_2")(x))
        x = dense(3, self.hidden, "mlp_4", nn.initializers.zeros)(x)
        return jax.nn.sigmoid(x)


class MLPRender_Fea(nn.Module):
    """Input ``[feat, viewdir, PE(feat, fea_pe), PE(viewdir, view_pe)]`` (the official default)."""

    in_chanel: int
    viewpe: int = 6
    feape: int = 6
    featureC: int = 128
    dtype: Optional[jnp.dtype] = None

    @nn.compact
    def __call__(self, pts, viewdirs, features):
        pts, viewdirs, features = _to(self.dtype, pts, viewdirs, features)
        parts = [features, viewdirs]
        if self.feape > 0:
            parts.append(positional_encoding(features, self.feape))
        if self.viewpe > 0:
            parts.append(positional_encoding(viewdirs, self.viewpe))
        x = jnp.concatenate(parts, axis=-1)
        in_c = 2 * self.viewpe * 3 + 2 * self.feape * self.in_chanel + 3 + self.in_chanel
        return _MLP(in_c, self.featureC, self.dtype, name="mlp")(x)


class MLPRender_PE(nn.Module):
    """Input ``[feat, viewdir, pts, PE(pts, pos_pe), PE(viewdir, view_pe)]`` (pts normalised).

    The official forward leaves out the raw ``pts`` and so cannot run (its first layer counts 3
    inputs more than it is fed); as in ``torch_reference``, the raw position fills those 3."""

    in_chanel: int
    viewpe: int = 6
    pospe: int = 6
    featureC: int = 128
    dtype: Optional[jnp.dtype] = None

    @nn.compact
    def __call__(self, pts, viewdirs, features):
        pts, viewdirs, features = _to(self.dtype, pts, viewdirs, features)
        parts = [features, viewdirs, pts]
        if self.pospe > 0:
            parts.append(positional_encoding(pts, self.pospe))
        if self.viewpe > 0:
            parts.append(positional_encoding(viewdirs, self.viewpe))
        x = jnp.concatenate(parts, axis=-1)
        in_c = (3 + 2 * self.viewpe * 3) + (3 + 2 * self.pospe * 3) + self.in_chanel
        return _MLP(in_c, self.featureC, self.dtype, name="mlp")(x)


class MLPRender(nn.Module):
    """Input ``[feat, viewdir, PE(viewdir, view_pe)]``."""

    in_chanel: int
    viewpe: int = 6
    featureC: int = 128
    dtype: Optional[jnp.dtype] = None

    @nn.compact
    def __call__(self, pts, viewdirs, features):
        pts, viewdirs, features = _to(self.dtype, pts, viewdirs, features)
        parts = [features, viewdirs]
        if self.viewpe > 0:
            parts.append(positional_encoding(viewdirs, self.viewpe))
        x = jnp.concatenate(parts, axis=-1)
        in_c = (3 + 2 * self.viewpe * 3) + self.in_chanel
        return _MLP(in_c, self.featureC, self.dtype, name="mlp")(x)


class SHRender(nn.Module):
    """Degree-2 SH colour: ``relu(sum_j sh_j(dir) * feat[c, j] + 0.5)`` (needs app_dim 27)."""

    @nn.compact
    def __call__(self, pts, viewdirs, features):
        sh = eval_sh_bases(2, viewdirs)[..., None, :]  # (P, 1, 9)
        rgb_sh = features.reshape(*features.shape[:-1], 3, sh.shape[-1])
        return jax.nn.relu(jnp.sum(sh * rgb_sh, axis=-1) + 0.5)


class RGBRender(nn.Module):
    """The appearance feature is the colour (needs app_dim 3)."""

    @nn.compact
    def __call__(self, pts, viewdirs, features):
        return features


def make_render_module(cfg: FieldConfig, dtype: Optional[jnp.dtype] = None) -> nn.Module:
    """The render module named by ``cfg.shading_mode``."""
    if cfg.shading_mode == "MLP_Fea":
        return MLPRender_Fea(cfg.app_dim, cfg.view_pe, cfg.fea_pe, cfg.feature_c, dtype)
    if cfg.shading_mode == "MLP_PE":
        return MLPRender_PE(cfg.app_dim, cfg.view_pe, cfg.pos_pe, cfg.feature_c, dtype)
    if cfg.shading_mode == "MLP":
        return MLPRender(cfg.app_dim, cfg.view_pe, cfg.feature_c, dtype)
    if cfg.shading_mode == "SH":
        return SHRender()
    if cfg.shading_mode == "RGB":
        return RGBRender()
    raise ConfigError(f"field.shading_mode: unknown {cfg.shading_mode!r}")


def init_render_params(cfg: FieldConfig, key: jax.Array) -> dict:
    """Initial parameters of the render module (an empty dict for SH and RGB)."""
    module = make_render_module(cfg)
    p = jnp.zeros((1, 3))
    variables = module.init(key, p, p, jnp.zeros((1, cfg.app_dim)))
    params = variables.get("params", {})
    # flatten the inner "mlp" scope so the layout reads render/mlp_0/kernel
    return dict(params.get("mlp", {})) if "mlp" in params else dict(params)


def apply_render(cfg: FieldConfig, params: dict, pts, viewdirs, features, dtype=None):
    """Run the render module on flat inputs with the flattened parameter layout."""
    module = make_render_module(cfg, dtype)
    variables = {"params": {"mlp": params}} if params else {}
    return module.apply(variables, pts, viewdirs, features)
