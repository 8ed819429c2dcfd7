"""Fixtures of the parity suite: small twin models (torch_reference built and seeded, JAX converted
through ``tensorf_convert``), rays and points, and the hooks that record test outcomes for
``tensorf-bench parity``.

Sizes are CPU-sized on purpose: grids of at most 24 per axis, at most 2048 rays.

Every comparison goes through ``compare.assert_close`` (tolerances live there and nowhere else).
When ``TENSORF_PARITY_RECORD`` names a file, each comparison appends a row to it, and so does the
outcome of each test (``kind: "outcome"``), so that the report can list xfails and failures too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import compare` from any rootdir

import compare  # noqa: E402

from tensorf_common.geometry import line_size, plane_size  # noqa: E402

AABB = np.array([[-1.2, -0.9, -1.0], [1.1, 1.0, 0.8]], np.float32)
"""A non-cubic, off-centre box: a swapped axis or a wrong normalisation shows."""
GRID = (13, 11, 9)
"""[X, Y, Z]: all three sizes differ, so a transposed plane or line cannot go unnoticed."""
NEAR_FAR = (0.5, 6.0)


# ---------------------------------------------------------------------------------------------
# Recording hooks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _parity_current_test(request: pytest.FixtureRequest):
    compare.set_current_test(request.node.nodeid)
    yield
    compare.set_current_test(None)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(compare.RECORD_ENV)
    if not path:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        row = {
            "kind": "outcome",
            "test": report.nodeid,
            "outcome": report.outcome,
            "xfail": bool(getattr(report, "wasxfail", "")),
            "reason": str(getattr(report, "wasxfail", "")) or (str(report.longrepr)[-300:] if report.skipped else ""),
            "seconds": round(float(report.duration), 3),
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def field_config(model: str = "VM", shading: str = "MLP_Fea", **kw: Any):
    """A small FieldConfig; the density shift makes the random init visibly non-empty."""
    from tensorf_common.config import FieldConfig

    app_dim = {"SH": 27, "RGB": 3}.get(shading, 12)
    base = dict(
        model=model,
        density_n_comp=(3, 4, 5) if model == "VM" else (6,),
        app_n_comp=(4, 5, 6) if model == "VM" else (10,),
        app_dim=app_dim,
        shading_mode=shading,
        feature_c=16,
        view_pe=2,
        fea_pe=2,
        pos_pe=3,
        density_shift=-1.0,
    )
    base.update(kw)
    return FieldConfig(**base)


def build_torch(field_cfg, render_cfg=None, grid: Sequence[int] = GRID, aabb=AABB, near_far=NEAR_FAR, seed: int = 0):
    """A seeded torch_reference model (the global torch RNG is restored afterwards)."""
    import torch

    from tensorf_common.config import RenderConfig
    from torch_reference.model import TensorBase

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TensorBase.from_config(field_cfg, render_cfg or RenderConfig(), aabb.tolist(), list(grid), list(near_far))


def to_jax(torch_model, render_cfg=None, white_bg: bool = True):
    """The JAX twin, through the conversion layer under test."""
    from tensorf_convert.model import torch_model_to_jax

    return torch_model_to_jax(torch_model, render_cfg, white_bg)


def add_density_blob(torch_model, amplitude: float = 4.0, width: float = 0.45) -> None:
    """Put a smooth blob of density in the middle of a torch model's box (in place), over its random
    init: component 0 of every density pair becomes ``bump(u) bump(v)`` (planes) and ``bump(t)``
    (lines), ``bump(s) = exp(-(s / width)^2)`` in normalised coordinates, so the density feature gains
    ``3 * amplitude * bump(x) bump(y) bump(z)`` (VM; CP gains ``amplitude * ...``). With the official
    shift (-10) the box faces stay empty, as in a trained scene, and the alpha mask is a proper subset."""
    import torch

    grid = torch_model.gridSize.tolist()

    def bump(n: int) -> "torch.Tensor":
        s = torch.linspace(-1, 1, n)
        return torch.exp(-((s / width) ** 2))

    with torch.no_grad():
        if hasattr(torch_model, "density_plane"):
            for k in range(3):
                h, w = plane_size(grid, k)
                torch_model.density_plane[k][0, 0] = amplitude * bump(h)[:, None] * bump(w)[None, :]
                torch_model.density_line[k][0, 0, :, 0] = bump(line_size(grid, k))
        else:
            for k in range(3):
                scale = amplitude ** (1 / 3)
                torch_model.density_line[k][0, 0, :, 0] = scale * bump(line_size(grid, k))


def _blob_pair(
    model: str = "VM",
    shading: str = "MLP_Fea",
    render_cfg=None,
    grid: Sequence[int] = GRID,
    seed: int = 0,
    width: float = 0.45,
    **field_kw: Any,
) -> tuple[Any, Any]:
    """(torch, JAX) twins with the official density shift and a density blob (:func:`add_density_blob`)."""
    field_kw.setdefault("density_shift", -10.0)
    cfg = field_config(model, shading, **field_kw)
    tm = build_torch(cfg, render_cfg, grid, seed=seed)
    add_density_blob(tm, amplitude=4.0 if model == "VM" else 12.0, width=width)
    return tm, to_jax(tm, render_cfg)


def _make_pair(
    model: str = "VM", shading: str = "MLP_Fea", render_cfg=None, grid: Sequence[int] = GRID, seed: int = 0, **field_kw: Any
) -> tuple[Any, Any]:
    """(torch model, JAX TensoRF) with identical weights: the torch one seeded, the JAX one converted."""
    cfg = field_config(model, shading, **field_kw)
    tm = build_torch(cfg, render_cfg, grid, seed=seed)
    return tm, to_jax(tm, render_cfg)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def points(n: int, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Normalised points (n, 3) uniform in [lo, hi]^3, float32."""
    return np.random.default_rng(seed).uniform(lo, hi, (n, 3)).astype(np.float32)


def edge_points(grid: Sequence[int] = GRID) -> np.ndarray:
    """Normalised points on the box faces, on grid nodes and just outside: the boundary cases."""
    g = np.asarray(grid, np.float64)
    rng = np.random.default_rng(7)
    nodes = (rng.integers(0, g, (64, 3)) / (g - 1)) * 2 - 1  # exact grid nodes (incl. faces)
    faces = rng.uniform(-1, 1, (48, 3))
    faces[np.arange(48), rng.integers(0, 3, 48)] = rng.choice([-1.0, 1.0], 48)
    outside = rng.uniform(-1, 1, (48, 3))
    outside[np.arange(48), rng.integers(0, 3, 48)] = rng.choice([-1.0 - 1e-3, 1.0 + 1e-3, -1.05, 1.05], 48)
    return np.concatenate([nodes, faces, outside]).astype(np.float32)


def to_world(xyz_n: np.ndarray, aabb: np.ndarray = AABB) -> np.ndarray:
    return (aabb[0] + (xyz_n + 1.0) * 0.5 * (aabb[1] - aabb[0])).astype(np.float32)


def camera_rays(n: int, seed: int = 0, aabb: np.ndarray = AABB, radius: float = 3.0, miss_fraction: float = 0.1):
    """Unit-direction rays from a sphere of cameras around the box towards points inside it; about
    ``miss_fraction`` of them aim away from the box, and one has zero direction components."""
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, 3))
    o = o / np.linalg.norm(o, axis=1, keepdims=True) * radius
    centre = (aabb[0] + aabb[1]) / 2
    target = centre + rng.uniform(-0.45, 0.45, (n, 3)) * (aabb[1] - aabb[0])
    d = target - o
    miss = rng.random(n) < miss_fraction
    d[miss] = -d[miss]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o[0] = [centre[0], centre[1], radius]
    d[0] = [0.0, 0.0, -1.0]  # axis-aligned: two zero components (the official 1e-6 rule)
    return o.astype(np.float32), d.astype(np.float32)


def torch_rays(o: np.ndarray, d: np.ndarray):
    import torch

    return torch.cat([torch.from_numpy(o), torch.from_numpy(d)], dim=-1)


def jitter(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(n).astype(np.float32)


def tnp(x: Any) -> np.ndarray:
    """A torch tensor (or anything) as numpy."""
    return compare.as_numpy(x)


def precision_kwargs(fn: Any, name: str = "fp32") -> dict:
    """The keyword that selects compute precision in a JAX entry point (``train_step``, ``loss_terms``,
    ``TensoRF.render``): ``policy=`` (a :mod:`jax_tensorf.precision` policy) where the function takes
    one, else the older ``dtype=`` (None for fp32). The JAX side is moving from one to the other;
    this keeps the parity tests on whichever is checked out."""
    import inspect

    target = getattr(fn, "__wrapped__", fn)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # pragma: no cover - a compiled object without a signature
        params = {}
    if "policy" in params:
        if name == "fp32":
            return {}
        from jax_tensorf.precision import policy

        return {"policy": policy(name)}
    import jax.numpy as jnp

    return {"dtype": {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}[name]}


@pytest.fixture(scope="session")
def parity_scene(tmp_path_factory: pytest.TempPathFactory):
    """The procedural scene at 32x32 (8 train views = 8192 rays, 4 test views), loaded; rendered once
    per session (the same options as ``tests/conftest.py``'s ``small_scene``)."""
    from tensorf_common.data.blender import load_blender
    from tensorf_common.scene import make_scene

    root = make_scene(tmp_path_factory.mktemp("parity") / "scene", width=32, height=32, n_train=8, n_val=4, n_test=4, seed=0)
    return load_blender(root, splits=("train", "test"))


@pytest.fixture(scope="session")
def twins() -> SimpleNamespace:
    """The helpers above as one namespace (test modules must not import ``conftest``: pytest keeps
    only the last imported ``conftest`` module under that name when several folders have one)."""
    return SimpleNamespace(
        AABB=AABB,
        GRID=GRID,
        NEAR_FAR=NEAR_FAR,
        field_config=field_config,
        build_torch=build_torch,
        to_jax=to_jax,
        make_pair=_make_pair,
        blob_pair=_blob_pair,
        points=points,
        edge_points=edge_points,
        to_world=to_world,
        camera_rays=camera_rays,
        torch_rays=torch_rays,
        jitter=jitter,
        tnp=tnp,
        precision_kwargs=precision_kwargs,
    )
