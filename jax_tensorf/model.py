"""TensoRF = tensor field + appearance decoder + renderer, assembled from the component modules.

The trainable parameters are one plain pytree (layout in DEVELOPERS.md). Everything else a render
needs (box, step, alpha mask) is a :class:`FieldState` pytree beside them. :class:`TensoRF` is the
host-side object that holds both plus the static settings, and knows how to resize, shrink and
rebuild its mask. Its jitted renderer compiles once per static configuration (grid size, samples
per ray, capacities), which is what the trainer counts.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.config import ConfigError, FieldConfig, RenderConfig
from tensorf_common.geometry import BLENDER_NEAR_FAR, step_size_and_n_samples

from . import alpha_mask as am
from . import eval_render, fields
from .appearance import apply_render, dot_precision, init_render_params
from .precision import FP32, Policy
from .rendering import RenderOptions, render_rays
from .sampling import normalize_coord
from .static_grid import map_grids, slice_grid
from .xla import xla_options


@flax.struct.dataclass
class FieldState:
    """Non-trainable arrays of a model (no gradient, no optimizer state)."""

    aabb: jax.Array  # (2, 3) float32
    step_size: jax.Array  # () float32
    mask: jax.Array  # (Z, Y, X) bool; a 2x2x2 all-True mask means "no mask"
    mask_aabb: jax.Array  # (2, 3) float32
    grid_size: Optional[jax.Array] = None
    """(3,) int32 active [X, Y, Z] when the planes and lines are zero-padded buffers (static-shape
    training, :mod:`jax_tensorf.static_grid`); None: the arrays are the grid."""
    mask_size: Optional[jax.Array] = None
    """(3,) int32 active [X, Y, Z] of a mask stored in a larger all-False buffer; None: the array."""


def init_params(key: jax.Array, cfg: FieldConfig, grid_size: Sequence[int]) -> dict:
    """Fresh parameters with the official initialisation, drawn on the default device by one
    compiled program (drawn op by op, every plane, line and layer would compile a program of its
    own, each costing set-up time inside the training budget), compiled with
    ``xla_options("init")``: on the CPU backend, optimising its unrolled random-bit generators
    takes seconds and speeds up a program that runs once by milliseconds."""
    grid = tuple(int(n) for n in grid_size)
    if isinstance(key, jax.core.Tracer):  # traced (jax.eval_shape of a checkpoint's layout)
        return _draw_params(key, cfg, grid)
    return _init_executable(cfg, grid, jax.ShapeDtypeStruct(key.shape, key.dtype))(key)


@functools.lru_cache(maxsize=8)
def _init_executable(cfg: FieldConfig, grid_size: tuple[int, ...], key_spec):
    lowered = jax.jit(_draw_params, static_argnums=(1, 2)).lower(key_spec, cfg, grid_size)
    return lowered.compile(compiler_options=xla_options("init"))


def _draw_params(key: jax.Array, cfg: FieldConfig, grid_size: tuple[int, ...]) -> dict:
    k_den, k_app, k_basis, k_mlp = jax.random.split(key, 4)
    scale = cfg.resolved_init_scale
    if cfg.model == "VM":
        density = fields.init_vm(k_den, grid_size, cfg.density_components, scale)
        app = fields.init_vm(k_app, grid_size, cfg.app_components, scale)
        n_app = sum(cfg.app_components)
    else:
        density = fields.init_cp(k_den, grid_size, cfg.density_components[0], scale)
        app = fields.init_cp(k_app, grid_size, cfg.app_components[0], scale)
        n_app = cfg.app_components[0]
    bound = 1.0 / np.sqrt(n_app)  # torch nn.Linear default init
    basis = jax.random.uniform(k_basis, (n_app, cfg.app_dim), jnp.float32, -bound, bound)
    params = {"density": density, "app": app, "basis_mat": {"kernel": basis}}
    render = init_render_params(cfg, k_mlp)
    if render:
        params["render"] = render
    return params


def _cast(tree, dtype):
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def density_at(
    params, cfg: FieldConfig, aabb, xyz_world, variant: str = "flat", policy: Policy = FP32, lookup: str = "factored",
    sizes=None,
):
    """sigma at world points (..., 3) (official ``compute_densityfeature`` + ``feature2density``).
    Coordinates stay float32; the lookups and products follow the precision ``policy``. ``lookup``:
    ``factored`` (per-point plane and line lookups, vectorised by ``variant``) or ``dense`` (through
    the recomposed grid, :func:`jax_tensorf.fields.dense_density_feature`; same values). The dense
    grid is recomposed and looked up in the grid's dtype (float32 unless the policy's ``grid`` part
    is on), so that its backward scatter-adds in float32 too. ``sizes``: the active grid size of
    zero-padded grids (:attr:`FieldState.grid_size`)."""
    xyz_n = normalize_coord(xyz_world, aabb)
    grid = _cast(params["density"], policy.grid)
    fd = policy.features or jnp.float32
    if lookup == "dense":
        feat = fields.dense_density_feature(grid, cfg.model, xyz_n, sizes=sizes)
    elif lookup != "factored":
        raise ConfigError(f"render.density_lookup: unknown {lookup!r}; choose factored or dense")
    elif cfg.model == "VM":
        feat = fields.vm_density_feature(grid["planes"], grid["lines"], xyz_n, variant, fd, sizes)
    else:
        feat = jnp.sum(fields.cp_features(grid["lines"], xyz_n, variant, fd, sizes), axis=-1)
    return fields.feature2density(feat.astype(jnp.float32), cfg.density_shift, cfg.fea2dense_act)


def app_features_at(
    params, cfg: FieldConfig, aabb, xyz_world, variant: str = "flat", policy: Policy = FP32, sizes=None
):
    """Appearance features after the basis matrix, (..., app_dim), in the policy's feature dtype."""
    xyz_n = normalize_coord(xyz_world, aabb)
    grid = _cast(params["app"], policy.grid)
    fd = policy.features or jnp.float32
    if cfg.model == "VM":
        feat = fields.vm_features(grid["planes"], grid["lines"], xyz_n, variant, fd, sizes)
    else:
        feat = fields.cp_features(grid["lines"], xyz_n, variant, fd, sizes)
    return jnp.matmul(feat, params["basis_mat"]["kernel"].astype(fd), precision=dot_precision(fd))


def rgb_at(
    params, cfg: FieldConfig, aabb, xyz_world, viewdirs, variant: str = "flat", policy: Policy = FP32, sizes=None
):
    """Colour at world points seen along ``viewdirs`` (P, 3); float32 out."""
    feat = app_features_at(params, cfg, aabb, xyz_world, variant, policy, sizes)
    pts_n = normalize_coord(xyz_world, aabb)
    return apply_render(cfg, params.get("render", {}), pts_n, viewdirs, feat, policy.mlp).astype(jnp.float32)


def render_model(
    params, state: FieldState, rays_o, rays_d, jitter=None, key=None, ray_offset=0, *, cfg, opts, variant="flat",
    policy=FP32, n_active=None,
):
    """Render rays with a model's parameters and state: the field, the decoder and the mask wired
    into :func:`jax_tensorf.rendering.render_rays` (the one place that does this). ``n_active``:
    samples per ray in use when ``opts.n_samples`` is a fixed upper bound (a traced count)."""
    sizes = state.grid_size
    return render_rays(
        rays_o,
        rays_d,
        state.aabb,
        state.step_size,
        lambda x: density_at(params, cfg, state.aabb, x, variant, policy, opts.density_lookup, sizes),
        lambda x, d: rgb_at(params, cfg, state.aabb, x, d, variant, policy, sizes),
        lambda x: am.query_alpha_mask(state.mask, state.mask_aabb, x, state.mask_size),
        opts,
        jitter,
        key,
        ray_offset,
        n_active,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "opts", "variant", "policy"))
def render(params, state: FieldState, rays_o, rays_d, jitter=None, key=None, *, cfg, opts, variant="flat", policy=FP32):
    """:func:`render_model`, jitted per static configuration."""
    return render_model(params, state, rays_o, rays_d, jitter, key, cfg=cfg, opts=opts, variant=variant, policy=policy)


@functools.partial(jax.jit, static_argnames=("near", "far", "n_samples"))
def _rays_hit_mask(o, d, s, *, near: float, far: float, n_samples: int):
    """One compiled mask test per (chunk, mask shape); module level, so that the many host chunks
    of a ray filter reuse it (a jit of a fresh lambda per call recompiled every call)."""
    return am.rays_hit_mask(o, d, s.aabb, near, far, s.step_size, s.mask, s.mask_aabb, n_samples, s.mask_size)


@functools.partial(jax.jit, static_argnames=("cfg", "mask_buf", "slab", "thres", "use_mask"))
def buffered_alpha_mask(
    params, state, reso, step, *, cfg: FieldConfig, mask_buf: tuple, slab: int, thres: float, use_mask: bool
):
    """The official ``updateAlphaMask`` on a grid of [X, Y, Z] = ``reso`` vertices (traced) over
    ``state.aabb``, into a (Z, Y, X) buffer of ``mask_buf`` = (Xb, Yb, Zb): alpha at the vertices
    (0 outside the current mask), dilated by a 3x3x3 max-pool and thresholded, which equals
    thresholding first and dilating the result (a max reaches ``thres`` iff one of its inputs
    does). Returns ``(mask buffer, any, first index (3,), last index (3,))``, indices [x, y, z]
    of the set voxels for the new box. ``use_mask``: whether a mask is in use (else the buffer
    holds the all-set placeholder, which is not queried)."""
    Xb, Yb, Zb = mask_buf
    n_slabs = -(-Xb // slab)
    size_f = reso.astype(jnp.float32)
    # jnp.linspace(0, 1, n) is i / (n - 1) in float32: the same vertices as dense_grid_points
    axes = [jnp.arange(n, dtype=jnp.float32) / (size_f[d] - 1.0) for d, n in enumerate((n_slabs * slab, Yb, Zb))]
    aabb = state.aabb

    def one(j):
        sx = jax.lax.dynamic_slice_in_dim(axes[0], j * slab, slab)
        s = jnp.stack(jnp.meshgrid(sx, axes[1], axes[2], indexing="ij"), axis=-1).reshape(-1, 3)
        pts = aabb[0] * (1.0 - s) + aabb[1] * s
        sigma = density_at(params, cfg, aabb, pts, "flat", sizes=state.grid_size)
        if use_mask:
            sigma = jnp.where(am.query_alpha_mask(state.mask, state.mask_aabb, pts, state.mask_size), sigma, 0.0)
        return (am.alpha_from_sigma(sigma, step) >= thres).reshape(slab, Yb, Zb)

    above = jax.lax.map(one, jnp.arange(n_slabs)).reshape(n_slabs * slab, Yb, Zb)[:Xb]
    x, y, z = (jnp.arange(n) for n in (Xb, Yb, Zb))
    active = (x[:, None, None] < reso[0]) & (y[None, :, None] < reso[1]) & (z[None, None, :] < reso[2])
    above = jnp.transpose(above & active, (2, 1, 0))  # (Z, Y, X)
    pooled = jax.lax.reduce_window(
        above.astype(jnp.uint8), jnp.uint8(0), jax.lax.max, (3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1))
    )
    mask = (pooled > 0) & jnp.transpose(active, (2, 1, 0))
    per_axis = [jnp.any(mask, axis=(0, 1)), jnp.any(mask, axis=(0, 2)), jnp.any(mask, axis=(1, 2))]  # x, y, z
    first = jnp.stack([jnp.argmax(m) for m in per_axis])
    last = jnp.stack([m.shape[0] - 1 - jnp.argmax(m[::-1]) for m in per_axis])
    return mask, jnp.any(mask), first, last


@dataclasses.dataclass
class TensoRF:
    """A TensoRF model on the host: parameters, field state and static settings."""

    field_cfg: FieldConfig
    render_cfg: RenderConfig
    params: dict
    state: FieldState
    near_far: tuple[float, float]
    white_bg: bool = True
    mask_grid_size: Optional[list[int]] = None  # resolution of the current alpha mask, None = no mask
    active_size: Optional[list[int]] = None
    """[X, Y, Z] of the grid when the planes and lines are zero-padded buffers (static-shape
    training; ``state.grid_size`` holds it on the device); None: the arrays are the grid."""
    _compiled_renders: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _eval_caps: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    mesh: Any = dataclasses.field(default=None, repr=False, compare=False)
    """A one-axis ``jax.sharding.Mesh`` to render data-parallel over its devices (None: one device)."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        key: jax.Array,
        field_cfg: FieldConfig,
        render_cfg: RenderConfig,
        aabb,
        grid_size: Sequence[int],
        near_far=BLENDER_NEAR_FAR,
        white_bg: bool = True,
    ) -> "TensoRF":
        aabb = np.asarray(aabb, np.float32).reshape(2, 3)
        step, _ = step_size_and_n_samples(aabb, grid_size, render_cfg.step_ratio)
        mask, mask_aabb = am.full_mask(aabb)
        state = FieldState(jnp.asarray(aabb), jnp.float32(step), mask, mask_aabb)
        params = init_params(key, field_cfg, grid_size)
        return cls(field_cfg, render_cfg, params, state, tuple(map(float, near_far)), white_bg)

    # ------------------------------------------------------------------ geometry
    @property
    def grid_size(self) -> list[int]:
        if self.active_size is not None:
            return list(self.active_size)
        return fields.grid_size_of(self.params["density"])

    def exact(self) -> "TensoRF":
        """This model with exact-size arrays (the active part of static-shape buffers), for
        evaluation, checkpoints and conversion; the model itself when it has no buffers."""
        if self.active_size is None:
            return self
        params = map_grids(self.params, lambda g: slice_grid(g, self.active_size))
        X, Y, Z = (int(v) for v in np.asarray(self.state.mask_size))
        state = FieldState(self.state.aabb, self.state.step_size, self.state.mask[:Z, :Y, :X], self.state.mask_aabb)
        return TensoRF(self.field_cfg, self.render_cfg, params, state, self.near_far, self.white_bg,
                       None if self.mask_grid_size is None else list(self.mask_grid_size))

    @property
    def aabb(self) -> np.ndarray:
        return np.asarray(self.state.aabb)

    @property
    def step_size(self) -> float:
        return float(self.state.step_size)

    @property
    def n_samples(self) -> int:
        """The model's own samples per ray (official ``nSamples``, used at evaluation)."""
        return step_size_and_n_samples(self.aabb, self.grid_size, self.render_cfg.step_ratio)[1]

    def _set_grid_geometry(self, aabb) -> None:
        step, _ = step_size_and_n_samples(aabb, self.grid_size, self.render_cfg.step_ratio)
        self.state = self.state.replace(aabb=jnp.asarray(aabb, jnp.float32), step_size=jnp.float32(step))

    # ------------------------------------------------------------------ rendering
    def render_options(
        self,
        n_samples: int,
        *,
        train: bool,
        sample_capacity: Optional[int] = None,
        app_capacity: Optional[int] = None,
        want_depth: bool = False,
        appearance: Optional[str] = None,
    ) -> RenderOptions:
        rc = self.render_cfg
        return RenderOptions(
            n_samples=int(n_samples),
            near=self.near_far[0],
            far=self.near_far[1],
            white_bg=self.white_bg,
            distance_scale=self.field_cfg.distance_scale,
            appearance=appearance or rc.appearance,
            weight_thres=rc.ray_march_weight_thres,
            topk=rc.topk,
            sample_capacity=sample_capacity,
            app_capacity=app_capacity,
            want_depth=want_depth,
            depth=rc.depth,
            density_lookup=rc.density_lookup,
        )

    def render(self, rays_o, rays_d, opts: RenderOptions, jitter=None, key=None, policy: Policy = FP32):
        """Render rays with the current parameters; compiled ahead of time per static
        configuration with the ``eval`` XLA options (:mod:`jax_tensorf.xla`). With a ``mesh``
        (data parallel), the rays are split across its devices; capacities in ``opts`` are for the
        whole batch."""
        if self.mesh is not None:
            return self._render_sharded(rays_o, rays_d, opts, jitter, key, policy)
        args = (self.params, self.state, jnp.asarray(rays_o), jnp.asarray(rays_d), jitter, key)
        return self.compiled_render(opts, args, policy)[0](*args)

    def compiled_render(self, opts: RenderOptions, args: tuple, policy: Policy = FP32):
        """The render for ``args = (params, state, rays_o, rays_d, jitter, key)`` (arrays or
        ``jax.ShapeDtypeStruct``), compiled ahead of time once per static configuration and argument
        shapes, and the seconds its compilation took now (0.0 when it was cached)."""
        sig = (
            opts,
            policy,
            self.render_cfg.vmap_variant,
            jax.tree_util.tree_structure(args),
            tuple((x.shape, x.dtype) for x in jax.tree_util.tree_leaves(args)),
        )
        compiled = self._compiled_renders.get(sig)
        if compiled is not None:
            return compiled, 0.0
        t0 = time.perf_counter()
        compiled = render.lower(
            *args, cfg=self.field_cfg, opts=opts, variant=self.render_cfg.vmap_variant, policy=policy
        ).compile(compiler_options=xla_options("eval"))
        self._compiled_renders[sig] = compiled
        return compiled, time.perf_counter() - t0

    def _render_sharded(self, rays_o, rays_d, opts: RenderOptions, jitter, key, policy: Policy):
        from jax.sharding import NamedSharding, PartitionSpec as P

        mesh = self.mesh
        axis = mesh.axis_names[0]
        n_dev = mesh.devices.size
        local = lambda c: None if c is None else min(c, max(1024, -(-int(1.25 * c / n_dev) // 1024) * 1024))
        lopts = dataclasses.replace(opts, sample_capacity=local(opts.sample_capacity), app_capacity=local(opts.app_capacity))
        batch = P(axis)
        sig = ("sharded", lopts, policy, self.render_cfg.vmap_variant, np.shape(rays_o), jitter is None, key is None)
        fn = self._compiled_renders.get(sig)
        if fn is None:
            cfg, variant = self.field_cfg, self.render_cfg.vmap_variant

            def body(params, state, o, d, jit, k):
                offset = jax.lax.axis_index(axis) * o.shape[0]
                out = render_model(params, state, o, d, jit, k, offset, cfg=cfg, opts=lopts, variant=variant, policy=policy)
                out["stats"] = jax.lax.psum(out["stats"], axis)
                return out

            out_specs = {"rgb": batch, "acc": batch, "stats": P()}
            if lopts.want_depth:
                out_specs["depth"] = batch
            in_specs = (P(), P(), batch, batch, None if jitter is None else batch, None if key is None else P())
            fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))
            self._compiled_renders[sig] = fn
        rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, batch)
        params, state = jax.device_put((self.params, self.state), rep)
        o, d = jax.device_put((jnp.asarray(rays_o), jnp.asarray(rays_d)), split)
        jit = None if jitter is None else jax.device_put(jitter, split)
        k = None if key is None else jax.device_put(key, rep)
        return fn(params, state, o, d, jit, k)

    def render_chunks(
        self,
        rays_o: np.ndarray,
        rays_d: np.ndarray,
        *,
        chunk: Optional[int] = None,
        n_samples: Optional[int] = None,
        want_depth: bool = True,
    ) -> dict[str, np.ndarray]:
        """Evaluation render of many rays (no jitter): ``rgb`` (R, 3), ``acc`` (R,) and, with
        ``want_depth``, ``depth`` (R,) numpy arrays.

        Appearance follows ``render_cfg.eval_appearance`` (default: the official ``weight > 1e-4``
        threshold). Rays are rendered in chunks of ``chunk`` rays (default ``render_cfg.chunk``, or
        sized from the device's free memory), all dispatched before any result is read, with valid
        samples and appearance samples compacted to capacities that a chunk which overflows them is
        rendered again with (:func:`jax_tensorf.eval_render.render_chunked`). The result equals the
        uncompacted render, whatever the chunk size.
        """
        return eval_render.render_chunked(
            self, eval_render.given_rays(rays_o, rays_d), chunk=chunk, n_samples=n_samples, want_depth=want_depth
        )

    def count_valid_samples(self, rays_o, rays_d, n_samples: int) -> int:
        """Samples of these rays (no jitter) inside the box and the mask: sizes capacities."""
        return int(eval_render.count_valid_samples(self, rays_o, rays_d, n_samples))

    # ------------------------------------------------------------------ schedule operations
    def upsample(self, reso: Sequence[int]) -> None:
        """Resize both grids to ``reso`` (official ``upsample_volume_grid``)."""
        p = dict(self.params)
        for name in ("density", "app"):
            g = p[name]
            if self.field_cfg.model == "VM":
                planes, lines = fields.upsample_vm(g["planes"], g["lines"], reso)
                p[name] = {"planes": planes, "lines": lines}
            else:
                p[name] = {"lines": fields.upsample_cp(g["lines"], reso)}
        self.params = p
        self._set_grid_geometry(self.aabb)

    def shrink(self, new_aabb) -> None:
        """Crop the grids to ``new_aabb`` (official ``shrink``); the grid becomes non-cubic."""
        mask_size = self.mask_grid_size or self.grid_size
        t_l, b_r, aabb_after, _ = am.shrink_box(self.aabb, self.grid_size, new_aabb, mask_size)
        p = dict(self.params)
        for name in ("density", "app"):
            g = p[name]
            if self.field_cfg.model == "VM":
                planes, lines = fields.shrink_vm(g["planes"], g["lines"], t_l, b_r)
                p[name] = {"planes": planes, "lines": lines}
            else:
                p[name] = {"lines": fields.shrink_cp(g["lines"], t_l, b_r)}
        self.params = p
        self._set_grid_geometry(aabb_after)

    def set_mask(self, mask, mask_aabb) -> None:
        mask = jnp.asarray(mask, bool)
        self.state = self.state.replace(mask=mask, mask_aabb=jnp.asarray(mask_aabb, jnp.float32))
        Z, Y, X = mask.shape
        self.mask_grid_size = [X, Y, Z]

    def has_mask(self) -> bool:
        return self.mask_grid_size is not None

    def update_alpha_mask(self, grid_size: Sequence[int]) -> Optional[np.ndarray]:
        """Rebuild the alpha mask at ``grid_size`` over the current box (official
        ``updateAlphaMask``). Returns the box of the kept voxels, or None for an empty mask (then
        the old mask is kept)."""
        cfg, aabb, params = self.field_cfg, self.state.aabb, self.params
        state = self.state
        mask_fn = (lambda x: am.query_alpha_mask(state.mask, state.mask_aabb, x)) if self.has_mask() else None
        alpha = am.compute_dense_alpha(
            lambda x: density_at(params, cfg, aabb, x, "flat"), self.aabb, grid_size, self.step_size, mask_fn
        )
        mask, new_aabb = am.build_alpha_mask(alpha, self.aabb, self.render_cfg.alpha_mask_thres)
        if new_aabb is None:
            return None
        self.set_mask(mask, self.aabb)
        return new_aabb

    def rays_hit_mask(self, rays_o: np.ndarray, rays_d: np.ndarray, chunk: int = 8192, n_samples: int = 256) -> np.ndarray:
        """Official ray filtering by the mask, chunked on the host -> bool (R,)."""
        fn = functools.partial(
            _rays_hit_mask, near=float(self.near_far[0]), far=float(self.near_far[1]), n_samples=int(n_samples)
        )
        out = []
        for start in range(0, rays_o.shape[0], chunk):
            o, d = rays_o[start : start + chunk], rays_d[start : start + chunk]
            m = o.shape[0]
            if m < chunk:
                o = np.concatenate([o, np.repeat(o[-1:], chunk - m, 0)])
                d = np.concatenate([d, np.repeat(d[-1:], chunk - m, 0)])
            out.append(np.asarray(fn(o, d, self.state))[:m])
        return np.concatenate(out) if out else np.zeros((0,), bool)
