"""What is wrong with a torch checkpoint file, found from its structure (without torch and without
unpickling anything), for the cases where ``torch.load`` explains itself badly: an empty file
(``EOFError``), a truncated zip archive (``OSError: [Errno 22] Invalid argument``), a pickle that is
not a torch file at all, a legacy file cut inside its pickled part.

``torch.save`` writes a zip archive (torch >= 1.6) or, with ``_use_new_zipfile_serialization=False``,
the legacy format: pickles of a magic number, the protocol version, system information, the object
and its storage keys, then the raw storages.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path
from typing import BinaryIO, Union

from .errors import CheckpointError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first pickle of a legacy torch file holds this integer."""
LEGACY_PICKLES = 5
"""Pickles before the raw storages of a legacy file: magic, protocol, system info, object, storage keys."""


def _skip_pickle(f: BinaryIO):
    """Read one pickle's opcodes (none is executed); returns the argument of its last non-STOP opcode."""
    arg = None
    for op, value, _ in pickletools.genops(f):
        if op.name != "STOP":
            arg = value
    return arg


def check_torch_file(path: Union[str, os.PathLike]) -> None:
    """Raise :class:`CheckpointError` (one line naming the file) when ``path`` is empty, a truncated
    or damaged zip archive, not a torch file, or a legacy file whose pickled part is cut short.
    Passing says nothing about the content: ``torch.load`` still checks that."""
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{p}: empty file (0 bytes), not a checkpoint")
    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{p}: truncated or damaged: not a complete zip archive, the format torch.save writes ({exc})"
            ) from None
        if bad is not None:
            raise CheckpointError(f"{p}: damaged: archive member {bad!r} fails its CRC check")
        return
    with open(p, "rb") as f:
        try:
            magic = _skip_pickle(f)
        except Exception:  # noqa: BLE001 - not even one well-formed pickle
            magic = None
        if magic != LEGACY_MAGIC:
            raise CheckpointError(
                f"{p}: not a torch checkpoint: neither a zip archive nor a legacy torch file (no torch magic number)"
            )
        for _ in range(LEGACY_PICKLES - 1):
            try:
                _skip_pickle(f)
            except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError at the end of the data
                raise CheckpointError(
                    f"{p}: truncated or damaged: the legacy torch file's pickled part breaks off at byte "
                    f"{f.tell()} of {size} ({exc})"
                ) from None


__all__ = ["LEGACY_MAGIC", "check_torch_file"]
