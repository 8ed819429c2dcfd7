"""Import boundaries: tensorf_common never loads jax or torch, nor do the CLI's light modules.

Each check runs in a fresh interpreter, imports the modules one by one and names the first one
after which ``jax`` or ``torch`` (or any of their submodules) appears in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_CHECK = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    FORBIDDEN = ("jax", "jaxlib", "flax", "optax", "torch")

    def heavy():
        return sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)

    names = []
    for pkg_name in sys.argv[1].split(","):
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        if hasattr(pkg, "__path__"):
            names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    result = {"modules": names, "culprit": None, "loaded": []}
    for name in names:
        importlib.import_module(name)
        if heavy():
            result.update(culprit=name, loaded=heavy()[:5])
            break
    print(json.dumps(result))
    """
)


def _run(packages: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, packages],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tensorf_common_imports_neither_jax_nor_torch():
    res = _run("tensorf_common")
    assert "tensorf_common.data" in res["modules"] and "tensorf_common.bounds" in res["modules"]
    assert res["culprit"] is None, f"importing {res['culprit']} loaded {res['loaded']}"


@pytest.mark.parametrize("module", ["tensorf_bench.cli", "tensorf_bench.commands.data"])
def test_cli_modules_import_neither_jax_nor_torch(module):
    res = _run(module)
    assert res["culprit"] is None, f"importing {res['culprit']} loaded {res['loaded']}"


def test_test_module_basenames_unique():
    """pytest's default (prepend) import mode imports test files by basename: two test directories
    holding a ``test_x.py`` each fail collection of the whole suite ("import file mismatch")."""
    import tomllib

    paths = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    seen: dict[str, str] = {}
    clashes = []
    for d in paths:
        for f in sorted((REPO_ROOT / d).glob("*.py")):
            if f.name == "conftest.py":
                continue
            if f.name in seen:
                clashes.append(f"{seen[f.name]} and {d}/{f.name}")
            seen[f.name] = f"{d}/{f.name}"
    assert not clashes, "same module basename in two test directories: " + "; ".join(clashes)
