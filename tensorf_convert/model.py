"""Whole models: torch_reference ``TensorVMSplit`` / ``TensorCP`` <-> :class:`jax_tensorf.model.TensoRF`.

Everything goes through one framework-neutral record, :class:`PortableModel`: the official
constructor kwargs (JSON-able), the official ``state_dict`` as numpy arrays, the alpha mask
(``(Z, Y, X)`` bool and its box) and a few JAX-only extras (render config, background). It is exactly
what the safetensors + JSON files hold (:mod:`tensorf_convert.files`), and what an official ``.th``
holds once unpacked.

::

    official .th dict --portable_from_official--> PortableModel <--portable_from_torch-- TensorBase
                                                   |       ^
                               portable_to_jax ----+       +---- portable_from_jax
                                                   v       |
                                                  TensoRF (params + FieldState)

Non-parameter state: the box (``kwargs["aabb"]``, the shrunk one), the grid size (``kwargs["gridSize"]``,
per axis), the step size (derived on both sides from box, grid and ``step_ratio`` with
``tensorf_common.geometry``, so it is not stored), ``near_far``, and the mask. A JAX model without a
mask (``mask_grid_size is None``, the 2x2x2 all-set placeholder) maps to "no mask" and back.

torch and jax are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tensorf_common.config import OFFICIAL_CLASS_DEFAULTS, OFFICIAL_KWARGS, FieldConfig, RenderConfig
from tensorf_common.errors import ConversionError
from tensorf_common.geometry import step_size_and_n_samples

from .state_dict import (
    ModelSpec,
    check_state_dict,
    jax_to_torch,
    key_table,
    numpy_to_torch,
    to_numpy,
    torch_to_jax,
)

MODEL_NAMES = {"VM": "TensorVMSplit", "CP": "TensorCP"}
"""FieldConfig.model -> official class name."""
MODEL_KINDS = {v: k for k, v in MODEL_NAMES.items()}


# ---------------------------------------------------------------------------------------------
# Configs <-> official kwargs
# ---------------------------------------------------------------------------------------------


def _comps(v: Any, n: int = 3) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    return tuple(int(c) for c in v)


def full_kwargs(kwargs: Mapping[str, Any], where: str = "kwargs") -> dict[str, Any]:
    """Official kwargs with the class defaults filled in, plain Python values (aabb a nested list).

    Unknown keys (other than ``device``) and a missing ``aabb`` / ``gridSize`` raise ConversionError.
    """
    unknown = sorted(set(kwargs) - set(OFFICIAL_KWARGS) - {"device"})
    if unknown:
        raise ConversionError(f"{where}: unknown keys {unknown}")
    for key in ("aabb", "gridSize"):
        if key not in kwargs:
            raise ConversionError(f"{where}: missing {key!r}")
    out = dict(OFFICIAL_CLASS_DEFAULTS)
    out.update({k: v for k, v in kwargs.items() if k != "device"})
    aabb = to_numpy(out["aabb"]).astype(np.float32)
    if aabb.size != 6:
        raise ConversionError(f"{where}: 'aabb' must hold 6 numbers, got shape {tuple(aabb.shape)}")
    out["aabb"] = aabb.reshape(2, 3).tolist()
    grid = [int(g) for g in to_numpy(out["gridSize"]).reshape(-1).tolist()]
    if len(grid) != 3 or min(grid) < 2:
        raise ConversionError(f"{where}: 'gridSize' must be 3 sizes >= 2, got {grid}")
    out["gridSize"] = grid
    out["near_far"] = [float(v) for v in to_numpy(out["near_far"]).reshape(-1).tolist()]
    for key in ("density_n_comp", "appearance_n_comp"):
        out[key] = list(_comps(out[key]))
    for key in ("app_dim", "pos_pe", "view_pe", "fea_pe", "featureC"):
        out[key] = int(out[key])
    for key in ("density_shift", "alphaMask_thres", "distance_scale", "rayMarch_weight_thres", "step_ratio"):
        out[key] = float(out[key])
    out["shadingMode"] = str(out["shadingMode"])
    out["fea2denseAct"] = str(out["fea2denseAct"])
    return out


def field_config_from_kwargs(kwargs: Mapping[str, Any], model_name: str, init_scale: Optional[float] = None) -> FieldConfig:
    """The :class:`FieldConfig` of official kwargs (``model_name`` TensorVMSplit or TensorCP)."""
    if model_name not in MODEL_KINDS:
        raise ConversionError(f"model_name: expected one of {sorted(MODEL_KINDS)}, got {model_name!r}")
    kw = full_kwargs(kwargs)
    return FieldConfig(
        model=MODEL_KINDS[model_name],  # type: ignore[arg-type]
        density_n_comp=tuple(kw["density_n_comp"]),
        app_n_comp=tuple(kw["appearance_n_comp"]),
        app_dim=kw["app_dim"],
        density_shift=kw["density_shift"],
        fea2dense_act=kw["fea2denseAct"],  # type: ignore[arg-type]
        distance_scale=kw["distance_scale"],
        shading_mode=kw["shadingMode"],  # type: ignore[arg-type]
        pos_pe=kw["pos_pe"],
        view_pe=kw["view_pe"],
        fea_pe=kw["fea_pe"],
        feature_c=kw["featureC"],
        init_scale=init_scale,
    )


def render_config_from_kwargs(kwargs: Mapping[str, Any], base: Optional[RenderConfig] = None) -> RenderConfig:
    """``base`` (default RenderConfig()) with the three render settings official kwargs carry."""
    kw = full_kwargs(kwargs)
    return dataclasses.replace(
        base or RenderConfig(),
        step_ratio=kw["step_ratio"],
        ray_march_weight_thres=kw["rayMarch_weight_thres"],
        alpha_mask_thres=kw["alphaMask_thres"],
    )


def official_kwargs(
    field_cfg: FieldConfig, render_cfg: RenderConfig, aabb: Any, grid_size: Sequence[int], near_far: Sequence[float]
) -> dict[str, Any]:
    """The official constructor kwargs (as stored in a ``.th``) of project configs, JSON-able."""
    return full_kwargs(
        {
            "aabb": np.asarray(to_numpy(aabb), np.float32).reshape(2, 3),
            "gridSize": [int(g) for g in grid_size],
            "density_n_comp": list(field_cfg.density_n_comp),
            "appearance_n_comp": list(field_cfg.app_n_comp),
            "app_dim": field_cfg.app_dim,
            "density_shift": field_cfg.density_shift,
            "alphaMask_thres": render_cfg.alpha_mask_thres,
            "distance_scale": field_cfg.distance_scale,
            "rayMarch_weight_thres": render_cfg.ray_march_weight_thres,
            "fea2denseAct": field_cfg.fea2dense_act,
            "near_far": [float(v) for v in near_far],
            "step_ratio": render_cfg.step_ratio,
            "shadingMode": field_cfg.shading_mode,
            "pos_pe": field_cfg.pos_pe,
            "view_pe": field_cfg.view_pe,
            "fea_pe": field_cfg.fea_pe,
            "featureC": field_cfg.feature_c,
        }
    )


# ---------------------------------------------------------------------------------------------
# The neutral record
# ---------------------------------------------------------------------------------------------


@dataclass
class PortableModel:
    """A TensoRF model in no framework: official kwargs, official state_dict (numpy), alpha mask."""

    model_name: str
    """"TensorVMSplit" or "TensorCP"."""
    kwargs: dict[str, Any]
    """Official constructor kwargs with defaults filled in (:func:`full_kwargs`), JSON-able."""
    state_dict: dict[str, np.ndarray]
    """Official keys and layout, in the official order."""
    alpha_mask: Optional[np.ndarray] = None
    """(Z, Y, X) bool, or None (no mask)."""
    mask_aabb: Optional[np.ndarray] = None
    """(2, 3) float32 box of the mask (None with no mask)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """JSON-able extras that the official format has no place for: ``render`` (a RenderConfig dict),
    ``init_scale``, ``white_bg``."""

    def __post_init__(self) -> None:
        self.kwargs = full_kwargs(self.kwargs)
        if self.model_name not in MODEL_KINDS:
            raise ConversionError(f"model_name: expected one of {sorted(MODEL_KINDS)}, got {self.model_name!r}")
        if (self.alpha_mask is None) != (self.mask_aabb is None):
            raise ConversionError("alpha mask: the mask and its aabb must be given together")
        if self.alpha_mask is not None:
            m = np.asarray(self.alpha_mask)
            if m.ndim != 3:
                raise ConversionError(f"alpha mask: expected a (Z, Y, X) volume, got shape {tuple(m.shape)}")
            self.alpha_mask = m.astype(bool)
            box = np.asarray(self.mask_aabb, np.float32)
            if box.size != 6:
                raise ConversionError(f"alpha mask aabb: expected (2, 3), got shape {tuple(box.shape)}")
            self.mask_aabb = box.reshape(2, 3)

    # --- derived -------------------------------------------------------------------------------
    @property
    def field_config(self) -> FieldConfig:
        return field_config_from_kwargs(self.kwargs, self.model_name, self.extra.get("init_scale"))

    @property
    def render_config(self) -> RenderConfig:
        base = self.extra.get("render")
        return render_config_from_kwargs(self.kwargs, _render_config_from_dict(base) if base else None)

    @property
    def grid_size(self) -> list[int]:
        return list(self.kwargs["gridSize"])

    @property
    def aabb(self) -> np.ndarray:
        return np.asarray(self.kwargs["aabb"], np.float32)

    @property
    def near_far(self) -> tuple[float, float]:
        nf = self.kwargs["near_far"]
        return float(nf[0]), float(nf[1])

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_field_config(self.field_config, self.grid_size)

    @property
    def step_size(self) -> float:
        return step_size_and_n_samples(self.aabb, self.grid_size, self.kwargs["step_ratio"])[0]

    def validate(self, where: str = "model") -> "PortableModel":
        """Check the state_dict against the key table (exact keys and shapes) and put it in the
        official key order (safetensors files keep keys sorted); returns self."""
        spec = self.spec
        check_state_dict(self.state_dict, spec, where)
        self.state_dict = {r.torch_key: self.state_dict[r.torch_key] for r in key_table(spec)}
        return self

    def summary(self) -> str:
        mask = "none" if self.alpha_mask is None else "x".join(str(s) for s in self.alpha_mask.shape[::-1])
        return (
            f"{self.model_name} {self.kwargs['shadingMode']} grid {'x'.join(map(str, self.grid_size))} "
            f"({len(self.state_dict)} tensors, alpha mask {mask})"
        )


def _render_config_from_dict(d: Mapping[str, Any]) -> RenderConfig:
    names = {f.name for f in dataclasses.fields(RenderConfig)}
    return RenderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------
# Official checkpoint dicts
# ---------------------------------------------------------------------------------------------


def portable_from_official(ckpt: Mapping[str, Any], model_name: Optional[str] = None, source: str = "checkpoint") -> PortableModel:
    """From an official checkpoint dict (as :func:`torch_reference.checkpoint.read_checkpoint` returns
    it): kwargs, state_dict, and the packed mask unpacked to (Z, Y, X) bool."""
    for key in ("kwargs", "state_dict"):
        if key not in ckpt:
            raise ConversionError(f"{source}: missing key {key!r}")
    sd = {k: to_numpy(v) for k, v in ckpt["state_dict"].items()}
    if model_name is None:
        model_name = "TensorVMSplit" if "density_plane.0" in sd else "TensorCP" if "density_line.0" in sd else ""
        if not model_name:
            raise ConversionError(f"{source}: state_dict has neither 'density_plane.0' nor 'density_line.0'")
    mask = mask_aabb = None
    if "alphaMask.aabb" in ckpt:
        shape = tuple(int(s) for s in ckpt["alphaMask.shape"])
        packed = to_numpy(ckpt["alphaMask.mask"]).astype(np.uint8).reshape(-1)
        n = int(np.prod(shape))
        if packed.size * 8 < n:
            raise ConversionError(f"{source}: 'alphaMask.mask' holds {packed.size} bytes, shape {shape} needs {(n + 7) // 8}")
        mask = np.unpackbits(packed)[:n].reshape(shape[-3:]).astype(bool)
        mask_aabb = to_numpy(ckpt["alphaMask.aabb"]).astype(np.float32).reshape(2, 3)
    try:
        pm = PortableModel(model_name, dict(ckpt["kwargs"]), sd, mask, mask_aabb)
    except ConversionError as exc:
        raise ConversionError(f"{source}: {exc}") from None
    return pm.validate(source)


def portable_to_official(pm: PortableModel, numpy_mask: bool = False) -> dict[str, Any]:
    """The official checkpoint dict (torch tensors; the mask packed with ``np.packbits``). With
    ``numpy_mask`` the packed mask is the official numpy array, else a torch uint8 tensor holding the
    same bytes (what ``torch_reference.checkpoint`` writes by default; the official loader reads both)."""
    import torch

    kwargs = dict(pm.kwargs)
    kwargs["aabb"] = torch.tensor(pm.kwargs["aabb"], dtype=torch.float32)
    ckpt: dict[str, Any] = {"kwargs": kwargs, "state_dict": {k: numpy_to_torch(v) for k, v in pm.state_dict.items()}}
    if pm.alpha_mask is not None:
        vol = pm.alpha_mask[None, None]
        packed = np.packbits(vol.reshape(-1))
        ckpt["alphaMask.shape"] = tuple(int(s) for s in vol.shape)
        ckpt["alphaMask.mask"] = packed if numpy_mask else torch.from_numpy(packed)
        ckpt["alphaMask.aabb"] = torch.from_numpy(np.asarray(pm.mask_aabb, np.float32).copy())
    return ckpt


# ---------------------------------------------------------------------------------------------
# torch_reference models
# ---------------------------------------------------------------------------------------------


def portable_from_torch(model: Any) -> PortableModel:
    """From a torch_reference ``TensorVMSplit`` / ``TensorCP`` (parameters, kwargs, mask, and the
    appearance strategy in ``extra["render"]``)."""
    from torch_reference.model import TensorCP, TensorVMSplit

    if isinstance(model, TensorVMSplit):
        name = "TensorVMSplit"
    elif isinstance(model, TensorCP):
        name = "TensorCP"
    else:
        raise ConversionError(f"expected a TensorVMSplit or TensorCP, got {type(model).__name__}")
    kwargs = model.get_kwargs()
    sd = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    mask = mask_aabb = None
    if model.alphaMask is not None:
        mask = to_numpy(model.alphaMask.mask).copy()
        mask_aabb = to_numpy(model.alphaMask.aabb).astype(np.float32).copy()
    base = RenderConfig(appearance=model.appearance, topk=model.topk)
    extra: dict[str, Any] = {"render": dataclasses.asdict(render_config_from_kwargs(kwargs, base))}
    if float(model.init_scale) != float(type(model).default_init_scale):  # None means the official scale
        extra["init_scale"] = float(model.init_scale)
    return PortableModel(name, kwargs, sd, mask, mask_aabb, extra).validate(f"{name} state_dict")


def portable_to_torch(pm: PortableModel, device: Any = "cpu") -> Any:
    """A torch_reference model holding exactly the record's tensors and mask. The global torch RNG is
    left untouched (construction runs under ``fork_rng``)."""
    import torch

    from torch_reference.alpha_mask import AlphaGridMask
    from torch_reference.model import model_class

    pm.validate()
    rc = pm.render_config
    cls = model_class(pm.model_name)
    with torch.random.fork_rng(devices=[]):
        model = cls(
            device=device,
            init_scale=pm.extra.get("init_scale"),
            appearance=rc.appearance,
            topk=rc.topk,
            **pm.kwargs,
        )
    model.load_state_dict({k: numpy_to_torch(v) for k, v in pm.state_dict.items()}, strict=True)
    if pm.alpha_mask is not None:
        vol = torch.from_numpy(pm.alpha_mask.astype(np.float32))
        model.alphaMask = AlphaGridMask(torch.from_numpy(np.asarray(pm.mask_aabb, np.float32).copy()), vol).to(model.device)
    return model


# ---------------------------------------------------------------------------------------------
# jax_tensorf models
# ---------------------------------------------------------------------------------------------


def _is_placeholder_mask(mask: np.ndarray, mask_aabb: np.ndarray, aabb: np.ndarray) -> bool:
    """The JAX "no mask": an all-set 2x2x2 volume over the model box (every point in the box passes)."""
    return mask.shape == (2, 2, 2) and bool(mask.all()) and np.array_equal(mask_aabb, aabb)


def portable_from_jax(model: Any) -> PortableModel:
    """From a :class:`jax_tensorf.model.TensoRF`. The mask is exported when the model has one
    (``mask_grid_size``) or when its volume is anything but the all-set placeholder."""
    cfg, rc = model.field_cfg, model.render_cfg
    grid = list(model.grid_size)
    aabb = np.asarray(model.state.aabb, np.float32)
    sd, _ = jax_to_torch(model.params, ModelSpec.from_field_config(cfg, grid), as_torch=False)
    mask = np.asarray(model.state.mask).astype(bool)
    mask_aabb = np.asarray(model.state.mask_aabb, np.float32)
    if model.mask_grid_size is None and _is_placeholder_mask(mask, mask_aabb, aabb):
        mask = mask_aabb = None  # type: ignore[assignment]
    extra = {"render": dataclasses.asdict(rc), "white_bg": bool(model.white_bg)}
    if cfg.init_scale is not None:
        extra["init_scale"] = float(cfg.init_scale)
    kwargs = official_kwargs(cfg, rc, aabb, grid, model.near_far)
    return PortableModel(MODEL_NAMES[cfg.model], kwargs, sd, mask, mask_aabb, extra)


def portable_to_jax(pm: PortableModel, render_cfg: Optional[RenderConfig] = None, white_bg: Optional[bool] = None) -> Any:
    """A :class:`jax_tensorf.model.TensoRF` with the record's parameters, box, step size and mask.

    ``render_cfg`` replaces the record's render config, except for the three settings the official
    kwargs fix (step ratio, weight and mask thresholds); ``white_bg`` defaults to the record's
    (True when it has none, as for official files).
    """
    import jax.numpy as jnp

    from jax_tensorf import alpha_mask as am
    from jax_tensorf.model import FieldState, TensoRF

    cfg = pm.field_config
    rc = render_config_from_kwargs(pm.kwargs, render_cfg) if render_cfg is not None else pm.render_config
    params, _ = torch_to_jax(pm.state_dict, ModelSpec.from_field_config(cfg, pm.grid_size))
    aabb = pm.aabb
    step, _ = step_size_and_n_samples(aabb, pm.grid_size, rc.step_ratio)
    if pm.alpha_mask is None:
        mask, mask_aabb = am.full_mask(aabb)
        mask_grid = None
    else:
        mask, mask_aabb = jnp.asarray(pm.alpha_mask), jnp.asarray(pm.mask_aabb)
        z, y, x = pm.alpha_mask.shape
        mask_grid = [int(x), int(y), int(z)]
    state = FieldState(jnp.asarray(aabb), jnp.float32(step), mask, mask_aabb)
    wb = bool(pm.extra.get("white_bg", True)) if white_bg is None else bool(white_bg)
    model = TensoRF(cfg, rc, params, state, pm.near_far, wb)
    model.mask_grid_size = mask_grid
    return model


# ---------------------------------------------------------------------------------------------
# Convenience: model to model
# ---------------------------------------------------------------------------------------------


def torch_model_to_jax(model: Any, render_cfg: Optional[RenderConfig] = None, white_bg: bool = True) -> Any:
    """torch_reference model -> JAX TensoRF (same weights, box, grid, step, mask, near/far)."""
    return portable_to_jax(portable_from_torch(model), render_cfg, white_bg)


def jax_model_to_torch(model: Any, device: Any = "cpu") -> Any:
    """JAX TensoRF -> torch_reference model (same weights, box, grid, step, mask, near/far)."""
    return portable_to_torch(portable_from_jax(model), device)


__all__ = [
    "MODEL_NAMES",
    "full_kwargs",
    "field_config_from_kwargs",
    "render_config_from_kwargs",
    "official_kwargs",
    "PortableModel",
    "portable_from_official",
    "portable_to_official",
    "portable_from_torch",
    "portable_to_torch",
    "portable_from_jax",
    "portable_to_jax",
    "torch_model_to_jax",
    "jax_model_to_torch",
]
