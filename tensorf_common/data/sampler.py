"""The training-batch sampler: deterministic, resumable random batches of flat ray indices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np


class BatchSampler:
    """Deterministic random batches of flat ray indices (the official ``SimpleSampler``, made
    resumable).

    The pool of indices is shuffled once per epoch with a generator seeded by ``(seed, epoch)``;
    batches are consecutive slices of the concatenated epoch permutations, so every batch has
    exactly ``batch_size`` indices (a batch can straddle two epochs) and every index is drawn once
    per epoch. ``state_dict`` / ``load_state_dict`` restore the position exactly, so a resumed run
    draws bit-identical batches. :meth:`restrict` narrows the pool (ray filtering) and starts a new
    epoch; it is deterministic too, and the restricted pool is part of the state.
    """

    def __init__(self, n_total_or_indices, batch_size: int, seed: int = 0) -> None:
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        if np.ndim(n_total_or_indices) == 0:
            n = int(n_total_or_indices)
            if n <= 0:
                raise ValueError(f"BatchSampler: need at least one index, got n_total={n}")
            self.universe = n
            self._pool: Optional[np.ndarray] = None  # None = arange(universe)
        else:
            idx = np.unique(np.asarray(n_total_or_indices, dtype=np.int64).reshape(-1))
            if idx.size == 0:
                raise ValueError("BatchSampler: the index array is empty")
            if idx[0] < 0:
                raise ValueError("BatchSampler: indices must be non-negative")
            self.universe = int(idx[-1]) + 1
            self._pool = None if idx.size == self.universe else idx.astype(self._index_dtype(self.universe))
        self.epoch = 0
        self.pos = 0
        self._perm: Optional[np.ndarray] = None
        self._perm_epoch = -1

    @property
    def pool_size(self) -> int:
        """Number of indices batches are drawn from."""
        return self.universe if self._pool is None else int(self._pool.size)

    def pool(self) -> np.ndarray:
        """The sorted int64 indices batches are drawn from."""
        return np.arange(self.universe, dtype=np.int64) if self._pool is None else self._pool.astype(np.int64)

    def at(self, positions) -> np.ndarray:
        """The pool's entries at ``positions`` (0 <= p < pool_size), int64, without copying the pool."""
        pos = np.asarray(positions, dtype=np.int64)
        return pos.copy() if self._pool is None else self._pool[pos].astype(np.int64)

    @staticmethod
    def _index_dtype(universe: int):
        """int32 while every index fits (16M rays of a 400x400 x 100-view split: 64 MB less for the
        pool and again for the epoch permutation); batches are int64 either way."""
        return np.int32 if universe < 2**31 else np.int64

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32, self.epoch]))
            perm = rng.permutation(self.pool_size)
            self._perm = perm.astype(self._index_dtype(self.universe)) if self._pool is None else self._pool[perm]
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def next(self) -> np.ndarray:
        """The next batch: ``batch_size`` int64 indices."""
        out = np.empty(self.batch_size, dtype=np.int64)
        filled = 0
        while filled < self.batch_size:
            perm = self._permutation()
            take = min(self.batch_size - filled, perm.size - self.pos)
            out[filled : filled + take] = perm[self.pos : self.pos + take]
            filled += take
            self.pos += take
            if self.pos >= perm.size:
                self.epoch += 1
                self.pos = 0
        return out

    __next__ = next

    def __iter__(self) -> "BatchSampler":
        return self

    def restrict(self, indices) -> int:
        """Draw later batches only from ``indices`` (intersected with the current pool).

        ``indices`` is either an integer array of flat indices, or a boolean array with one entry
        per index of the current pool (in sorted pool order; e.g. a keep-mask over all rays when
        the pool is everything). Starts a new epoch. Returns the new pool size.
        """
        ind = np.asarray(indices)
        keep = np.zeros(self.universe, dtype=bool)
        if ind.dtype == bool:
            ind = ind.reshape(-1)
            if ind.size != self.pool_size:
                raise ValueError(f"restrict: boolean mask has {ind.size} entries, the pool has {self.pool_size}")
            if self._pool is None:
                keep[:] = ind
            else:
                keep[self._pool[ind]] = True
        else:
            ind = ind.astype(np.int64, copy=False).reshape(-1)
            ind = ind[(ind >= 0) & (ind < self.universe)]
            keep[ind] = True
            if self._pool is not None:
                current = np.zeros(self.universe, dtype=bool)
                current[self._pool] = True
                keep &= current
        new_pool = np.flatnonzero(keep).astype(self._index_dtype(self.universe))
        if new_pool.size == 0:
            raise ValueError("restrict: no indices would be left to sample from")
        self._pool = None if new_pool.size == self.universe else new_pool
        self.epoch += 1
        self.pos = 0
        self._perm_epoch = -1
        self._perm = None
        return self.pool_size

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: plain ints and, when restricted, the pool
        as a packed bit mask over ``[0, universe)`` (``pool_bits``, a uint8 numpy array of
        ``ceil(universe / 8)`` bytes; None while unrestricted, so an unrestricted state is
        JSON-serialisable as it is)."""
        state: dict[str, Any] = {
            "version": 1,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "universe": self.universe,
            "epoch": self.epoch,
            "pos": self.pos,
            "pool_size": self.pool_size,
            "pool_bits": None,
        }
        if self._pool is not None:
            mask = np.zeros(self.universe, dtype=bool)
            mask[self._pool] = True
            state["pool_bits"] = np.packbits(mask)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The batch size may differ only if you accept new batches;
        the seed and universe must match what the state was made with."""
        try:
            if int(state["version"]) != 1:
                raise ValueError(f"sampler state: unknown version {state['version']}")
            universe = int(state["universe"])
            bits = state["pool_bits"]
            epoch, pos, pool_size = int(state["epoch"]), int(state["pos"]), int(state["pool_size"])
            self.seed = int(state["seed"])
            self.batch_size = int(state["batch_size"])
        except KeyError as exc:
            raise ValueError(f"sampler state: missing key {exc}") from None
        if bits is None:
            pool = None
        else:
            mask = np.unpackbits(np.asarray(bits, dtype=np.uint8), count=universe).astype(bool)
            pool = np.flatnonzero(mask).astype(self._index_dtype(universe))
            if pool.size == universe:
                pool = None
        size = universe if pool is None else pool.size
        if size != pool_size or not 0 <= pos < max(size, 1):
            raise ValueError(f"sampler state: inconsistent pool size {pool_size} / position {pos}")
        self.universe = universe
        self._pool = pool
        self.epoch, self.pos = epoch, pos
        self._perm, self._perm_epoch = None, -1

    @classmethod
    def restored(cls, state: Mapping[str, Any], n_rays: int) -> "BatchSampler":
        """The sampler of :meth:`state_dict`'s ``state``, drawing from a dataset of ``n_rays`` rays
        (ValueError when the state is damaged or was made for another number of rays)."""
        sampler = cls(n_rays, 1)
        try:
            sampler.load_state_dict(state)
        except TypeError as exc:
            raise ValueError(f"sampler state: {exc}") from None
        if sampler.universe != n_rays:
            raise ValueError(f"the run was trained on {sampler.universe} rays, this dataset has {n_rays}")
        return sampler
