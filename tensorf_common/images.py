"""PNG reading and writing helpers (numpy + PIL; never jax or torch).

Readers return uint8 RGBA arrays ``(H, W, 4)`` whatever the stored mode (RGB gets an opaque
alpha channel). Writers write to a temporary file in the destination folder and rename it into
place, so a killed writer never leaves a truncated image behind.
"""

from __future__ import annotations

import os

import numpy as np

from .atomic import atomic_file

_CONVERTIBLE_MODES = {"RGBA", "RGB", "L", "LA", "P", "PA", "RGBa", "La", "CMYK", "YCbCr"}


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only.

    Raises ``OSError`` (or a PIL error, a subclass of it) when the file cannot be read.
    """
    from PIL import Image

    with Image.open(path) as im:
        return int(im.width), int(im.height)


def read_rgba(path: str | os.PathLike) -> np.ndarray:
    """An image as a uint8 ``(H, W, 4)`` RGBA array.

    8-bit modes (RGBA, RGB, greyscale, palette) are converted to RGBA; RGB and greyscale images get
    an opaque alpha. Other modes (16-bit, float) raise ``ValueError``; unreadable or truncated files
    raise ``OSError``.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in _CONVERTIBLE_MODES:
            raise ValueError(f"unsupported image mode {im.mode!r} (need 8-bit RGBA, RGB or greyscale)")
        im.load()
        if im.mode != "RGBA":
            im = im.convert("RGBA")
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 4:  # pragma: no cover - PIL guarantees this for RGBA
        raise ValueError(f"decoded to shape {arr.shape}, expected (H, W, 4)")
    return arr


def write_png(path: str | os.PathLike, image: np.ndarray, compress_level: int = 4) -> None:
    """Write a uint8 ``(H, W, 3)`` or ``(H, W, 4)`` array as a PNG, atomically (temp file + rename)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"write_png: need a uint8 (H, W, 3|4) array, got {arr.dtype} {arr.shape}")
    with atomic_file(path) as fh:
        Image.fromarray(np.ascontiguousarray(arr)).save(fh, format="PNG", compress_level=compress_level)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float values in [0, 1] to uint8 with rounding (values outside are clipped)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def depth_to_u8(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Distance -> 8-bit grey: ``near`` (and closer) white, ``far`` (and beyond) black, linear between."""
    t = np.clip((np.asarray(depth) - near) / max(far - near, 1e-6), 0.0, 1.0)
    return np.round((1.0 - t) * 255.0).astype(np.uint8)


def write_depth_png(path: str | os.PathLike, depth: np.ndarray, near: float, far: float) -> None:
    """A depth map ``(H, W)`` as a grey RGB PNG (:func:`depth_to_u8`), atomically."""
    d8 = depth_to_u8(depth, near, far)
    write_png(path, np.repeat(d8[..., None], 3, axis=-1))
