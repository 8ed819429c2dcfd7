"""Where the train step's arrays live: the default device, a one-axis mesh over this process's
devices (``train.devices`` > 1), or a mesh over every process's devices (:mod:`jax_tensorf.distributed`).
Parameters, Adam's state and the field state are replicated; the rays of a batch are split on the
batch axis, each process holding its own rows."""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from tensorf_common.errors import TrainingError

from . import distributed


class Placement:
    def __init__(self, devices: int, batch_size: int):
        self.batch_size = batch_size
        self.mesh = None
        self.procs = distributed.processes()
        """This process's place among several (None: it trains alone)."""
        self.rows: Optional[slice] = None
        """Several processes: this process's rows of each global batch."""
        if self.procs is not None:
            self.mesh = distributed.global_mesh(devices)
            self.rows = distributed.batch_rows(self.mesh, batch_size)
        elif devices > 1:
            from jax.sharding import Mesh

            devs = jax.devices()
            if len(devs) < devices:
                raise TrainingError(
                    f"train.devices: {devices} requested but only {len(devs)} {jax.default_backend()} device(s) are available"
                )
            self.mesh = Mesh(np.array(devs[:devices]), ("data",))

    def local_rows(self, idx: np.ndarray) -> np.ndarray:
        """This process's part of the global batch ``idx`` (all of it when it trains alone)."""
        return idx if self.rows is None else idx[self.rows]

    def put(self, tree, batch: bool = False):
        """``tree`` where the step expects it: replicated, or split on the batch axis (several
        processes: assembled from each process's rows)."""
        if self.mesh is None:
            return tree
        from jax.sharding import NamedSharding, PartitionSpec as P

        sharding = NamedSharding(self.mesh, P("data") if batch else P())
        if self.procs is not None:
            return distributed.to_global(tree, sharding, self.batch_size if batch else None)
        return jax.device_put(tree, sharding)
