"""`tensorf-bench convert` (all formats, one-line errors with exit 2) and `tensorf-bench parity`
(the report from recorded rows; a real run on a few parity tests; a failing run exits non-zero)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorf_bench.cli import main
from tensorf_common.config import FieldConfig, RenderConfig
from torch_reference.checkpoint import save_checkpoint
from torch_reference.model import TensorBase

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def th_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = FieldConfig(density_n_comp=(2, 3, 4), app_n_comp=(3, 4, 5), app_dim=6, feature_c=8, view_pe=2, fea_pe=2, density_shift=-1.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = TensorBase.from_config(cfg, RenderConfig(), [[-1.0] * 3, [1.0] * 3], [8, 7, 6], [0.5, 5.0])
    m.updateAlphaMask([8, 7, 6])
    path = tmp_path_factory.mktemp("cli") / "model.th"
    save_checkpoint(m, path, numpy_mask=True)
    return path


def test_convert_th_safetensors_npz_and_back(th_file: Path, tmp_path: Path, capsys):
    assert main(["convert", str(th_file), str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "(official .th) ->" in out and "(safetensors + JSON) (config m.json)" in out and "grid 8x7x6" in out
    assert (tmp_path / "m.json").is_file()
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "m.npz")]) == 0
    assert main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "back.th"), "--numpy-mask"]) == 0
    assert main(["convert", str(tmp_path / "m.npz"), str(tmp_path / "x.data"), "--to", "safetensors"]) == 0
    from tensorf_convert.files import read_model

    a, b = read_model(th_file), read_model(tmp_path / "back.th")
    assert all(np.array_equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert np.array_equal(a.alpha_mask, b.alpha_mask) and a.kwargs == b.kwargs
    assert read_model(tmp_path / "x.data", "safetensors").kwargs == a.kwargs


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.th", "out.npz"], "missing.th: no such file"),
        (["{th}", "out.bin"], "cannot tell the format from the suffix '.bin'"),
        (["{th}", "{th}"], "the output would overwrite the input"),
        (["{th}", "exists.npz"], "exists.npz: already exists (use --overwrite)"),
        (["junk.th", "out.npz"], "junk.th"),
        (["junk.safetensors", "out.npz"], "not a readable safetensors file"),
        (["{th}", "out.npz", "--to", "pickle"], None),  # tyro refuses the choice (usage error)
    ],
)
def test_convert_bad_input_exits_2_with_one_line(th_file: Path, tmp_path: Path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.th").write_bytes(b"garbage")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    (tmp_path / "exists.npz").write_bytes(b"keep me")
    args = [a.format(th=th_file) for a in args]
    with pytest.raises(SystemExit) if message is None else _no_exit():
        code = main(["convert", *args])
        assert code == 2
    err = capsys.readouterr().err
    if message is not None:
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "out.bin").exists()
    assert (tmp_path / "exists.npz").read_bytes() == b"keep me"


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------- parity


def _rows():
    return [
        {"component": "fields.a", "max_abs": 1e-7, "tolerance": "fp32", "tolerance_doc": "max-abs <= 1e-5", "scaled": 0.01, "passed": True, "test": "t::a", "note": ""},
        {"component": "fields.b", "max_abs": 3e-4, "tolerance": "fp32", "tolerance_doc": "max-abs <= 1e-5", "scaled": 30.0, "passed": False, "test": "t::b", "note": "x|y"},
        {"component": "regularizers.c", "max_abs": None, "tolerance": "fp32", "tolerance_doc": "max-abs <= 1e-5", "scaled": None, "passed": False, "test": "t::gap", "note": ""},
        {"kind": "outcome", "test": "t::a", "outcome": "passed", "xfail": False, "reason": ""},
        {"kind": "outcome", "test": "t::b", "outcome": "failed", "xfail": False, "reason": ""},
        {"kind": "outcome", "test": "t::gap", "outcome": "skipped", "xfail": True, "reason": "twin gap: NaN"},
    ]


def test_parity_report_from_records(tmp_path: Path):
    from tensorf_bench.commands.parity import build_report, render_markdown, write_report

    report = build_report(_rows(), pytest_rc=1, seconds=3.2, command=["pytest"], repo=REPO)
    s = report["summary"]
    assert (s["comparisons"], s["comparisons_passed"], s["comparisons_failed"], s["comparisons_known_gaps"]) == (3, 1, 1, 1)
    assert (s["tests_passed"], s["tests_failed"], s["tests_xfailed"], s["ok"]) == (1, 1, 1, False)
    md = render_markdown(report)
    assert "| `fields.a` | 1.00e-07 | max-abs <= 1e-5 | yes |  |" in md
    assert "| `fields.b` | 3.00e-04 | max-abs <= 1e-5 | **NO** | x\\|y |" in md
    assert "| `regularizers.c` | inf | max-abs <= 1e-5 | known gap (xfail) |" in md
    assert "| fields | fp32 | 2 | 3.00e-04 | 30.000 | **NO** |" in md and "| regularizers | fp32 | 1 (1 known gap) | 0 | 0.000 | yes |" in md
    assert "twin gap: NaN" in md and "## Failed tests" in md and "**FAIL**" in md
    md_path, js_path = write_report(report, tmp_path / "rep")
    assert json.loads(js_path.read_text())["summary"]["comparisons"] == 3 and md_path.read_text() == md
    ok = build_report(_rows()[:1] + _rows()[3:4], pytest_rc=0, seconds=1.0, command=["pytest"], repo=REPO)
    assert ok["summary"]["ok"] and "**PASS**" in render_markdown(ok)


def test_parity_runs_the_suite_and_writes_the_table(tmp_path: Path, capsys):
    code = main(["parity", "--out", str(tmp_path), "-k", "feature2density or ortho_loss_single", "--quiet"])
    assert code == 0, capsys.readouterr()
    report = json.loads((tmp_path / "parity.json").read_text())
    components = [c["component"] for c in report["comparisons"]]
    assert components == ["fields.feature2density[softplus]", "fields.feature2density[relu]", "regularizers.ortho_loss[one component]"]
    assert report["summary"]["tests_passed"] == 3 and report["summary"]["ok"]
    md = (tmp_path / "parity.md").read_text()
    assert "| component | max-abs error | tolerance | pass | note |" in md and "`fields.feature2density[relu]` | 0 |" in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".parity-records")]


def test_parity_fails_when_a_comparison_fails(tmp_path: Path, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text((REPO / "parity_tests" / "conftest.py").read_text())
    (suite / "compare.py").write_text((REPO / "parity_tests" / "compare.py").read_text())
    (suite / "test_broken.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from compare import assert_close

            def test_off_by_a_bit():
                assert_close("broken.thing", np.float32([1.0, 2.0]), np.float32([1.0, 2.001]))
            """
        )
    )
    code = main(["parity", "--out", str(tmp_path / "rep"), "--tests", str(suite), "--quiet"])
    assert code == 1
    report = json.loads((tmp_path / "rep" / "parity.json").read_text())
    (row,) = report["comparisons"]
    assert row["component"] == "broken.thing" and not row["passed"] and row["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert "broken.thing" in (tmp_path / "rep" / "parity.md").read_text()
    assert main(["parity", "--tests", str(tmp_path / "nowhere")]) == 2
    assert "no parity test folder" in capsys.readouterr().err


def test_converter_and_commands_import_no_framework():
    """tensorf_convert and the convert / parity commands import jax, torch and safetensors lazily."""
    import subprocess
    import sys

    code = (
        "import sys, tensorf_convert, tensorf_convert.state_dict, tensorf_convert.model, tensorf_convert.files, "
        "tensorf_bench.commands.convert, tensorf_bench.commands.parity\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch', 'safetensors')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_safetensors_output_does_not_replace_its_json_without_overwrite(th_file: Path, tmp_path: Path, capsys):
    """The config written beside OUT (m.safetensors -> m.json) was replaced without --overwrite."""
    (tmp_path / "m.json").write_text("my notes")
    assert main(["convert", str(th_file), str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'm.json'}: already exists (the JSON config written beside m.safetensors) (use --overwrite)"
    assert (tmp_path / "m.json").read_text() == "my notes" and not (tmp_path / "m.safetensors").exists()
    assert main(["convert", str(th_file), str(tmp_path / "m.safetensors"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["model_name"] == "TensorVMSplit"
    assert main(["convert", str(th_file), str(tmp_path / "c.json"), "--to", "safetensors"]) == 2
    assert "would be the output itself" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def _legacy(th_file: Path, path: Path) -> Path:
    ckpt = torch.load(th_file, weights_only=False)
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize(
    "damage,message",
    [
        ("zip cut in half", "truncated or damaged: not a complete zip archive"),
        ("zip cut at the end", "truncated or damaged: not a complete zip archive"),
        ("zip member flipped", "damaged: archive member"),
        ("legacy cut in its pickles", "truncated or damaged: the legacy torch file's pickled part breaks off"),
        ("plain pickle", "not a torch checkpoint: neither a zip archive nor a legacy torch file"),
        ("empty", "empty file (0 bytes)"),
    ],
)
def test_a_damaged_th_file_is_named_for_what_it_is(damage, message, th_file: Path, tmp_path: Path, capsys):
    """It said `OSError: [Errno 22] Invalid argument` (a truncated file), `EOFError: ` (an empty one)
    or named a refused global "(unknown; see torch.load's message)" (a plain pickle, a cut legacy file)."""
    import pickle
    import struct

    data = th_file.read_bytes()
    bad = tmp_path / "bad.th"
    if damage == "zip cut in half":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "zip cut at the end":
        bad.write_bytes(data[:-40])
    elif damage == "zip member flipped":
        import zipfile

        with zipfile.ZipFile(th_file) as z:  # flip a byte inside the first stored tensor's data
            info = next(i for i in z.infolist() if "/data/" in i.filename)
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        bad.write_bytes(bytes(damaged))
    elif damage == "legacy cut in its pickles":
        bad.write_bytes(_legacy(th_file, tmp_path / "legacy.th").read_bytes()[:200])
    elif damage == "plain pickle":
        bad.write_bytes(pickle.dumps({"state_dict": {}}))
    else:
        bad.write_bytes(b"")
    assert main(["convert", str(bad), str(tmp_path / "out.npz")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: ") and message in err[0], err
    assert not (tmp_path / "out.npz").exists()


def test_a_whole_legacy_th_file_still_converts(th_file: Path, tmp_path: Path):
    legacy = _legacy(th_file, tmp_path / "legacy.th")
    assert main(["convert", str(legacy), str(tmp_path / "out.npz")]) == 0
