"""Shared helpers of the ``tests/test_jax_*.py`` modules: float64 numpy references written
independently of ``jax_tensorf`` (bilinear lookups, align-corners resize), tiny configs, analytic
density/appearance functions, and a copy helper for arrays that a donating train step may reuse.

Nothing here imports ``jax_tensorf`` at module level, so a broken package fails the tests that use
it rather than the collection of every module.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tensorf_common.config import SMALL_FIELD, ExperimentConfig, FieldConfig, RenderConfig, TrainConfig
from tensorf_common.geometry import BLENDER_NEAR_FAR

# Official axis modes, written out again (not imported) so that a changed constant is caught.
MAT_MODE_REF = ((0, 1), (0, 2), (1, 2))
VEC_MODE_REF = (2, 1, 0)


# ---------------------------------------------------------------------------------------------
# numpy references (float64)
# ---------------------------------------------------------------------------------------------


def np_bilinear(plane: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=True)`` of a channel-last
    plane (H, W, C) at uv (P, 2) (u indexes W, v indexes H), point by point in float64."""
    plane = np.asarray(plane, np.float64)
    H, W, C = plane.shape
    out = np.zeros((uv.shape[0], C))
    for p, (u, v) in enumerate(np.asarray(uv, np.float64)):
        x = (u + 1.0) / 2.0 * (W - 1)
        y = (v + 1.0) / 2.0 * (H - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < W and 0 <= yi < H:
                out[p] += w * plane[yi, xi]
    return out


def np_linear(line: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``grid_sample`` of a channel-last line (L, C) seen as (1, C, L, 1) at (0, t): linear along L."""
    line = np.asarray(line, np.float64)
    L, C = line.shape
    out = np.zeros((t.shape[0], C))
    for p, tt in enumerate(np.asarray(t, np.float64)):
        x = (tt + 1.0) / 2.0 * (L - 1)
        x0 = int(np.floor(x))
        fx = x - x0
        for dx, w in ((0, 1 - fx), (1, fx)):
            xi = x0 + dx
            if 0 <= xi < L:
                out[p] += w * line[xi]
    return out


def np_vm_features(planes, lines, xyz: np.ndarray) -> np.ndarray:
    """Per-component products in the official order (pair 0, 1, 2) at normalised points (P, 3)."""
    parts = []
    for k in range(3):
        a, b = MAT_MODE_REF[k]
        parts.append(np_bilinear(planes[k], xyz[:, [a, b]]) * np_linear(lines[k], xyz[:, VEC_MODE_REF[k]]))
    return np.concatenate(parts, axis=-1)


def np_cp_features(lines, xyz: np.ndarray) -> np.ndarray:
    out = None
    for k in range(3):
        v = np_linear(lines[k], xyz[:, VEC_MODE_REF[k]])
        out = v if out is None else out * v
    return out


def np_resize_axis(x: np.ndarray, axis: int, new: int) -> np.ndarray:
    """Linear resize of one axis with ``align_corners=True``: destination i samples source
    ``i * (old - 1) / (new - 1)`` (what ``F.interpolate(..., align_corners=True)`` does)."""
    x = np.asarray(x, np.float64)
    old = x.shape[axis]
    src = np.arange(new) * (old - 1) / (new - 1)
    i0 = np.clip(np.floor(src).astype(int), 0, old - 1)
    i1 = np.minimum(i0 + 1, old - 1)
    f = src - i0
    shape = [1] * x.ndim
    shape[axis] = new
    f = f.reshape(shape)
    return np.take(x, i0, axis=axis) * (1 - f) + np.take(x, i1, axis=axis) * f


def np_bilinear_resize(plane: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear align-corners resize of a channel-last plane (H, W, C) -> (h, w, C)."""
    return np_resize_axis(np_resize_axis(plane, 0, h), 1, w)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------

SMALL_VM_RGB = FieldConfig(density_n_comp=(2, 3, 4), app_n_comp=(2, 2, 3), app_dim=3, shading_mode="RGB")
"""A tiny VM field whose decoder is the identity (cheap to compile); different component counts
per pair so that a mixed-up pair order changes shapes."""

SMALL_VM_FEA = SMALL_FIELD
"""The smoke preset's field: VM with the default MLP_Fea decoder."""

SMALL_CP_RGB = FieldConfig(model="CP", density_n_comp=(4,), app_n_comp=(6,), app_dim=3, shading_mode="RGB")
"""A tiny CP field (the cheapest train step to compile)."""


def train_config(**kw) -> TrainConfig:
    """A tiny iteration-mode schedule (no events unless given)."""
    base = dict(
        batch_size=128,
        n_iters=8,
        upsample_at=(),
        alpha_mask_at=(),
        n_voxel_init=10**3,
        n_voxel_final=13**3,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def experiment(field: FieldConfig = SMALL_VM_RGB, render: RenderConfig | None = None, **train_kw) -> ExperimentConfig:
    return ExperimentConfig(field=field, render=render or RenderConfig(), train=train_config(**train_kw))


def replace_train(cfg: ExperimentConfig, **kw) -> ExperimentConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))


# ---------------------------------------------------------------------------------------------
# misc
# ---------------------------------------------------------------------------------------------


def host_copy(tree):
    """A deep numpy copy of a pytree (the train step donates its parameter buffers, so arrays held
    across steps must be copied to the host first)."""
    import jax

    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def tree_max_abs_diff(a, b) -> float:
    import jax

    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))), a, b))
    return max(diffs) if diffs else 0.0


def trees_bit_identical(a, b) -> bool:
    """Same structure, shapes, dtypes and bytes."""
    import jax

    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.asarray(x).shape == np.asarray(y).shape
        and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb)
    )


def numpy_model(field: FieldConfig, grid, render_cfg: RenderConfig | None = None, aabb=None, seed: int = 0, near_far=BLENDER_NEAR_FAR):
    """A ``TensoRF`` with the layout of ``init_params`` but numpy-drawn values (scale 0.1), built
    without ``TensoRF.create``: eager JAX random draws compile once per distinct shape, which costs
    seconds per model on a busy 2-core machine. ``TensoRF.create`` itself is tested in test_jax_model."""
    import jax.numpy as jnp

    from jax_tensorf import alpha_mask as am
    from jax_tensorf import fields
    from jax_tensorf.model import FieldState, TensoRF
    from tensorf_common.geometry import step_size_and_n_samples

    rng = np.random.default_rng(seed)
    render_cfg = render_cfg or RenderConfig()
    aabb = np.asarray(BOX_UNIT if aabb is None else aabb, np.float32)
    draw = lambda shape: jnp.asarray((0.1 * rng.normal(size=shape)).astype(np.float32))

    def grid_params(comps):
        if field.model == "VM":
            return {
                "planes": [draw(fields.plane_shape(grid, k, comps[k])) for k in range(3)],
                "lines": [draw(fields.line_shape(grid, k, comps[k])) for k in range(3)],
            }
        return {"lines": [draw(fields.line_shape(grid, k, comps[0])) for k in range(3)]}

    n_app = sum(field.app_components)
    params = {
        "density": grid_params(field.density_components),
        "app": grid_params(field.app_components),
        "basis_mat": {"kernel": jnp.asarray(rng.uniform(-1, 1, (n_app, field.app_dim)).astype(np.float32) / np.sqrt(n_app))},
    }
    if field.shading_mode not in ("SH", "RGB"):
        from jax_tensorf.appearance import init_render_params

        params["render"] = init_render_params(field, __import__("jax").random.PRNGKey(seed))
    step, _ = step_size_and_n_samples(aabb, grid, render_cfg.step_ratio)
    mask, mask_aabb = am.full_mask(aabb)
    state = FieldState(jnp.asarray(aabb), jnp.float32(step), mask, mask_aabb)
    return TensoRF(field, render_cfg, params, state, tuple(map(float, near_far)), True)


BOX_UNIT = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], np.float32)


def scatter_dtypes(stablehlo_text: str) -> list[str]:
    """Element types of the results of every scatter in a lowered (StableHLO) program, in order:
    ``"f32"``, ``"bf16"``, ``"f16"``... (a 16-bit scatter-add is what NVIDIA GPUs run as
    compare-and-swap loops)."""
    import re

    pattern = r'"stablehlo\.scatter"\(.*?\}\) : \([^\n]*?\) -> tensor<(?:[0-9]+x)*([a-z0-9]+)>'
    return re.findall(pattern, stablehlo_text, flags=re.DOTALL)
def blob_model(grid=(12, 14, 10), render_cfg: RenderConfig | None = None):
    """A CP model (the cheapest to compile) over ``BOX_UNIT`` with a real density blob: each of the 4
    components is a product of three bumps, about 3.3^3 at the centre, so softplus(f - 10) reaches ~20."""
    import jax
    import jax.numpy as jnp

    from jax_tensorf import fields

    m = numpy_model(SMALL_CP_RGB, list(grid), render_cfg or RenderConfig(chunk=256))
    rng = np.random.default_rng(0)
    p = jax.tree.map(np.asarray, m.params)
    centres = {0: 0.2, 1: -0.1, 2: 0.1}  # x, y, z
    for k in range(3):
        axis = fields.VEC_MODE[k]
        u = np.linspace(-1, 1, grid[axis])[:, None]
        bump = 3.3 * np.exp(-((u - centres[axis]) ** 2) / (0.15 + 0.05 * rng.random((1, 4))))
        p["density"]["lines"][k] = bump.astype(np.float32)
    p["app"] = jax.tree.map(lambda x: (x * 8 + 0.3).astype(np.float32), p["app"])
    m.params = jax.tree.map(jnp.asarray, p)
    return m


def rays_at_box(n: int, seed: int = 0, miss=None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rays from a sphere of radius 3.5 towards points of ``BOX_UNIT``; the rays indexed by ``miss``
    point away from it."""
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 3))
    o = 3.5 * o / np.linalg.norm(o, axis=1, keepdims=True)
    d = rng.uniform(-0.8, 0.8, size=(n, 3)) - o
    if miss is not None:
        d[miss] = o[miss]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return o.astype(np.float32), d.astype(np.float32)
