"""torch_reference.checkpoint: official .th round trips, safe reading, refusal of unsafe files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorf_common.errors import CheckpointError
from torch_reference.checkpoint import (
    EXTRA_KEY,
    checkpoint_dict,
    load_checkpoint,
    read_checkpoint,
    resume,
    save_checkpoint,
)
from torch_reference.model import TensorCP, TensorVMSplit

AABB = [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]
KW = dict(
    density_n_comp=[2, 3, 4],
    appearance_n_comp=[3, 2, 2],
    app_dim=27,
    shadingMode="MLP_Fea",
    near_far=[0.5, 4.0],
    alphaMask_thres=1e-2,
    density_shift=-4.0,
    view_pe=2,
    fea_pe=2,
    featureC=16,
    step_ratio=0.5,
)


def _rays(n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.3 - o, dim=-1)
    return torch.cat([o, d], -1)


def _trained_like_model(cls=TensorVMSplit, **kw) -> TensorVMSplit:
    """A model with a non-trivial alpha mask, a shrunk non-cubic grid and an upsample behind it."""
    torch.manual_seed(0)
    m = cls(torch.tensor(AABB), [9, 8, 7], "cpu", **{**KW, **kw})
    with torch.no_grad():
        for ln in m.density_line:
            ln[..., 1:5, :] += 1.5
        for pl in getattr(m, "density_plane", []):
            pl[..., 1:5, 1:6] += 1.5
    new_aabb = m.updateAlphaMask((12, 11, 10))
    assert new_aabb is not None and float(m.alphaMask.alpha_volume.mean()) < 0.9
    m.shrink(new_aabb)
    m.upsample_volume_grid([10, 9, 8])
    return m


def _render(m) -> torch.Tensor:
    with torch.no_grad():
        return m(_rays(), white_bg=True, is_train=False)[0]


@pytest.mark.parametrize("numpy_mask", [False, True])
def test_round_trip_renders_identically(tmp_path: Path, numpy_mask: bool):
    m = _trained_like_model()
    path = tmp_path / "model.th"
    save_checkpoint(m, path, numpy_mask=numpy_mask)
    back = load_checkpoint(path)
    assert isinstance(back, TensorVMSplit)
    assert back.gridSize.tolist() == m.gridSize.tolist() and torch.equal(back.aabb, m.aabb)
    assert back.stepSize == m.stepSize and back.nSamples == m.nSamples
    assert torch.equal(back.alphaMask.alpha_volume, m.alphaMask.alpha_volume)
    assert torch.equal(back.alphaMask.aabb, m.alphaMask.aabb) and back.alphaMask.gridSize == [12, 11, 10]
    for (k, a), b in zip(m.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(_render(back), _render(m))


def test_round_trip_cp_without_mask(tmp_path: Path):
    torch.manual_seed(1)
    m = TensorCP(torch.tensor(AABB), [6, 7, 8], "cpu", **{**KW, "density_n_comp": [5], "appearance_n_comp": [4], "shadingMode": "SH"})
    save_checkpoint(m, tmp_path / "cp.th")
    ck = read_checkpoint(tmp_path / "cp.th")
    assert "alphaMask.mask" not in ck
    back = load_checkpoint(tmp_path / "cp.th")
    assert isinstance(back, TensorCP) and back.alphaMask is None
    assert torch.equal(_render(back), _render(m))


def test_file_layout_is_the_official_one(tmp_path: Path):
    m = _trained_like_model()
    save_checkpoint(m, tmp_path / "a.th")
    ck = torch.load(tmp_path / "a.th", weights_only=True)  # default mask form: no numpy globals needed
    assert set(ck) == {"kwargs", "state_dict", "alphaMask.shape", "alphaMask.mask", "alphaMask.aabb"}
    assert ck["alphaMask.shape"] == (1, 1, 10, 11, 12)
    # the official loader's unpacking works on our tensor form
    vol = np.unpackbits(ck["alphaMask.mask"])[: np.prod(ck["alphaMask.shape"])].reshape(ck["alphaMask.shape"])
    assert np.array_equal(vol.astype(bool), m.alphaMask.alpha_volume.bool().numpy())
    assert ck["kwargs"]["gridSize"] == [10, 9, 8] and "device" not in ck["kwargs"]
    save_checkpoint(m, tmp_path / "b.th", numpy_mask=True)
    raw = torch.load(tmp_path / "b.th", weights_only=False)
    assert isinstance(raw["alphaMask.mask"], np.ndarray) and raw["alphaMask.mask"].dtype == np.uint8


def test_reads_a_file_written_like_the_official_code(tmp_path: Path):
    """``TensorBase.save``'s dict: np.packbits mask, tensor aabb in kwargs, a plain state_dict."""
    m = _trained_like_model()
    volume = m.alphaMask.alpha_volume.bool().cpu().numpy()
    official = {
        "kwargs": {**m.get_kwargs()},
        "state_dict": m.state_dict(),
        "alphaMask.shape": volume.shape,
        "alphaMask.mask": np.packbits(volume.reshape(-1)),
        "alphaMask.aabb": m.alphaMask.aabb.cpu(),
    }
    torch.save(official, tmp_path / "official.th")
    assert torch.equal(_render(load_checkpoint(tmp_path / "official.th")), _render(m))


def _rename_global(src: Path, dst: Path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle inside a torch zip checkpoint (to mimic a file written by numpy 1.x)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(info.filename, data)


def test_reads_numpy1_pickles(tmp_path: Path):
    m = _trained_like_model()
    save_checkpoint(m, tmp_path / "np2.th", numpy_mask=True)
    _rename_global(tmp_path / "np2.th", tmp_path / "np1.th", b"numpy._core.multiarray\n_reconstruct", b"numpy.core.multiarray\n_reconstruct")
    assert torch.equal(_render(load_checkpoint(tmp_path / "np1.th")), _render(m))


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_refuses_code_execution_and_names_the_global(tmp_path: Path):
    marker = tmp_path / "pwned"
    bad = {"kwargs": {"aabb": torch.zeros(2, 3), "gridSize": [2, 2, 2]}, "state_dict": {}, "x": _Payload(str(marker))}
    torch.save(bad, tmp_path / "bad.th")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "bad.th")
    msg = str(err.value)
    assert "bad.th" in msg and "system" in msg and "allowlist" in msg
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.th")


def test_refuses_numpy_types_beyond_the_allowlist(tmp_path: Path):
    ck = checkpoint_dict(_trained_like_model())
    ck["alphaMask.mask"] = np.zeros(4, dtype=np.float64)  # not a packbits array: needs Float64DType
    torch.save(ck, tmp_path / "f64.th")
    with pytest.raises(CheckpointError, match="Float64DType"):
        read_checkpoint(tmp_path / "f64.th")


def test_structural_errors_name_file_and_key(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.th")
    (tmp_path / "junk.th").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.th"):
        read_checkpoint(tmp_path / "junk.th")
    m = _trained_like_model()
    ck = checkpoint_dict(m)
    del ck["state_dict"]
    torch.save(ck, tmp_path / "nosd.th")
    with pytest.raises(CheckpointError, match="state_dict"):
        read_checkpoint(tmp_path / "nosd.th")
    ck = checkpoint_dict(m)
    ck["state_dict"]["density_plane.1"] = torch.zeros(1, 3, 2, 2)
    torch.save(ck, tmp_path / "shape.th")
    with pytest.raises(CheckpointError, match="density_plane.1"):
        load_checkpoint(tmp_path / "shape.th")
    ck = checkpoint_dict(m)
    ck["kwargs"]["bogus"] = 1
    torch.save(ck, tmp_path / "kw.th")
    with pytest.raises(CheckpointError, match="bogus"):
        read_checkpoint(tmp_path / "kw.th")


def test_atomic_write_leaves_no_temporaries_and_keeps_old_file_on_failure(tmp_path: Path):
    m = _trained_like_model()
    path = tmp_path / "m.th"
    save_checkpoint(m, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(m, path, extra={"bad": lambda: 0})  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.th"]


def test_resume_extra_state_and_rng_untouched(tmp_path: Path):
    m = _trained_like_model()
    save_checkpoint(m, tmp_path / "r.th", extra={"iteration": 12, "lrs": [0.01, 0.001]})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    back, extra = resume(tmp_path / "r.th")
    assert torch.equal(torch.rand(3), expected)  # loading does not consume the global RNG
    assert extra == {"iteration": 12, "lrs": [0.01, 0.001]}
    assert EXTRA_KEY in read_checkpoint(tmp_path / "r.th")
    assert torch.equal(_render(back), _render(m))
