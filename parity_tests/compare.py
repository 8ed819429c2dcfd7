"""The one place for parity tolerances, and the HF-style recursive comparator.

``assert_close(component, jax_value, torch_value, tol)`` walks both values together (dicts, lists,
tuples, arrays of either framework, numbers), asserts at every level that keys, lengths and shapes
agree, measures the error of every leaf, records ONE row for the parity table (the component, its
max-abs error, the tolerance, pass) and fails with the path of every leaf out of tolerance, e.g.
``model.render[eval].rgb: max-abs 3.2e-04 > 1e-05 at index (17, 2)``. NaNs must sit at the same
places on both sides (they are then ignored).

Tolerances (see ``TOLERANCES``; the table in the issue and in ``reports/parity/parity.md``):

============  =================================================================================
``FP32``      float32 outputs: ``|jax - torch| <= 1e-5 * max(1, |torch|)`` per element (max-abs
              1e-5; relative 1e-5 where the magnitude exceeds 1)
``GRAD``      gradients: ``max|g_jax - g_torch| <= 1e-4 * max|g_torch|`` per tensor (relative to
              the tensor's largest entry, so near-zero entries of a tensor do not make it fail)
``EXACT``     booleans, indices, integer sizes, bit-exact conversions: equal
``PSNR``      training trajectory: final PSNRs within 0.05 dB
``BF16``      half precision, documented separately: bfloat16 compute against the float32
              reference, ``|jax - torch| <= 2e-2 * max(1, |torch|)`` (8 mantissa bits: one rounding
              is 2^-9 = 2e-3 relative; a lookup, a product and a 27-wide matmul accumulate ~10)
``FP16``      float16 compute: ``<= 5e-3 * max(1, |torch|)`` (11 mantissa bits)
============  =================================================================================

Recording: every ``assert_close`` call appends one JSON line to the file named by the environment
variable ``TENSORF_PARITY_RECORD`` (when set; ``tensorf-bench parity`` sets it), with the test id that
``parity_tests/conftest.py`` keeps current.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

RECORD_ENV = "TENSORF_PARITY_RECORD"
"""Environment variable naming the JSON-lines file that receives one row per comparison."""


@dataclass(frozen=True)
class Tolerance:
    """How an error is measured and bounded."""

    name: str
    bound: float
    mode: str
    """"elementwise": ``|a - b| <= bound * max(1, |b|)``; "tensor_relative": ``max|a - b| <= bound *
    max|b|``; "exact": equal; "scalar_abs": ``|a - b| <= bound`` for scalars (PSNR in dB)."""
    doc: str

    def describe(self) -> str:
        return self.doc


FP32 = Tolerance("fp32", 1e-5, "elementwise", "max-abs <= 1e-5 (x max(1, |ref|))")
GRAD = Tolerance("grad", 1e-4, "tensor_relative", "max-abs <= 1e-4 x max|ref| (per tensor)")
EXACT = Tolerance("exact", 0.0, "exact", "equal")
PSNR = Tolerance("psnr", 0.05, "scalar_abs", "|dPSNR| <= 0.05 dB")
BF16 = Tolerance("bf16", 2e-2, "elementwise", "max-abs <= 2e-2 (x max(1, |ref|)), bf16 compute vs fp32")
FP16 = Tolerance("fp16", 5e-3, "elementwise", "max-abs <= 5e-3 (x max(1, |ref|)), fp16 compute vs fp32")

TOLERANCES: dict[str, Tolerance] = {t.name: t for t in (FP32, GRAD, EXACT, PSNR, BF16, FP16)}
"""Every tolerance the parity suite uses, by name."""

_current_test: Optional[str] = None


def set_current_test(nodeid: Optional[str]) -> None:
    """Called by ``parity_tests/conftest.py`` around each test (goes into every recorded row)."""
    global _current_test
    _current_test = nodeid


# ---------------------------------------------------------------------------------------------
# Leaves
# ---------------------------------------------------------------------------------------------


def as_numpy(x: Any) -> np.ndarray:
    """numpy array of a torch tensor, jax array, numpy array or Python number (bf16 -> float32)."""
    if type(x).__module__.startswith("torch"):
        t = x.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in (_torch_dtype("float32"), _torch_dtype("float64")):
            t = t.float()
        return t.numpy()
    a = np.asarray(x)
    if a.dtype.kind == "V" or a.dtype.name in ("bfloat16", "float16"):
        a = a.astype(np.float32)
    return a


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _is_leaf(x: Any) -> bool:
    return not isinstance(x, (Mapping, list, tuple))


@dataclass
class LeafResult:
    path: str
    max_abs: float
    scaled: float
    """The error in units of the tolerance's bound (pass iff <= 1; exact: 0 or inf)."""
    where: Optional[tuple[int, ...]]
    problem: Optional[str] = None


def _leaf(path: str, a: Any, b: Any, tol: Tolerance) -> LeafResult:
    x, y = as_numpy(a), as_numpy(b)
    if x.shape != y.shape:
        return LeafResult(path, math.inf, math.inf, None, f"shape {x.shape} (jax) != {y.shape} (torch)")
    if x.size == 0:
        return LeafResult(path, 0.0, 0.0, None)
    if tol.mode == "exact" or x.dtype == bool or y.dtype == bool:
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            diff = np.where(np.isnan(x) & np.isnan(y), 0.0, diff)
        else:
            diff = (x != y).astype(np.float64)
        err = float(np.nanmax(diff)) if diff.size else 0.0
        if np.isnan(diff).any():
            err = math.inf
        where = tuple(int(i) for i in np.unravel_index(int(np.nanargmax(diff)), diff.shape)) if err > 0 else None
        return LeafResult(path, err, 0.0 if err == 0 else math.inf, where)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    nan_x, nan_y = np.isnan(x64), np.isnan(y64)
    if not np.array_equal(nan_x, nan_y):
        i = tuple(int(v) for v in np.argwhere(nan_x != nan_y)[0])
        return LeafResult(path, math.inf, math.inf, i, f"NaN on one side only at {i}")
    diff = np.where(nan_x, 0.0, np.abs(x64 - y64))
    flat = int(np.argmax(diff))
    where = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff.reshape(-1)[flat])
    if tol.mode == "elementwise":
        ratio = diff / (tol.bound * np.maximum(1.0, np.where(nan_y, 0.0, np.abs(y64))))
        scaled = float(ratio.max())
    elif tol.mode == "tensor_relative":
        ref = float(np.max(np.where(nan_y, 0.0, np.abs(y64))))
        scaled = 0.0 if max_abs == 0 else (max_abs / (tol.bound * ref) if ref > 0 else math.inf)
    elif tol.mode == "scalar_abs":
        scaled = max_abs / tol.bound
    else:  # pragma: no cover
        raise ValueError(f"unknown tolerance mode {tol.mode!r}")
    return LeafResult(path, max_abs, scaled, where)


def _walk(path: str, a: Any, b: Any, tol: Tolerance, out: list[LeafResult]) -> None:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            out.append(LeafResult(path, math.inf, math.inf, None, f"type {type(a).__name__} (jax) != {type(b).__name__} (torch)"))
            return
        ka, kb = set(a), set(b)
        if ka != kb:
            out.append(
                LeafResult(path, math.inf, math.inf, None, f"keys differ: only jax {sorted(map(str, ka - kb))}, only torch {sorted(map(str, kb - ka))}")
            )
        for k in sorted(ka & kb, key=str):
            _walk(f"{path}.{k}", a[k], b[k], tol, out)
        return
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            out.append(LeafResult(path, math.inf, math.inf, None, f"type {type(a).__name__} (jax) != {type(b).__name__} (torch)"))
            return
        if len(a) != len(b):
            out.append(LeafResult(path, math.inf, math.inf, None, f"length {len(a)} (jax) != {len(b)} (torch)"))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(f"{path}[{i}]", x, y, tol, out)
        return
    out.append(_leaf(path, a, b, tol))


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """The outcome of one :func:`compare` call (one row of the parity table)."""

    component: str
    tolerance: Tolerance
    leaves: list[LeafResult]

    @property
    def max_abs(self) -> float:
        return max((l.max_abs for l in self.leaves), default=0.0)

    @property
    def worst(self) -> Optional[LeafResult]:
        return max(self.leaves, key=lambda l: l.scaled, default=None)

    @property
    def passed(self) -> bool:
        return all(l.scaled <= 1.0 and l.problem is None for l in self.leaves)

    def failures(self) -> list[LeafResult]:
        return [l for l in self.leaves if l.scaled > 1.0 or l.problem is not None]

    def message(self) -> str:
        lines = [f"{self.component}: {len(self.failures())} of {len(self.leaves)} leaves out of tolerance ({self.tolerance.doc})"]
        for l in self.failures()[:20]:
            if l.problem:
                lines.append(f"  {l.path}: {l.problem}")
            else:
                lines.append(f"  {l.path}: max-abs {l.max_abs:.3e} ({l.scaled:.2f} x the bound) at index {l.where}")
        return "\n".join(lines)

    def row(self, note: str = "") -> dict[str, Any]:
        w = self.worst
        return {
            "component": self.component,
            "max_abs": _finite(self.max_abs),
            "tolerance": self.tolerance.name,
            "tolerance_doc": self.tolerance.doc,
            "scaled": _finite(w.scaled if w else 0.0),
            "worst_path": w.path if w else None,
            "passed": self.passed,
            "leaves": len(self.leaves),
            "test": _current_test,
            "note": note,
        }


def _finite(v: float) -> Optional[float]:
    return None if not math.isfinite(v) else float(v)


def compare(component: str, jax_value: Any, torch_value: Any, tol: Tolerance = FP32) -> Comparison:
    """Compare without asserting or recording."""
    leaves: list[LeafResult] = []
    _walk(component, jax_value, torch_value, tol, leaves)
    return Comparison(component, tol, leaves)


def record(row: Mapping[str, Any]) -> None:
    """Append one row to the ``TENSORF_PARITY_RECORD`` file (no-op when the variable is unset)."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(row), sort_keys=True) + "\n")


def assert_close(component: str, jax_value: Any, torch_value: Any, tol: Tolerance = FP32, note: str = "") -> Comparison:
    """Compare, record one parity-table row, and fail naming the path of every mismatch."""
    c = compare(component, jax_value, torch_value, tol)
    record(c.row(note))
    if not c.passed:
        raise AssertionError(c.message())
    return c


def assert_all_close(items: Sequence[tuple[str, Any, Any]], tol: Tolerance = FP32, note: str = "") -> list[Comparison]:
    """:func:`assert_close` for several ``(component, jax_value, torch_value)`` at once: every one is
    recorded (one table row each), then one failure names all that are out of tolerance."""
    results = [compare(name, a, b, tol) for name, a, b in items]
    for c in results:
        record(c.row(note))
    bad = [c for c in results if not c.passed]
    if bad:
        raise AssertionError("\n".join(c.message() for c in bad))
    return results


def assert_scalar_close(component: str, jax_value: float, torch_value: float, tol: Tolerance = PSNR, note: str = "") -> Comparison:
    """:func:`assert_close` for two Python scalars (e.g. PSNRs in dB)."""
    return assert_close(component, np.float64(jax_value), np.float64(torch_value), tol, note)

