"""Mixed-precision policies: which parts of the field compute in bf16 / fp16.

Parameters, their gradients and the optimizer state always stay float32. A policy names the compute
dtype of three parts, each switchable (``TrainConfig.precision_parts``):

- ``grid``: 16-bit copies of the planes and lines are looked up (the gathered values and their
  bilinear weights in the half dtype; the coordinates and indices stay float32, since a 300-cell
  axis needs more than bf16's 8 bits). The gathers read half the bytes, but the backward of the
  XLA lookups (``flat``, ``pairs``, ``rays``, ``samples``, ``gather``) then scatter-adds into a 16-bit
  gradient, which XLA compiles to compare-and-swap loops on NVIDIA GPUs (the lookups of
  ``fields.LOOKUP_VARIANTS`` accumulate in float32 and round once);
- ``features``: the plane x line products, their sums, and the basis matrix;
- ``mlp``: the render MLP (and its positional encodings).

Without ``grid`` (the default parts, ``DEFAULT_PARTS``: features and mlp) the lookups gather float32
rows and interpolate in float32, and their results are cast to the features' dtype right after the
gather ("cast after"): the backward's scatter-adds into the grids are float32 whatever the policy,
and a reduced precision never scatters in 16 bits. The dense density lookup recomposes its grid in
the grid's dtype too.

Compositing, the loss and the regularisers run in float32. fp16 needs loss scaling: with
``loss_scale="dynamic"`` (the default for fp16) the step uses flax's maintained ``DynamicScale``,
which skips non-finite steps and adapts the scale; bf16 runs without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import jax.numpy as jnp

from tensorf_common.config import ConfigError, TrainConfig

PARTS = ("grid", "features", "mlp")
DEFAULT_PARTS: tuple[str, ...] = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "precision_parts")
"""``TrainConfig.precision_parts``' default: lookups in float32, cast after the gather."""
_DTYPES = {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}


@dataclass(frozen=True)
class Policy:
    """Compute dtypes per part (None = float32) and the loss-scaling mode. Hashable: a static
    argument of the jitted step."""

    name: str = "fp32"
    grid: Optional[type] = None
    features: Optional[type] = None
    mlp: Optional[type] = None
    loss_scale: str = "none"

    @property
    def is_fp32(self) -> bool:
        return self.grid is None and self.features is None and self.mlp is None


FP32 = Policy()


def policy(name: str, parts=DEFAULT_PARTS, loss_scale: str = "auto") -> Policy:
    """The policy ``name`` (fp32, bf16, fp16) applied to ``parts``."""
    if name not in _DTYPES:
        raise ConfigError(f"train.precision: unknown {name!r}; choose fp32, bf16 or fp16")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ConfigError(f"train.precision_parts: unknown parts {sorted(unknown)}; choose from {PARTS}")
    dt = _DTYPES[name]
    if loss_scale == "auto":
        loss_scale = "dynamic" if name == "fp16" else "none"
    if loss_scale not in ("none", "dynamic"):
        raise ConfigError(f"train.loss_scale: expected auto, dynamic or none, got {loss_scale!r}")
    return Policy(
        name=name,
        grid=dt if "grid" in parts else None,
        features=dt if "features" in parts else None,
        mlp=dt if "mlp" in parts else None,
        loss_scale=loss_scale,
    )


def policy_from_config(tc: TrainConfig) -> Policy:
    return policy(tc.precision, tc.precision_parts, tc.loss_scale)
