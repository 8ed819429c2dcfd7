"""Render modules (appearance decoders) named and laid out as the official classes.

Every decoder is called as ``module(pts, viewdirs, features) -> rgb (P, 3)``, where ``pts`` are the
normalised [-1, 1] sample positions (used only by ``MLPRender_PE``), ``viewdirs`` the ray directions
and ``features`` the ``basis_mat`` outputs (P, app_dim).

The MLP decoders keep the official parameter names ``mlp.{0,2,4}.{weight,bias}``
(``Linear -> ReLU -> Linear -> ReLU -> Linear``), default ``nn.Linear`` init, last bias zero, and
are built in the official order, so the same torch seed gives the official initial weights.
``SHRender`` and ``RGBRender`` are plain functions (they hold no parameters), as in the official code,
so they contribute no ``renderModule.*`` keys to the state_dict.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from tensorf_common.config import ConfigError, FieldConfig

from .encoding import eval_sh_bases, positional_encoding

RenderFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _mlp(in_c: int, feature_c: int) -> nn.Sequential:
    mlp = nn.Sequential(
        nn.Linear(in_c, feature_c), nn.ReLU(), nn.Linear(feature_c, feature_c), nn.ReLU(), nn.Linear(feature_c, 3)
    )
    nn.init.constant_(mlp[-1].bias, 0)
    return mlp


class MLPRender_Fea(nn.Module):
    """Official default decoder: ``[feat, dir, PE(feat, fea_pe), PE(dir, view_pe)]`` -> MLP -> sigmoid."""

    def __init__(self, in_chanel: int, viewpe: int = 6, feape: int = 6, featureC: int = 128) -> None:
        super().__init__()
        self.in_mlpC = 2 * viewpe * 3 + 2 * feape * in_chanel + 3 + in_chanel
        self.viewpe = viewpe
        self.feape = feape
        self.mlp = _mlp(self.in_mlpC, featureC)

    def forward(self, pts: Tensor, viewdirs: Tensor, features: Tensor) -> Tensor:
        indata = [features, viewdirs]
        if self.feape > 0:
            indata.append(positional_encoding(features, self.feape))
        if self.viewpe > 0:
            indata.append(positional_encoding(viewdirs, self.viewpe))
        return torch.sigmoid(self.mlp(torch.cat(indata, dim=-1)))


class MLPRender_PE(nn.Module):
    """``[feat, dir, pts, PE(pts, pos_pe), PE(dir, view_pe)]`` -> MLP -> sigmoid (pts normalised to [-1, 1]).

    Deliberate difference: the official forward omits the raw ``pts`` and so cannot run (its layer
    is 3 inputs wider than what it feeds); ``pts`` fills exactly those 3 inputs.
    """

    def __init__(self, in_chanel: int, viewpe: int = 6, pospe: int = 6, featureC: int = 128) -> None:
        super().__init__()
        self.in_mlpC = (3 + 2 * viewpe * 3) + (3 + 2 * pospe * 3) + in_chanel
        self.viewpe = viewpe
        self.pospe = pospe
        self.mlp = _mlp(self.in_mlpC, featureC)

    def forward(self, pts: Tensor, viewdirs: Tensor, features: Tensor) -> Tensor:
        # The official forward feeds [feat, dir, PE(pts), PE(dir)], 3 channels fewer than the
        # official in_mlpC, and crashes on its first call. We keep the official layer shape and feed
        # the raw normalised position too, which is what in_mlpC counts (see README).
        indata = [features, viewdirs, pts]
        if self.pospe > 0:
            indata.append(positional_encoding(pts, self.pospe))
        if self.viewpe > 0:
            indata.append(positional_encoding(viewdirs, self.viewpe))
        return torch.sigmoid(self.mlp(torch.cat(indata, dim=-1)))


class MLPRender(nn.Module):
    """``[feat, dir, PE(dir, view_pe)]`` -> MLP -> sigmoid."""

    def __init__(self, in_chanel: int, viewpe: int = 6, featureC: int = 128) -> None:
        super().__init__()
        self.in_mlpC = (3 + 2 * viewpe * 3) + in_chanel
        self.viewpe = viewpe
        self.mlp = _mlp(self.in_mlpC, featureC)

    def forward(self, pts: Tensor, viewdirs: Tensor, features: Tensor) -> Tensor:
        indata = [features, viewdirs]
        if self.viewpe > 0:
            indata.append(positional_encoding(viewdirs, self.viewpe))
        return torch.sigmoid(self.mlp(torch.cat(indata, dim=-1)))


def SHRender(pts: Tensor, viewdirs: Tensor, features: Tensor) -> Tensor:
    """Degree-2 SH colour: ``relu(sum(sh(dir) * feat.view(-1, 3, 9)) + 0.5)`` (needs app_dim 27)."""
    sh_mult = eval_sh_bases(2, viewdirs)[:, None]
    rgb_sh = features.view(-1, 3, sh_mult.shape[-1])
    return torch.relu(torch.sum(sh_mult * rgb_sh, dim=-1) + 0.5)


def RGBRender(pts: Tensor, viewdirs: Tensor, features: Tensor) -> Tensor:
    """The feature is the colour (needs app_dim 3)."""
    return features


RenderModule = Union[nn.Module, RenderFn]


def render_module_from_kwargs(
    shadingMode: str, app_dim: int, pos_pe: int = 6, view_pe: int = 6, fea_pe: int = 6, featureC: int = 128
) -> RenderModule:
    """The decoder for official keyword arguments (``init_render_func``)."""
    if shadingMode == "MLP_PE":
        return MLPRender_PE(app_dim, view_pe, pos_pe, featureC)
    if shadingMode == "MLP_Fea":
        return MLPRender_Fea(app_dim, view_pe, fea_pe, featureC)
    if shadingMode == "MLP":
        return MLPRender(app_dim, view_pe, featureC)
    if shadingMode == "SH":
        if app_dim != 27:
            raise ConfigError(f"field.app_dim: SH shading needs 27, got {app_dim}")
        return SHRender
    if shadingMode == "RGB":
        if app_dim != 3:
            raise ConfigError(f"field.app_dim: RGB shading needs 3, got {app_dim}")
        return RGBRender
    raise ConfigError(f"field.shading_mode: unknown shading mode {shadingMode!r}")


def make_render_module(field_cfg: FieldConfig, app_dim: Optional[int] = None) -> RenderModule:
    """The decoder for a :class:`FieldConfig` (``app_dim`` defaults to ``field_cfg.app_dim``)."""
    return render_module_from_kwargs(
        field_cfg.shading_mode,
        field_cfg.app_dim if app_dim is None else app_dim,
        pos_pe=field_cfg.pos_pe,
        view_pe=field_cfg.view_pe,
        fea_pe=field_cfg.fea_pe,
        featureC=field_cfg.feature_c,
    )
