"""Evaluation renders of many rays: fixed-size chunks, all dispatched before the host reads any result.

One call (:func:`render_chunked`) renders a set of rays, either given (``rays_o``, ``rays_d``) or
made on the device from cameras (the split's pixel directions rotated by each view's ``c2w``):

1. *Chunk size*: a power of two from the default device's free memory
   (:func:`render_memory_bytes`, :func:`jax_tensorf.xla.chunk_items`) and an estimate of one chunk's temporaries per ray, and at
   most 1/:data:`MIN_CHUNKS` of the rays (the padded last chunk then costs little); a caller may fix
   it instead. An executable whose temporaries (XLA's memory analysis) still exceed the device's
   free memory is replaced by one at half the chunk.
2. *Order*: the rays in a fixed pseudo-random order, so that every chunk holds a similar share of
   empty space, padded to whole chunks. Each chunk's rays are gathered (or made from the cameras) on
   the device from an index array: no per-ray array crosses to the device per chunk.
3. *Capacities* of the valid-sample and appearance compaction (the training render's
   ``RenderOptions.sample_capacity`` / ``app_capacity``), as fractions of a chunk's samples: the
   largest that earlier calls needed for this model geometry (with the chunk size they chose), else
   sized from a count of the valid samples of the first rays of the order.
4. *Dispatch*: the chunks are dispatched asynchronously, and their counts (valid samples, appearance
   samples, overflows) come back in one transfer. Chunks that overflowed a capacity are rendered
   again with capacities sized from their exact counts (one more compilation), until none overflows,
   so the result equals the uncompacted render, and no ray's result depends on the chunk size (up
   to float rounding of the per-ray prefix products, which run over the packed samples). Where the
   capacities are not known yet, the first chunk goes alone first, so that a first guess that is too
   small costs one chunk's re-render, not every chunk's.
5. The chunks' outputs are put back in ray order on the device and fetched once.

Every computation is compiled ahead of time and cached on the model (``TensoRF._compiled_renders``,
dropped when the model's geometry changes), and its compile seconds go to :class:`RenderStats`, so
that callers report render time without compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import alpha_mask as am
from .rendering import bucket_capacity
from .sampling import sample_ray
from .xla import chunk_items, device_memory_available, xla_options

MIN_CHUNKS = 16
"""A sized chunk holds at most 1/MIN_CHUNKS of a call's rays, so padding wastes at most ~1/16."""
CHUNK_LIMITS = (1024, 1 << 17)
"""Sized chunks stay within these (rays). Below the lower, per-chunk overheads dominate; above the
upper, a chunk's per-sample arrays (10^8 elements at ~1000 samples per ray) fill any device, and
larger ones only pad more."""
PROBE_RAYS = 4096
"""Rays whose valid samples are counted to size the first capacities."""
SAMPLE_HEADROOM = 1.1
"""Valid-sample capacity over the probe's count. The probe is a random subset of the rays, as every
chunk is: their counts differ by a few percent (and capacities round up to the next bucket)."""
APP_SHARE = 0.3
"""First appearance capacity, as a share of the valid-sample capacity (thresholded samples are a
subset of the valid ones: about a quarter on a briefly trained lego)."""
GROWTH = 1.1
"""Capacities grown after an overflow get this headroom over the largest exact count."""
ORDER_SEED = 0
"""Seed of the fixed ray order (tests reproduce it)."""

# Temporaries of a chunk render, for the chunk size: bytes per sample of the chunk (sampling, the mask
# query, the compaction's prefix sum), per packed valid sample (position, density lookup, per-ray
# prefix products) and per appearance sample and channel (feature lookups, basis, decoder). Set about
# twice what XLA's memory analysis of the CPU executables showed (cpu preset's field and lego-sized
# grids, threshold appearance); the chunk is sized to half the free memory, and an executable that
# still does not fit is compiled again at half the chunk (see the module docstring).
_BYTES_PER_SAMPLE = 12
_BYTES_PER_VALID = 16
_BYTES_PER_APP_CHANNEL = 4


@dataclasses.dataclass
class RenderStats:
    """What one or more :func:`render_chunked` calls did."""

    compile_seconds: float = 0.0
    """Seconds spent compiling (included in the wall time of the calls)."""
    compiles: int = 0
    chunk: int = 0
    """Rays per chunk of the last call."""
    chunks: int = 0
    """Chunk renders dispatched, re-renders included."""
    rerendered: int = 0
    """Chunks rendered again after a capacity overflow."""
    capacities: list = dataclasses.field(default_factory=list)
    """``(sample_capacity, app_capacity)`` of every chunk render prepared, in order."""

    def as_settings(self) -> dict:
        return {"eval_compile_seconds": round(self.compile_seconds, 3), "eval_compiles": self.compiles,
                "eval_chunk": self.chunk, "eval_rerendered_chunks": self.rerendered}


@dataclasses.dataclass(frozen=True)
class RaySource:
    """Rays on the device: ``kind`` ``given`` (``arrays = (rays_o, rays_d)``, each (T, 3)) or
    ``cameras`` (``arrays = (dirs (P, 3) camera-frame pixel directions, c2w (V, 3, 4))``, ray
    ``v * P + p`` = view v, pixel p, made on the device when rendered)."""

    kind: str
    arrays: tuple
    total: int


def given_rays(rays_o, rays_d) -> RaySource:
    """Rays given by the caller (host or device arrays, (T, 3)); uploaded once."""
    o, d = jnp.asarray(rays_o, jnp.float32), jnp.asarray(rays_d, jnp.float32)
    if o.ndim != 2 or o.shape[-1] != 3 or o.shape != d.shape:
        raise ValueError(f"rays: expected two (T, 3) arrays, got {o.shape} and {d.shape}")
    return RaySource("given", (o, d), int(o.shape[0]))


def camera_rays(dirs_cam, c2w) -> RaySource:
    """All pixels of the views ``c2w`` ((V, 3|4, 4) OpenCV camera-to-world) through the camera-frame
    directions ``dirs_cam`` ((..., 3), e.g. ``SplitData.directions()``), in view-major, row-major order:
    the rays of :func:`tensorf_common.data.get_rays` (to float32 rounding), made on the device."""
    dirs = jnp.asarray(np.asarray(dirs_cam, np.float32).reshape(-1, 3))
    c2w = jnp.asarray(np.asarray(c2w, np.float32)[:, :3, :4])
    return RaySource("cameras", (dirs, c2w), int(dirs.shape[0] * c2w.shape[0]))


def _chunk_of(o, d, order, i):
    """Rays of chunk ``i`` (gathers: exact)."""
    idx = order[i]
    return o[idx], d[idx]


def _rays_of_cameras(dirs, c2w):
    """World rays of every pixel of every camera, view-major: each direction rotated by its view's
    c2w (written out as products and sums rather than a matmul, so that no backend runs it at reduced
    precision, such as TF32 on GPUs) and normalised, as ``get_rays``. Made for all rays at once, not
    per chunk, so that their float rounding cannot depend on the chunk size."""
    d = (dirs[None, :, 0:1] * c2w[:, None, :, 0] + dirs[None, :, 1:2] * c2w[:, None, :, 1]
         + dirs[None, :, 2:3] * c2w[:, None, :, 2])
    d = d / jnp.sqrt(jnp.sum(d * d, axis=-1, keepdims=True))
    o = jnp.broadcast_to(c2w[:, None, :, 3], d.shape)
    return o.reshape(-1, 3), d.reshape(-1, 3)


def _assemble(outs, inverse):
    """Chunk outputs (each (chunk, ...)) -> the rays' outputs in their original order."""
    return {k: jnp.concatenate([o[k] for o in outs])[inverse] for k in outs[0]}


def _count_valid(state, o, d, *, near, far, n_samples):
    _, xyz, valid = sample_ray(o, d, state.aabb, near, far, state.step_size, n_samples, None)
    valid = valid & am.query_alpha_mask(state.mask, state.mask_aabb, xyz, state.mask_size)
    return jnp.sum(valid, dtype=jnp.int32)


def compiled(model, key, fn: Callable, args, stats: Optional[RenderStats] = None, **static):
    """``jax.jit(fn, static_argnames=static)`` compiled ahead of time for ``args`` with the ``eval``
    XLA options, cached in ``model._compiled_renders`` under ``key`` and the arguments' shapes and
    shardings; the compile seconds go to ``stats``."""
    sig = ("eval", key, tuple(sorted(static.items())), jax.tree_util.tree_structure(args),
           tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in jax.tree_util.tree_leaves(args)))
    exe = model._compiled_renders.get(sig)
    if exe is None:
        t0 = time.perf_counter()
        jitted = jax.jit(functools.partial(fn, **static))
        exe = jitted.lower(*args).compile(compiler_options=xla_options("eval"))
        model._compiled_renders[sig] = exe
        if stats is not None:
            stats.compile_seconds += time.perf_counter() - t0
            stats.compiles += 1
    return exe


def count_valid_samples(model, rays_o, rays_d, n_samples: int, stats: Optional[RenderStats] = None) -> jax.Array:
    """Samples of these rays (no jitter) inside the box and the alpha mask (a device scalar)."""
    args = (model.state, jnp.asarray(rays_o), jnp.asarray(rays_d))
    near, far = map(float, model.near_far)
    return compiled(model, "count_valid", _count_valid, args, stats, near=near, far=far, n_samples=int(n_samples))(*args)


@functools.lru_cache(maxsize=4)
def _order(total: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed ray order padded (with its last ray) to whole chunks, as (chunks, chunk) int32, and
    its inverse (total,)."""
    order = np.random.default_rng(ORDER_SEED).permutation(total).astype(np.int32)
    k = -(-total // chunk)
    padded = np.concatenate([order, np.full(k * chunk - total, order[-1], np.int32)]).reshape(k, chunk)
    inverse = np.empty(total, np.int32)
    inverse[order] = np.arange(total, dtype=np.int32)
    padded.flags.writeable = inverse.flags.writeable = False
    return padded, inverse


def _geometry(model, n: int, strategy: str) -> tuple:
    return (n, strategy, tuple(model.grid_size), tuple(model.state.mask.shape), model.field_cfg)


def bytes_per_ray(model, n: int, sample_frac: float, app_frac: Optional[float]) -> float:
    """Estimated temporaries of one ray of a chunk render (see the constants above)."""
    cfg = model.field_cfg
    app = app_frac if app_frac is not None else sample_frac
    channels = sum(cfg.app_components) + cfg.app_dim + 2 * cfg.feature_c
    return n * (_BYTES_PER_SAMPLE + sample_frac * _BYTES_PER_VALID + app * _BYTES_PER_APP_CHANNEL * channels)


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(np.floor(np.log2(max(x, 1.0)))))


def _capacities(fracs, chunk: int, n: int) -> tuple[int, Optional[int]]:
    limit = chunk * n
    cap_s = bucket_capacity(fracs[0] * limit, limit)
    cap_a = None if fracs[1] is None else min(cap_s, bucket_capacity(fracs[1] * limit, limit))
    return cap_s, cap_a


def _grown(caps, counts, chunk: int, n: int) -> tuple[int, Optional[int]]:
    """Capacities after the overflows in ``counts`` (per chunk: valid, sample overflow, app, app
    overflow): from the exact counts, with :data:`GROWTH` headroom. An appearance count from a chunk
    whose samples overflowed is scaled up by the share of its samples that were dropped."""
    cap_s, cap_a = caps
    limit = chunk * n
    need_s = max((c["valid_samples"] for c in counts if c["sample_overflow"] > 0), default=0)
    new_s = bucket_capacity(GROWTH * need_s, limit) if need_s > cap_s else cap_s
    if cap_a is None:
        return new_s, None
    need_a = 0
    for c in counts:
        a = float(c["app_samples"])
        if c["sample_overflow"] > 0:
            a *= float(c["valid_samples"]) / cap_s
        if c["sample_overflow"] > 0 or c["app_overflow"] > 0:
            need_a = max(need_a, a)
    new_a = bucket_capacity(GROWTH * need_a, limit) if need_a > cap_a else cap_a
    return new_s, min(new_s, new_a)


def render_chunked(
    model,
    source: RaySource,
    *,
    chunk: Optional[int] = None,
    n_samples: Optional[int] = None,
    want_depth: bool = True,
    stats: Optional[RenderStats] = None,
) -> dict[str, np.ndarray]:
    """Evaluation render (no jitter, ``render_cfg.eval_appearance``) of ``source``'s rays -> ``rgb``
    (T, 3), ``acc`` (T,) and (``want_depth``) ``depth`` (T,) numpy arrays, as the module docstring
    describes. ``chunk`` fixes the rays per chunk (default: ``render_cfg.chunk``, or sized from
    the device's memory where that is None)."""
    stats = stats if stats is not None else RenderStats()
    n = int(n_samples or model.render_cfg.n_samples_eval or model.n_samples)
    strategy = model.render_cfg.eval_appearance
    total = source.total
    if total == 0:
        return {k: np.zeros((0, 3) if k == "rgb" else (0,), np.float32) for k in ("rgb", "acc", "depth")
                if k != "depth" or want_depth}
    geom = _geometry(model, n, strategy)
    _drop_stale(model, geom)
    rays = source.arrays
    if source.kind == "cameras":
        rays = compiled(model, "camera_rays", _rays_of_cameras, rays, stats)(*rays)
    fixed = chunk or model.render_cfg.chunk
    known = model._eval_caps.get(geom)
    if known is None:
        probe_order, _ = _order(total, min(PROBE_RAYS, total))
        o, d = _chunk_rays(model, rays, probe_order, 0, stats)
        valid = int(jax.device_get(count_valid_samples(model, o, d, n, stats)))  # the one read before dispatch
        sample_frac = min(1.0, SAMPLE_HEADROOM * valid / (o.shape[0] * n))
        fracs = (sample_frac, APP_SHARE * sample_frac if strategy == "threshold" else None)
        lo, hi = CHUNK_LIMITS
        mem_chunk = chunk_items(
            bytes_per_ray(model, n, *fracs), budget_bytes=render_memory_bytes(), share=0.5, lo=lo,
            hi=min(hi, _pow2_floor((2**31 - 1) / n)),
        )
    else:
        fracs, mem_chunk = known
    chunk = int(fixed) if fixed else min(mem_chunk, max(CHUNK_LIMITS[0], _pow2_floor(total / MIN_CHUNKS)))
    while True:
        caps = _capacities(fracs, chunk, n)
        render, fits = _chunk_renderer(model, n, caps, chunk, strategy, want_depth, stats)
        if fixed or chunk <= CHUNK_LIMITS[0] or fits:
            break
        chunk //= 2
        mem_chunk = min(mem_chunk, chunk)
    stats.chunk = chunk
    order, inverse = _order(total, chunk)
    order = jnp.asarray(order)
    outs: list = [None] * order.shape[0]
    rounds = [list(range(order.shape[0]))]
    if known is None and len(rounds[0]) > 1:
        rounds = [rounds[0][:1], rounds[0][1:]]
    while rounds:
        pending = rounds.pop(0)
        for i in pending:
            o, d = _chunk_rays(model, rays, order, i, stats)
            outs[i] = render(o, d)
        stats.chunks += len(pending)
        counts = jax.device_get([outs[i]["stats"] for i in pending])  # the one read per round
        over = [(i, c) for i, c in zip(pending, counts) if c["sample_overflow"] > 0 or c["app_overflow"] > 0]
        if over:
            caps = _grown(caps, [c for _, c in over], chunk, n)
            render, _ = _chunk_renderer(model, n, caps, chunk, strategy, want_depth, stats)
            rounds.insert(0, [i for i, _ in over])
            stats.rerendered += len(over)
    limit = chunk * n
    fracs = (max(fracs[0], caps[0] / limit), None if fracs[1] is None else max(fracs[1], caps[1] / limit))
    model._eval_caps[geom] = (fracs, mem_chunk)
    outs = [{k: v for k, v in out.items() if k != "stats"} for out in outs]
    args = (outs, jnp.asarray(inverse))
    return jax.device_get(compiled(model, "assemble", _assemble, args, stats)(*args))


def _chunk_rays(model, rays: tuple, order, i: int, stats: RenderStats):
    args = (*rays, jnp.asarray(order), jnp.int32(i))
    return compiled(model, "chunk_rays", _chunk_of, args, stats)(*args)


def _chunk_renderer(model, n, caps, chunk, strategy, want_depth, stats: RenderStats):
    """The render of one chunk with these capacities: ``(render(o, d), fits)``, compiled ahead of time
    (with a mesh, data parallel, ``model.render`` compiles and splits it); ``fits``: whether its
    temporaries fit the device's free memory by XLA's memory analysis (True where not known)."""
    opts = model.render_options(n, train=False, want_depth=want_depth, sample_capacity=caps[0],
                                app_capacity=caps[1], appearance=strategy)
    stats.capacities.append(caps)
    if model.mesh is not None:
        return (lambda o, d: model.render(o, d, opts)), True
    ray = jax.ShapeDtypeStruct((chunk, 3), jnp.float32)
    exe, seconds = model.compiled_render(opts, (model.params, model.state, ray, ray, None, None))
    if seconds:
        stats.compile_seconds += seconds
        stats.compiles += 1
    params, state = model.params, model.state
    return (lambda o, d: exe(params, state, o, d, None, None)), _fits(exe)


HOST_MEMORY_CAP = 1 << 30
"""On the CPU backend the render may use at most this many bytes (of a quarter of the available
RAM): the CPU preset's whole run, training and then this evaluation in the same process, keeps its
peak resident memory near 2 GB."""


def render_memory_bytes() -> int:
    """Bytes one chunk's computation may use: :func:`jax_tensorf.xla.device_memory_available` with
    :data:`HOST_MEMORY_CAP` on the CPU."""
    return device_memory_available(host_cap=HOST_MEMORY_CAP)


def _fits(exe) -> bool:
    try:
        mem = exe.memory_analysis()
    except Exception:  # backends without a memory analysis
        return True
    temp = getattr(mem, "temp_size_in_bytes", None)
    return temp is None or int(temp) <= render_memory_bytes()


def _drop_stale(model, geom: tuple) -> None:
    """On a new model geometry (grid size, mask shape, field), forget every compiled render and the
    evaluation capacities of the old one: they would never run again and only hold memory."""
    cache = model._compiled_renders
    key = ("eval-geometry",)
    if cache.get(key, geom[2:]) != geom[2:]:
        cache.clear()
        model._eval_caps.clear()
    cache[key] = geom[2:]
