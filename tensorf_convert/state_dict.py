"""torch ``state_dict`` <-> JAX params: the explicit key table, the layout transforms, the shape guard
and the missing / unexpected key report (the HF ``modeling_flax_pytorch_utils`` pattern).

Everything here works on numpy arrays, so it imports neither framework at module level. Inputs may be
torch tensors, jax arrays or numpy arrays (torch and jax are only touched when such objects are
passed in, or when ``as_torch`` / ``as_jax`` output is asked for).

The table (one row per tensor, see :func:`key_table`), for a grid ``[X, Y, Z]``:

====================================  ==============================  ======================================
torch key (official layout)           JAX path (DEVELOPERS.md layout)  transform
====================================  ==============================  ======================================
``density_plane.k`` (1, C, H, W)      ``density/planes/k`` (H, W, C)   :data:`PLANE` ``[0].transpose(1, 2, 0)``
``density_line.k``  (1, C, L, 1)      ``density/lines/k``  (L, C)      :data:`LINE` ``[0, :, :, 0].T``
``app_plane.k`` / ``app_line.k``      ``app/planes/k`` / ``app/lines/k``  same
``basis_mat.weight`` (app_dim, n)     ``basis_mat/kernel`` (n, app_dim)  :data:`LINEAR` ``.T``
``renderModule.mlp.i.weight`` (o, i)  ``render/mlp_i/kernel`` (i, o)   :data:`LINEAR` ``.T`` (i = 0, 2, 4)
``renderModule.mlp.i.bias`` (o,)      ``render/mlp_i/bias`` (o,)       :data:`IDENTITY`
====================================  ==============================  ======================================

with plane k of width ``W = gridSize[MAT_MODE[k][0]]``, height ``H = gridSize[MAT_MODE[k][1]]`` and line
k of length ``L = gridSize[VEC_MODE[k]]``. CP models have lines only. SH and RGB decoders hold no
parameters. Every transform is a pure axis permutation, so both directions are bit-exact and a round
trip returns the identical bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from tensorf_common.config import FieldConfig
from tensorf_common.errors import ConversionError
from tensorf_common.geometry import VEC_MODE, line_size, plane_size
MLP_LAYERS = (0, 2, 4)
"""Indices of the Linear layers in the official ``renderModule.mlp`` Sequential."""
MLP_SHADING = ("MLP_Fea", "MLP_PE", "MLP")
"""Shading modes with parameters (``renderModule.mlp.*``)."""


# ---------------------------------------------------------------------------------------------
# Transforms: every permutation written once.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """A layout change between the torch and the JAX tensor of one table row."""

    name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    jax_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    """The JAX shape that a torch shape maps to (used to state expected shapes in both layouts)."""


def _plane_to_jax(a: np.ndarray) -> np.ndarray:
    return a[0].transpose(1, 2, 0)  # (1, C, H, W) -> (H, W, C)


def _plane_to_torch(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 0, 1)[None]  # (H, W, C) -> (1, C, H, W)


def _line_to_jax(a: np.ndarray) -> np.ndarray:
    return a[0, :, :, 0].T  # (1, C, L, 1) -> (L, C)


def _line_to_torch(a: np.ndarray) -> np.ndarray:
    return a.T[None, :, :, None]  # (L, C) -> (1, C, L, 1)


def _t(a: np.ndarray) -> np.ndarray:
    return a.T


def _same(a: np.ndarray) -> np.ndarray:
    return a


PLANE = Transform("plane (1,C,H,W) <-> (H,W,C)", _plane_to_jax, _plane_to_torch, lambda s: (s[2], s[3], s[1]))
LINE = Transform("line (1,C,L,1) <-> (L,C)", _line_to_jax, _line_to_torch, lambda s: (s[2], s[1]))
LINEAR = Transform("linear weight (out,in) <-> kernel (in,out)", _t, _t, lambda s: (s[1], s[0]))
IDENTITY = Transform("identity", _same, _same, lambda s: tuple(s))


def plane_to_jax(plane: Any) -> np.ndarray:
    """One official plane (1, C, H, W) -> the JAX layout (H, W, C) (numpy, contiguous)."""
    return _apply(PLANE.to_jax, plane, "plane", 4)


def plane_to_torch(plane: Any) -> np.ndarray:
    """One JAX plane (H, W, C) -> the official layout (1, C, H, W) (numpy, contiguous)."""
    return _apply(PLANE.to_torch, plane, "plane", 3)


def line_to_jax(line: Any) -> np.ndarray:
    """One official line (1, C, L, 1) -> the JAX layout (L, C)."""
    return _apply(LINE.to_jax, line, "line", 4)


def line_to_torch(line: Any) -> np.ndarray:
    """One JAX line (L, C) -> the official layout (1, C, L, 1)."""
    return _apply(LINE.to_torch, line, "line", 2)


def linear_to_jax(weight: Any) -> np.ndarray:
    """A torch ``nn.Linear`` weight (out, in) -> a flax kernel (in, out)."""
    return _apply(LINEAR.to_jax, weight, "linear weight", 2)


def linear_to_torch(kernel: Any) -> np.ndarray:
    """A flax kernel (in, out) -> a torch ``nn.Linear`` weight (out, in)."""
    return _apply(LINEAR.to_torch, kernel, "linear kernel", 2)


def _apply(fn: Callable[[np.ndarray], np.ndarray], x: Any, what: str, ndim: int) -> np.ndarray:
    a = to_numpy(x)
    if a.ndim != ndim or (what in ("plane", "line") and ndim == 4 and a.shape[0] != 1):
        raise ConversionError(f"{what}: expected a {ndim}-d tensor" + (" with batch 1" if ndim == 4 else "") + f", got shape {tuple(a.shape)}")
    if what == "line" and ndim == 4 and a.shape[3] != 1:
        raise ConversionError(f"line: expected shape (1, C, L, 1), got {tuple(a.shape)}")
    return np.ascontiguousarray(fn(a))


# ---------------------------------------------------------------------------------------------
# Array interop (no framework import unless such an object is passed in).
# ---------------------------------------------------------------------------------------------


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array holding exactly the values of a torch tensor, jax array or array-like.

    torch ``bfloat16`` becomes an ``ml_dtypes.bfloat16`` array bit for bit (numpy has no bf16 of
    its own); every other dtype keeps its numpy equivalent.
    """
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(x)


def numpy_to_torch(a: np.ndarray):
    """A torch tensor with exactly the values of ``a`` (``ml_dtypes.bfloat16`` -> ``torch.bfloat16``)."""
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


# ---------------------------------------------------------------------------------------------
# The model description the table is built from.
# ---------------------------------------------------------------------------------------------


def mlp_in_features(shading_mode: str, app_dim: int, pos_pe: int, view_pe: int, fea_pe: int) -> Optional[int]:
    """``in_mlpC`` of the official decoder (the torch layer width), or None for SH / RGB."""
    if shading_mode == "MLP_Fea":
        return 2 * view_pe * 3 + 2 * fea_pe * app_dim + 3 + app_dim
    if shading_mode == "MLP_PE":
        return (3 + 2 * view_pe * 3) + (3 + 2 * pos_pe * 3) + app_dim
    if shading_mode == "MLP":
        return (3 + 2 * view_pe * 3) + app_dim
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What fixes the set of tensors and their shapes: decomposition, components, decoder, grid size."""

    model: str
    """"VM" (TensorVMSplit) or "CP" (TensorCP)."""
    grid_size: tuple[int, int, int]
    """[X, Y, Z]."""
    density_comps: tuple[int, ...]
    """Components per plane/line pair (VM: 3 numbers; CP: the rank only)."""
    app_comps: tuple[int, ...]
    app_dim: int
    shading_mode: str
    mlp_in: Optional[int]
    """Width of the decoder's first layer (torch ``in_mlpC``); None for SH / RGB."""
    feature_c: int

    @classmethod
    def from_field_config(cls, cfg: FieldConfig, grid_size: Sequence[int]) -> "ModelSpec":
        return cls(
            model=cfg.model,
            grid_size=tuple(int(g) for g in grid_size),  # type: ignore[arg-type]
            density_comps=tuple(int(c) for c in cfg.density_components),
            app_comps=tuple(int(c) for c in cfg.app_components),
            app_dim=int(cfg.app_dim),
            shading_mode=cfg.shading_mode,
            mlp_in=mlp_in_features(cfg.shading_mode, cfg.app_dim, cfg.pos_pe, cfg.view_pe, cfg.fea_pe),
            feature_c=int(cfg.feature_c),
        )


@dataclass(frozen=True)
class KeyMap:
    """One row of the table: the torch key, the JAX path, the transform and both expected shapes."""

    torch_key: str
    jax_path: str
    transform: Transform
    torch_shape: tuple[int, ...]
    jax_shape: tuple[int, ...]


def _plane_torch_shape(grid: Sequence[int], k: int, c: int) -> tuple[int, ...]:
    return (1, int(c), *plane_size(grid, k))


def _line_torch_shape(grid: Sequence[int], k: int, c: int) -> tuple[int, ...]:
    return (1, int(c), line_size(grid, k), 1)


def key_table(spec: ModelSpec) -> list[KeyMap]:
    """Every tensor of the model, in the official ``state_dict`` order."""
    rows: list[KeyMap] = []

    def add(tk: str, jp: str, tr: Transform, tshape: tuple[int, ...]) -> None:
        rows.append(KeyMap(tk, jp, tr, tshape, tr.jax_shape(tshape)))

    grid = spec.grid_size
    if spec.model == "VM":
        for name, torch_name, comps in (("density", "density", spec.density_comps), ("app", "app", spec.app_comps)):
            for k in range(3):
                add(f"{torch_name}_plane.{k}", f"{name}/planes/{k}", PLANE, _plane_torch_shape(grid, k, comps[k]))
            for k in range(3):
                add(f"{torch_name}_line.{k}", f"{name}/lines/{k}", LINE, _line_torch_shape(grid, k, comps[k]))
        n_app = sum(spec.app_comps[:3])
    elif spec.model == "CP":
        for name, comps in (("density", spec.density_comps), ("app", spec.app_comps)):
            for k in range(3):
                add(f"{name}_line.{k}", f"{name}/lines/{k}", LINE, _line_torch_shape(grid, k, comps[0]))
        n_app = spec.app_comps[0]
    else:
        raise ConversionError(f"model: expected VM or CP, got {spec.model!r}")
    add("basis_mat.weight", "basis_mat/kernel", LINEAR, (spec.app_dim, int(n_app)))
    if spec.shading_mode in MLP_SHADING:
        if spec.mlp_in is None:  # pragma: no cover - from_field_config always sets it
            raise ConversionError(f"shading_mode {spec.shading_mode!r} needs mlp_in")
        widths = ((spec.mlp_in, spec.feature_c), (spec.feature_c, spec.feature_c), (spec.feature_c, 3))
        for i, (fan_in, fan_out) in zip(MLP_LAYERS, widths):
            add(f"renderModule.mlp.{i}.weight", f"render/mlp_{i}/kernel", LINEAR, (fan_out, fan_in))
            add(f"renderModule.mlp.{i}.bias", f"render/mlp_{i}/bias", IDENTITY, (fan_out,))
    return rows


# ---------------------------------------------------------------------------------------------
# Grid size from the tensors themselves.
# ---------------------------------------------------------------------------------------------


def grid_size_from_state_dict(state_dict: Mapping[str, Any]) -> tuple[int, int, int]:
    """[X, Y, Z] read from the ``density_line.k`` lengths of an official state_dict."""
    size = [0, 0, 0]
    for k in range(3):
        key = f"density_line.{k}"
        if key not in state_dict:
            raise ConversionError(f"state_dict: missing key {key!r} (needed to read the grid size)")
        shape = tuple(_shape(state_dict[key]))
        if len(shape) != 4:
            raise ConversionError(f"state_dict: {key!r} has shape {shape}, expected (1, C, L, 1)")
        size[VEC_MODE[k]] = int(shape[2])
    return tuple(size)  # type: ignore[return-value]


def grid_size_from_params(params: Mapping[str, Any]) -> tuple[int, int, int]:
    """[X, Y, Z] read from the ``density/lines/k`` lengths of a JAX params tree."""
    try:
        lines = params["density"]["lines"]
    except (KeyError, TypeError):
        raise ConversionError("params: missing 'density/lines' (needed to read the grid size)") from None
    if len(lines) != 3:
        raise ConversionError(f"params: 'density/lines' has {len(lines)} entries, expected 3")
    size = [0, 0, 0]
    for k in range(3):
        shape = tuple(_shape(lines[k]))
        if len(shape) != 2:
            raise ConversionError(f"params: 'density/lines/{k}' has shape {shape}, expected (L, C)")
        size[VEC_MODE[k]] = int(shape[0])
    return tuple(size)  # type: ignore[return-value]


def _shape(x: Any) -> tuple[int, ...]:
    s = getattr(x, "shape", None)
    return tuple(int(v) for v in (s if s is not None else np.shape(x)))


# ---------------------------------------------------------------------------------------------
# Flat <-> nested JAX params.
# ---------------------------------------------------------------------------------------------


def flatten_params(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"density/planes/0": leaf, ...}`` for a params tree of dicts and lists (leaves untouched)."""
    out: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(flatten_params(v, f"{prefix}{k}/"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(flatten_params(v, f"{prefix}{i}/"))
    else:
        out[prefix[:-1]] = tree
    return out


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_params`: a level whose keys are 0..n-1 becomes a list."""
    root: dict = {}
    for path, leaf in flat.items():
        node = root
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = leaf

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node) and sorted(int(k) for k in node) == list(range(len(node))):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(root)


# ---------------------------------------------------------------------------------------------
# The conversion, both directions.
# ---------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion did: the converted pairs and the keys that did not fit the table."""

    direction: str
    """"torch->jax" or "jax->torch"."""
    converted: list[tuple[str, str]] = field(default_factory=list)
    """(source key, target key) per converted tensor, in table order."""
    missing: list[str] = field(default_factory=list)
    """Keys the table expects that the source lacks (source-side names)."""
    unexpected: list[str] = field(default_factory=list)
    """Keys of the source that the table does not know."""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        s = f"{self.direction}: {len(self.converted)} tensors converted"
        if self.missing:
            s += f"; missing {self.missing}"
        if self.unexpected:
            s += f"; unexpected {self.unexpected}"
        return s


def _resolve_spec(spec_or_cfg: "ModelSpec | FieldConfig", grid_size: Optional[Sequence[int]]) -> ModelSpec:
    if isinstance(spec_or_cfg, ModelSpec):
        if grid_size is not None and tuple(int(g) for g in grid_size) != spec_or_cfg.grid_size:
            return dataclasses.replace(spec_or_cfg, grid_size=tuple(int(g) for g in grid_size))
        return spec_or_cfg
    if grid_size is None:  # pragma: no cover - callers infer it
        raise ConversionError("grid_size is needed with a FieldConfig")
    return ModelSpec.from_field_config(spec_or_cfg, grid_size)


def _check_shape(row: KeyMap, side: str, got: tuple[int, ...]) -> None:
    want = row.torch_shape if side == "torch" else row.jax_shape
    if got != want:
        raise ConversionError(
            f"{row.torch_key} <-> {row.jax_path}: the {side} tensor "
            f"{row.torch_key if side == 'torch' else row.jax_path!r} has shape {got}, expected {want} "
            f"(torch layout {row.torch_shape}, JAX layout {row.jax_shape})"
        )


def _finish(report: ConversionReport, strict: bool, what: str) -> None:
    if strict and not report.ok:
        parts = []
        if report.missing:
            parts.append(f"missing keys {report.missing}")
        if report.unexpected:
            parts.append(f"unexpected keys {report.unexpected}")
        raise ConversionError(f"{what}: " + "; ".join(parts))


def _apply_table(spec: ModelSpec, source: Mapping[str, Any], direction: str) -> tuple[dict, ConversionReport]:
    """The key table applied to one side's flat mapping (``direction`` "torch->jax" or "jax->torch"):
    each row's source key converted by its transform after the shape guard; keys the table names but
    the source lacks go to ``missing``, keys of the source it does not name to ``unexpected``."""
    to_jax = direction == "torch->jax"
    report = ConversionReport(direction)
    out: dict[str, Any] = {}
    known = set()
    for row in key_table(spec):
        src, dst = (row.torch_key, row.jax_path) if to_jax else (row.jax_path, row.torch_key)
        known.add(src)
        if src not in source:
            report.missing.append(src)
            continue
        a = to_numpy(source[src])
        _check_shape(row, "torch" if to_jax else "JAX", tuple(a.shape))
        convert = row.transform.to_jax if to_jax else row.transform.to_torch
        out[dst] = np.ascontiguousarray(convert(a))
        report.converted.append((src, dst))
    report.unexpected = [k for k in source if k not in known]
    return out, report


def torch_to_jax(
    state_dict: Mapping[str, Any],
    spec_or_cfg: "ModelSpec | FieldConfig",
    grid_size: Optional[Sequence[int]] = None,
    *,
    strict: bool = True,
    as_jax: bool = True,
) -> tuple[dict, ConversionReport]:
    """An official ``state_dict`` (torch tensors or numpy arrays) -> a JAX params tree.

    ``grid_size`` defaults to the one read from the ``density_line.k`` lengths. Every tensor is
    checked against the table's shape; a mismatch raises :class:`ConversionError` naming the key and
    both shapes. Keys the table expects but the source lacks (``missing``) and keys it does not know
    (``unexpected``) are reported; with ``strict`` (default) either raises. Leaves are jax arrays
    (``as_jax``) or numpy arrays, bit-identical to the source values.
    """
    if grid_size is None and not isinstance(spec_or_cfg, ModelSpec):
        grid_size = grid_size_from_state_dict(state_dict)
    spec = _resolve_spec(spec_or_cfg, grid_size)
    flat, report = _apply_table(spec, state_dict, "torch->jax")
    _finish(report, strict, "state_dict -> JAX params")
    if as_jax:
        import jax.numpy as jnp

        flat = {k: jnp.asarray(v) for k, v in flat.items()}
    return unflatten_params(flat), report


def jax_to_torch(
    params: Mapping[str, Any],
    spec_or_cfg: "ModelSpec | FieldConfig",
    grid_size: Optional[Sequence[int]] = None,
    *,
    strict: bool = True,
    as_torch: bool = True,
) -> tuple[dict, ConversionReport]:
    """A JAX params tree (jax or numpy leaves) -> an official ``state_dict`` in the official key order.

    The mirror of :func:`torch_to_jax`: same table, shape guard and report (``missing`` and
    ``unexpected`` name JAX paths such as ``density/planes/0``). Values are torch tensors
    (``as_torch``) or numpy arrays, bit-identical to the source values.
    """
    if grid_size is None and not isinstance(spec_or_cfg, ModelSpec):
        grid_size = grid_size_from_params(params)
    spec = _resolve_spec(spec_or_cfg, grid_size)
    out, report = _apply_table(spec, flatten_params(params), "jax->torch")
    _finish(report, strict, "JAX params -> state_dict")
    if as_torch:
        out = {k: numpy_to_torch(v) for k, v in out.items()}
    return out, report


def check_state_dict(state_dict: Mapping[str, Any], spec: ModelSpec, where: str = "state_dict") -> None:
    """Raise :class:`ConversionError` unless ``state_dict`` has exactly the table's keys and shapes."""
    report = ConversionReport("check")
    known = set()
    for row in key_table(spec):
        known.add(row.torch_key)
        if row.torch_key not in state_dict:
            report.missing.append(row.torch_key)
            continue
        try:
            _check_shape(row, "torch", _shape(state_dict[row.torch_key]))
        except ConversionError as exc:
            raise ConversionError(f"{where}: {exc}") from None
    report.unexpected = [k for k in state_dict if k not in known]
    _finish(report, True, where)


def table_markdown(spec: ModelSpec) -> str:
    """The key table of a model as a markdown table (for docs and reports)."""
    lines = ["| torch key | torch shape | JAX path | JAX shape | transform |", "|---|---|---|---|---|"]
    for r in key_table(spec):
        lines.append(f"| `{r.torch_key}` | {r.torch_shape} | `{r.jax_path}` | {r.jax_shape} | {r.transform.name} |")
    return "\n".join(lines)


__all__ = [
    "Transform",
    "PLANE",
    "LINE",
    "LINEAR",
    "IDENTITY",
    "plane_to_jax",
    "plane_to_torch",
    "line_to_jax",
    "line_to_torch",
    "linear_to_jax",
    "linear_to_torch",
    "to_numpy",
    "numpy_to_torch",
    "mlp_in_features",
    "ModelSpec",
    "KeyMap",
    "key_table",
    "grid_size_from_state_dict",
    "grid_size_from_params",
    "flatten_params",
    "unflatten_params",
    "ConversionReport",
    "torch_to_jax",
    "jax_to_torch",
    "check_state_dict",
    "table_markdown",
]
