"""`tensorf-bench convert IN OUT`: convert a TensoRF model between the official ``.th``, the
framework-neutral safetensors + JSON format and JAX ``.npz`` checkpoints (see :mod:`tensorf_convert`).
torch and jax are imported inside ``run()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

Format = Literal["th", "safetensors", "npz"]


@dataclass
class Convert:
    """Convert a TensoRF model file: official .th <-> safetensors + JSON <-> JAX .npz.

    Formats come from the suffixes (.th/.pth, .safetensors, .npz) unless --in-format / --to name
    them. Official files are read safely (no pickled code runs). A .safetensors output gets its JSON
    config beside it (model.safetensors -> model.json). Every tensor is converted bit for bit.
    """

    src: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="IN")]]
    """The model file to read."""
    dst: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """The file to write (refused if it exists, or for a .safetensors output if its .json config
    does, unless --overwrite)."""
    to: Optional[Format] = None
    """Format of OUT; default: from its suffix."""
    in_format: Optional[Format] = None
    """Format of IN; default: from its suffix."""
    overwrite: bool = False
    """Replace OUT (and a .safetensors output's .json config) if they exist."""
    numpy_mask: bool = False
    """.th output: store the packed mask as the official numpy array (default: a uint8 tensor of the same bytes)."""

    def run(self) -> int:
        from tensorf_convert.files import FORMAT_NAMES, config_path, convert_file, format_of

        src_fmt = format_of(self.src, self.in_format)
        dst_fmt = format_of(self.dst, self.to)
        pm = convert_file(
            self.src, self.dst, self.in_format, self.to, overwrite=self.overwrite, numpy_mask=self.numpy_mask
        )
        extra = f" (config {config_path(self.dst).name})" if dst_fmt == "safetensors" else ""
        print(f"{self.src} ({FORMAT_NAMES[src_fmt]}) -> {self.dst} ({FORMAT_NAMES[dst_fmt]}){extra}: {pm.summary()}")
        return 0
