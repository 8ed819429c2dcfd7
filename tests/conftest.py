"""Shared test fixtures.

* ``repo_root``: the project's root folder.
* ``shared_data``: ``../shared/data`` relative to the repo root (skips when absent).
* ``lego_dir``: ``shared_data / "nerf_synthetic_half/lego"`` (400x400 RGBA; skips when absent).
* ``lego_small``: lego loaded at 100x100 (downsample 4, area-averaged): the first 10 train views
  and the first 2 test views (skips when absent).
* ``small_scene``: a session-wide procedural scene (32x32, 8 train / 4 val / 4 test views, seed 0)
  rendered once into a temporary folder; ``small_dataset`` is it loaded (train, val, test).
* ``sigint_default``: SIGINT raises KeyboardInterrupt during the test and takes its default action
  in the processes the test starts, also when pytest itself ignores it (started with ``&``).

Use these instead of rendering or loading your own data, to keep the suite CPU-sized.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SMALL_SCENE = {"width": 32, "height": 32, "n_train": 8, "n_val": 4, "n_test": 4, "seed": 0}
"""Options of the ``small_scene`` fixture (passed to ``tensorf_common.scene.make_scene``)."""


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (``../shared/data``); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lego_dir(shared_data: Path) -> Path:
    """The real NeRF-Synthetic lego scene at 400x400 (skipped when absent)."""
    p = shared_data / "nerf_synthetic_half" / "lego"
    if not (p / "transforms_train.json").is_file():
        pytest.skip(f"lego dataset {p} is absent")
    return p


@pytest.fixture(scope="session")
def lego_small(lego_dir: Path):
    """Lego at 100x100 (downsample 4): train views 0-9 and test views 0-1 (a BlenderDataset)."""
    from tensorf_common.data.blender import load_blender

    return load_blender(lego_dir, splits=("train", "test"), downsample=4, max_views={"train": 10, "test": 2})


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small procedural Blender-format scene (see ``SMALL_SCENE``), rendered once per session."""
    from tensorf_common.scene import make_scene

    return make_scene(tmp_path_factory.mktemp("procedural") / "scene", **SMALL_SCENE)


@pytest.fixture(scope="session")
def small_dataset(small_scene: Path):
    """``small_scene`` loaded with ``tensorf_common.data.load_blender`` (train, val and test)."""
    from tensorf_common.data.blender import load_blender

    return load_blender(small_scene, splits=("train", "val", "test"))


@pytest.fixture
def sigint_default():
    """Python's default SIGINT handler for the test. A test run started in the background by a
    non-interactive shell (``make test &``) ignores SIGINT, and so would the code under test and
    every child process (exec keeps an ignored signal ignored; a handled one becomes the default)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
