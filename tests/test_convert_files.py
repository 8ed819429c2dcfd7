"""tensorf_convert.files: safetensors + JSON (three readers, sidecar, bad files), official .th,
JAX .npz, format detection, and convert_file between every pair of formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorf_common.config import FieldConfig, RenderConfig
from tensorf_common.errors import CheckpointError, ConversionError
from tensorf_convert import files
from tensorf_convert.model import PortableModel, portable_from_torch
from torch_reference.checkpoint import save_checkpoint
from torch_reference.model import TensorBase

AABB = [[-1.0, -1.2, -0.9], [1.1, 1.0, 1.0]]


def torch_model(model: str = "VM", mask: bool = True):
    comps = dict(density_n_comp=(2, 3, 4), app_n_comp=(3, 4, 5)) if model == "VM" else dict(density_n_comp=(5,), app_n_comp=(6,))
    cfg = FieldConfig(model=model, app_dim=6, feature_c=8, view_pe=2, fea_pe=2, density_shift=-1.0, **comps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        m = TensorBase.from_config(cfg, RenderConfig(), AABB, [8, 7, 6], [0.5, 5.0])
    if mask:
        assert m.updateAlphaMask([9, 8, 5]) is not None
    return m


def same(a: PortableModel, b: PortableModel) -> None:
    assert a.model_name == b.model_name and a.kwargs == b.kwargs
    assert list(a.state_dict) == list(b.state_dict)
    for k in a.state_dict:
        x, y = a.state_dict[k], b.state_dict[k]
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32)), k
    if a.alpha_mask is None:
        assert b.alpha_mask is None
    else:
        assert np.array_equal(a.alpha_mask, b.alpha_mask) and np.array_equal(a.mask_aabb, b.mask_aabb)


@pytest.fixture(scope="module")
def pm() -> PortableModel:
    return portable_from_torch(torch_model())


def test_format_of():
    assert files.format_of("a/b.th") == "th" and files.format_of("x.PTH") == "th"
    assert files.format_of("m.safetensors") == "safetensors" and files.format_of("m.npz") == "npz"
    assert files.format_of("m.bin", "safetensors") == "safetensors"
    with pytest.raises(ConversionError, match=r"m\.bin: cannot tell the format"):
        files.format_of("m.bin")
    with pytest.raises(ConversionError, match="expected one of"):
        files.format_of("m.th", "pickle")


@pytest.mark.parametrize("framework", ["numpy", "torch", "flax"])
def test_safetensors_round_trip_with_every_reader(tmp_path: Path, pm: PortableModel, framework):
    path = files.write_safetensors(pm, tmp_path / "m.safetensors")
    same(files.read_safetensors(path, framework), pm)
    tensors, doc = files.read_safetensors_tensors(path, framework)
    assert set(tensors) == set(pm.state_dict) | {"alphaMask.mask", "alphaMask.aabb"}
    assert doc["model_name"] == "TensorVMSplit" and doc["alpha_mask"] == {"shape_zyx": [5, 8, 9]}


def test_safetensors_file_layout(tmp_path: Path, pm: PortableModel):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = files.write_safetensors(pm, tmp_path / "m.safetensors")
    side = tmp_path / "m.json"
    assert side.is_file()
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["tensorf_bench"]) == json.loads(side.read_text())
    # official keys and layout: straight into a torch model
    tensors = load_file(str(path))
    assert tensors["alphaMask.mask"].dtype == torch.uint8 and tuple(tensors["alphaMask.mask"].shape) == (5, 8, 9)
    m = torch_model(mask=False)
    m.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("alphaMask.")}, strict=True)
    # readable by others: mkstemp's 0600 is not kept
    assert (os.stat(path).st_mode & 0o777) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_safetensors_without_header_config_reads_the_sidecar(tmp_path: Path, pm: PortableModel):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file(files.safetensors_arrays(pm), str(path))  # no metadata, as another tool might write
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: no 'tensorf_bench' header metadata and no config file plain\.json"):
        files.read_safetensors(path)
    (tmp_path / "plain.json").write_text(json.dumps(files.config_document(pm)))
    same(files.read_safetensors(path), pm)
    (tmp_path / "plain.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"plain\.json: not valid JSON"):
        files.read_safetensors(path)
    (tmp_path / "plain.json").write_text(json.dumps({**files.config_document(pm), "format": "other"}))
    with pytest.raises(CheckpointError, match="'format' is 'other'"):
        files.read_safetensors(path)


def test_bad_safetensors_files(tmp_path: Path, pm: PortableModel):
    from safetensors.numpy import save

    with pytest.raises(CheckpointError, match="no such file"):
        files.read_safetensors(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        files.read_safetensors(tmp_path / "junk.safetensors")
    arrays = files.safetensors_arrays(pm)
    arrays["density_line.1"] = np.zeros((1, 3, 2, 1), np.float32)
    doc = json.dumps(files.config_document(pm))
    (tmp_path / "shape.safetensors").write_bytes(save(arrays, metadata={"tensorf_bench": doc}))
    with pytest.raises(ConversionError, match=r"shape\.safetensors.*density_line\.1.*\(1, 3, 2, 1\), expected \(1, 3, 7, 1\)"):
        files.read_safetensors(tmp_path / "shape.safetensors")


@pytest.mark.parametrize("numpy_mask", [True, False])
def test_official_th_from_the_reference_writer(tmp_path: Path, pm: PortableModel, numpy_mask):
    m = torch_model()
    save_checkpoint(m, tmp_path / "m.th", numpy_mask=numpy_mask)
    same(files.read_model(tmp_path / "m.th"), pm)
    files.write_official(pm, tmp_path / "ours.th", numpy_mask=numpy_mask)
    from torch_reference.checkpoint import load_checkpoint

    same(portable_from_torch(load_checkpoint(tmp_path / "ours.th")), pm)


def test_official_th_errors_are_checkpoint_errors(tmp_path: Path):
    (tmp_path / "junk.th").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.th"):
        files.read_model(tmp_path / "junk.th")
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    kwargs = {"aabb": box, "gridSize": [4, 4, 4], "density_n_comp": [2, 2, 2], "shadingMode": "SH"}
    # (only lines: read as a TensorCP, whose other lines and basis matrix are missing)
    torch.save({"kwargs": kwargs, "state_dict": {"density_line.0": torch.zeros(1, 2, 4, 1)}}, tmp_path / "partial.th")
    with pytest.raises(ConversionError, match=r"partial\.th: missing keys \['density_line.1'"):
        files.read_model(tmp_path / "partial.th")
    # the class default (8 components) is what a checkpoint without density_n_comp means
    del kwargs["density_n_comp"]
    torch.save({"kwargs": kwargs, "state_dict": {"density_line.0": torch.zeros(1, 2, 4, 1)}}, tmp_path / "partial.th")
    with pytest.raises(ConversionError, match=r"density_line\.0.*\(1, 2, 4, 1\), expected \(1, 8, 4, 1\)"):
        files.read_model(tmp_path / "partial.th")


@pytest.mark.parametrize("model", ["VM", "CP"])
def test_convert_file_between_every_pair(tmp_path: Path, model):
    start = portable_from_torch(torch_model(model, mask=model == "VM"))
    files.write_official(start, tmp_path / "m.th")
    suffixes = ["th", "safetensors", "npz"]
    for a in suffixes:
        for b in suffixes:
            if a == b:
                continue
            out = tmp_path / f"{a}-to.{b}"
            got = files.convert_file(tmp_path / f"m.{a}" if a == "th" else tmp_path / f"th-to.{a}", out)
            same(got, start)
            same(files.read_model(out), start)


def test_convert_file_refuses_to_overwrite(tmp_path: Path, pm: PortableModel):
    files.write_safetensors(pm, tmp_path / "a.safetensors")
    files.convert_file(tmp_path / "a.safetensors", tmp_path / "b.npz")
    with pytest.raises(ConversionError, match="already exists"):
        files.convert_file(tmp_path / "a.safetensors", tmp_path / "b.npz")
    files.convert_file(tmp_path / "a.safetensors", tmp_path / "b.npz", overwrite=True)
    with pytest.raises(ConversionError, match="overwrite the input"):
        files.convert_file(tmp_path / "a.safetensors", tmp_path / "a.safetensors", overwrite=True)
