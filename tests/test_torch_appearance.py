"""torch_reference.appearance: official decoder layouts and behaviour."""

from __future__ import annotations

import pytest
import torch

from tensorf_common.config import ConfigError, FieldConfig
from torch_reference.appearance import (
    MLPRender,
    MLPRender_Fea,
    MLPRender_PE,
    RGBRender,
    SHRender,
    make_render_module,
    render_module_from_kwargs,
)


def test_mlp_fea_official_width_names_and_zero_last_bias():
    m = MLPRender_Fea(27, viewpe=2, feape=2, featureC=128)
    assert m.in_mlpC == 150
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (128, 150),
        "mlp.0.bias": (128,),
        "mlp.2.weight": (128, 128),
        "mlp.2.bias": (128,),
        "mlp.4.weight": (3, 128),
        "mlp.4.bias": (3,),
    }
    assert torch.equal(m.mlp[4].bias, torch.zeros(3))
    rgb = m(torch.zeros(7, 3), torch.nn.functional.normalize(torch.randn(7, 3), dim=-1), torch.randn(7, 27))
    assert rgb.shape == (7, 3) and bool(((rgb > 0) & (rgb < 1)).all())


def test_mlp_pe_runs_with_the_official_width():
    # The official forward is 3 inputs short of in_mlpC and crashes; ours feeds the raw position too.
    m = MLPRender_PE(12, viewpe=2, pospe=6, featureC=16)
    assert m.in_mlpC == (3 + 2 * 2 * 3) + (3 + 2 * 6 * 3) + 12
    assert m(torch.rand(4, 3) * 2 - 1, torch.randn(4, 3), torch.randn(4, 12)).shape == (4, 3)
    assert MLPRender(12, viewpe=2, featureC=16)(None, torch.randn(4, 3), torch.randn(4, 12)).shape == (4, 3)


def test_sh_and_rgb_renders():
    dirs = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    torch.testing.assert_close(SHRender(None, dirs, torch.zeros(5, 27)), torch.full((5, 3), 0.5))
    # only the DC coefficient of red set: relu(C0 * f + 0.5)
    feats = torch.zeros(5, 27)
    feats[:, 0] = 1.0
    torch.testing.assert_close(SHRender(None, dirs, feats)[:, 0], torch.full((5,), 0.28209479177387814 + 0.5))
    f = torch.rand(5, 3)
    assert RGBRender(None, dirs, f) is f


def test_factories():
    assert isinstance(make_render_module(FieldConfig()), MLPRender_Fea)
    assert make_render_module(FieldConfig(shading_mode="SH")) is SHRender
    assert isinstance(make_render_module(FieldConfig(shading_mode="MLP", app_dim=12)), MLPRender)
    with pytest.raises(ConfigError, match="app_dim"):
        render_module_from_kwargs("RGB", 27)
    with pytest.raises(ConfigError, match="shading"):
        render_module_from_kwargs("NeRF", 27)
