"""checkpoint / conversion: files written by one framework's writer, read through tensorf_convert, and
rendered by the other framework: the same image.

- an official-format ``.th`` written by torch_reference's writer (the official dict, numpy packbits
  mask) loads in the JAX model and renders the same image as the torch model read back by the safe
  loader;
- a JAX ``.npz`` checkpoint converted to ``.th`` renders the same in torch;
- a safetensors + JSON file loads in both (``safetensors.torch`` and ``safetensors.flax``);
- the image is 40 x 40 rays from a test camera's pose, zoomed onto the box;
- ``.th -> .safetensors -> .npz -> .th`` keeps every tensor and the mask bit for bit.

The models have an alpha mask that is empty two voxels deep from the faces (see test_model), so the
evaluation renders are free of entry-face rounding ties.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compare import EXACT, assert_close
from tensorf_convert import files
from tensorf_convert.model import portable_from_jax, portable_from_torch, portable_to_jax
from torch_reference.checkpoint import load_checkpoint, save_checkpoint
from torch_reference.model import render_batched


def _masked_pair(twins, model: str):
    tm, _ = twins.blob_pair(model, width=0.3)
    assert tm.updateAlphaMask(tm.gridSize.tolist()) is not None
    return tm


def _image_rays(parity_scene, view: int = 0, size: int = 40, zoom: float = 3.0):
    """A ``size`` x ``size`` image from the pose of a test camera of the procedural scene, zoomed in
    ``zoom`` times so that the model box fills the view (1600 rays)."""
    from tensorf_common.data.rays import get_ray_directions, get_rays

    test = parity_scene["test"]
    focal = test.focal * zoom * size / test.width
    return get_rays(get_ray_directions(size, size, focal), test.c2w[view])


def _torch_image(tm, o, d):
    rgb, depth = render_batched(tm, torch.cat([torch.from_numpy(o), torch.from_numpy(d)], -1), chunk=512)
    return {"rgb": rgb, "depth": depth}


def _jax_image(jm, o, d):
    out = jm.render_chunks(o, d, chunk=512, want_depth=True)
    return {"rgb": out["rgb"], "depth": out["depth"]}


@pytest.mark.parametrize("model", ["VM"])  # CP files: the bit-exact round trip below
def test_official_th_renders_the_same_in_jax(twins, parity_scene, tmp_path: Path, model):
    tm = _masked_pair(twins, model)
    path = tmp_path / "official.th"
    save_checkpoint(tm, path, numpy_mask=True)  # the reference's official-format writer (numpy packbits mask)
    jm = portable_to_jax(files.read_model(path))  # the conversion layer
    reread = load_checkpoint(path)  # the safe loader
    o, d = _image_rays(parity_scene)
    want = _torch_image(reread, o, d)
    assert float((want["rgb"] < 0.99).any(-1).float().mean()) > 0.2  # the blob fills the view
    assert_close(f"checkpoint.official_th->jax.render[{model}]", _jax_image(jm, o, d), want)


def test_jax_npz_to_th_renders_the_same_in_torch(twins, parity_scene, tmp_path: Path):
    """JAX checkpoint -> .th -> torch is the torch model the JAX one was converted from: its renders
    are identical (and the JAX renders of that model are compared with torch's above)."""
    from jax_tensorf.checkpoint import save_model

    original = _masked_pair(twins, "VM")
    save_model(twins.to_jax(original), tmp_path / "model.npz")
    files.convert_file(tmp_path / "model.npz", tmp_path / "model.th")
    tm = load_checkpoint(tmp_path / "model.th")
    o, d = _image_rays(parity_scene, view=1)
    assert_close("checkpoint.jax_npz->th->torch.render", _torch_image(tm, o, d), _torch_image(original, o, d), EXACT)


def test_safetensors_loads_in_both_frameworks(twins, parity_scene, tmp_path: Path):
    tm = _masked_pair(twins, "VM")
    path = files.write_safetensors(portable_from_torch(tm), tmp_path / "model.safetensors")
    jm = files.load_jax_model(path)  # safetensors.flax
    tm2 = files.load_torch_model(path)  # safetensors.torch
    o, d = _image_rays(parity_scene, view=2)
    want = _torch_image(tm, o, d)
    assert_close("checkpoint.safetensors->torch.render", _torch_image(tm2, o, d), want, EXACT)
    assert_close("checkpoint.safetensors->jax.render", _jax_image(jm, o, d), want)


def test_file_round_trip_is_bit_exact(twins, tmp_path: Path):
    tm = _masked_pair(twins, "CP")
    save_checkpoint(tm, tmp_path / "a.th", numpy_mask=True)
    files.convert_file(tmp_path / "a.th", tmp_path / "b.safetensors")
    files.convert_file(tmp_path / "b.safetensors", tmp_path / "c.npz")
    files.convert_file(tmp_path / "c.npz", tmp_path / "d.th")
    a, d = files.read_model(tmp_path / "a.th"), files.read_model(tmp_path / "d.th")
    assert_close("checkpoint.round_trip[th->safetensors->npz->th].state_dict", d.state_dict, a.state_dict, EXACT)
    assert_close("checkpoint.round_trip[th->safetensors->npz->th].alpha_mask", d.alpha_mask, a.alpha_mask, EXACT)
    assert d.kwargs == a.kwargs
    # and the JAX model read from the .npz is the torch model
    pj = portable_from_jax(portable_to_jax(files.read_model(tmp_path / "c.npz")))
    assert_close("checkpoint.round_trip[npz].state_dict", pj.state_dict, portable_from_torch(tm).state_dict, EXACT)
