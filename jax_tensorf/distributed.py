"""Training on several processes (hosts) through JAX's own distributed runtime.

:func:`initialize` connects this process to the others with ``jax.distributed.initialize``
(coordinator address, process count and id from the arguments, or detected by JAX from SLURM,
Open MPI or a cloud TPU environment) before any backend exists; on CPU the collectives between
processes run on gloo. JAX's runtime ends a process that cannot connect with a fatal log (an abort,
not an exception, after its own timeout), so the arguments are checked first and a watchdog turns a
connection that does not complete within ``timeout`` into one line on stderr and exit status 2.

After that the trainer is SPMD: every process runs the same schedule and draws the same global
batches, and feeds only its own rows (:func:`batch_rows`) into the global arrays
(:func:`to_global`). What the processes must agree on but cannot compute identically (the clock of
a time budget, whether a checkpoint exists, an error on one host) goes through the runtime's
key-value store (:meth:`Processes.from_leader`, :meth:`Processes.all_values`, :func:`together`).
Only process 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np

from tensorf_common.config import ConfigError
from tensorf_common.errors import USER_ERRORS, TrainingError

PEER_TIMEOUT_S = 1800.0
"""How long a process waits for the others at an agreement point (set-up, compilation and
checkpoint writes of the others happen in between). A process that dies is reported sooner by
JAX's runtime (its heartbeats stop)."""

_KEY_PREFIX = "tensorf_bench"
_sequence = itertools.count()
"""Every process makes the same agreements in the same order, so a counter names them."""


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a distributed run."""

    index: int
    """``jax.process_index()``: 0 is the one that writes files."""
    count: int
    """``jax.process_count()``."""

    @property
    def is_writer(self) -> bool:
        return self.index == 0

    def _publish(self, value: str) -> int:
        n = next(_sequence)
        _client().key_value_set(f"{_KEY_PREFIX}/{n}/{self.index}", value)
        return n

    def _read(self, n: int, index: int, timeout: float, what: str) -> str:
        try:
            return _client().blocking_key_value_get(f"{_KEY_PREFIX}/{n}/{index}", int(timeout * 1000))
        except Exception as exc:  # the runtime raises its own error type on a deadline
            raise TrainingError(
                f"process {index} did not reach {what} within {timeout:.0f} s ({str(exc).splitlines()[0]})"
            ) from None

    def all_values(self, value: str, what: str, timeout: float = PEER_TIMEOUT_S) -> list[str]:
        """Every process's ``value`` (a string), by process index; every process must call it."""
        n = self._publish(value)
        return [value if i == self.index else self._read(n, i, timeout, what) for i in range(self.count)]

    def barrier(self, what: str, timeout: float = PEER_TIMEOUT_S) -> None:
        """Wait until every process got here. Needed before a collective that follows work of
        uneven length (a compilation, process 0's checkpoint write): gloo gives up on a collective
        whose peers are more than 30 s apart."""
        self.all_values("", what, timeout)

    def from_leader(self, values: Sequence[float], timeout: float = PEER_TIMEOUT_S) -> tuple[float, ...]:
        """Process 0's ``values`` on every process (process 0 does not wait)."""
        if self.is_writer:
            self._publish(json.dumps([float(v) for v in values]))
            return tuple(float(v) for v in values)
        n = next(_sequence)
        return tuple(json.loads(self._read(n, 0, timeout, "the clock agreement")))


def _client():
    """The distributed runtime's client (its key-value store). JAX keeps it in ``global_state``;
    no public accessor exists in jax 0.10-0.11."""
    from jax._src import distributed as jd

    client = getattr(getattr(jd, "global_state", None), "client", None)
    if client is None:
        raise TrainingError(
            "several JAX processes but no distributed client: call jax_tensorf.distributed.initialize "
            "(tensorf-bench train --distributed) before anything else uses JAX"
        )
    return client


def processes() -> Optional[Processes]:
    """This process's place in a multi-process run, or None when it runs alone (creates JAX's
    backend if it does not exist yet)."""
    if jax.process_count() == 1:
        return None
    return Processes(jax.process_index(), jax.process_count())


@contextlib.contextmanager
def together(procs: Optional[Processes], what: str, timeout: float = PEER_TIMEOUT_S) -> Iterator[None]:
    """Run a block on every process; if it raises a user error (a missing file, a bad option) on
    one of them, every process raises (the others a :class:`TrainingError` naming that process and
    its message), instead of the others waiting for it in the next collective. The block must not
    make agreements of its own."""
    if procs is None:
        yield
        return
    try:
        yield
    except USER_ERRORS as exc:
        procs._publish(f"{exc}")
        raise
    outcomes = procs.all_values("", what, timeout)
    for i, message in enumerate(outcomes):
        if message:
            raise TrainingError(f"process {i} failed in {what}: {message}")


# ---------------------------------------------------------------------------------------------
# Connecting
# ---------------------------------------------------------------------------------------------


def _check_arguments(coordinator: Optional[str], num_processes: Optional[int], process_id: Optional[int]) -> None:
    """What can be checked before JAX's runtime is asked (it aborts the process on a bad address or
    a port in use instead of raising)."""
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes: must be >= 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise ConfigError(f"--process-id: must be >= 0, got {process_id}")
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise ConfigError(f"--process-id: {process_id} is not below --num-processes {num_processes}")
    if coordinator is None:
        return
    host, sep, port = coordinator.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator: expected HOST:PORT, got {coordinator!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--coordinator: cannot resolve host {host!r} ({exc.strerror})") from None
    if process_id != 0:
        return
    # process 0 runs the coordinator: the address must be one of this machine's, the port free
    local = False
    for family, _, _, _, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr[0], 0))
            local = True
    if not local:
        raise ConfigError(
            f"--coordinator: {host} is not an address of this machine; process 0 runs the coordinator, "
            "so give its own address (the others connect to it)"
        )
    for family, bind in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):  # JAX binds [::]:PORT
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((bind, int(port)))
            except OSError as exc:
                raise ConfigError(f"--coordinator: port {port} is not free on this machine ({exc.strerror})") from None
        break


def _give_up(message: str) -> None:
    """The watchdog's end: JAX's runtime cannot be interrupted while it waits for its peers."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def initialize(
    coordinator: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    timeout: float = 120.0,
) -> Processes:
    """Join the distributed run (``jax.distributed.initialize``) and return this process's place.

    Arguments left None are detected by JAX from the environment (SLURM, Open MPI, cloud TPU);
    without any of those the coordinator, count and id must be given. Must run before anything
    creates JAX's backend. Checks that every process was started with the same process count, and
    creates the backend (every process's devices) before returning.

    Bad arguments raise :class:`ConfigError`. If the processes have not all connected within
    ``timeout`` seconds (a wrong coordinator address, a process missing, a port blocked), the
    process writes one ``error:`` line to stderr and exits with status 2: JAX's runtime would
    otherwise wait for its own timeout and then abort the process.
    """
    from jax._src import distributed as jd
    from jax._src import xla_bridge

    from .xla import prefer_synchronous_cpu_dispatch

    if getattr(jd.global_state, "client", None) is not None:
        return Processes(jax.process_index(), jax.process_count())
    if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
        raise ConfigError("--distributed: JAX's backend already exists in this process; join the run before using JAX")
    if not timeout > 0:
        raise ConfigError(f"--connect-timeout: must be positive, got {timeout}")
    _check_arguments(coordinator, num_processes, process_id)
    if "jax_cpu_collectives_implementation" in jax.config.values:  # cross-process collectives on CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    prefer_synchronous_cpu_dispatch()  # before the backend exists (jax_tensorf.xla)
    where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or "the detected coordinator"
    watchdog = threading.Timer(
        timeout,
        _give_up,
        args=(
            f"--distributed: the processes did not all connect through {where} within {timeout:.0f} s "
            "(is process 0 running and reachable from this host, and was every process given the same "
            "--coordinator and --num-processes?)",
        ),
    )
    watchdog.daemon = True
    t0 = time.monotonic()
    watchdog.start()
    try:
        try:
            # JAX's own deadline comes after the watchdog's: its expiry aborts the process
            jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=int(timeout) + 60)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. nothing given and nothing detected
            raise ConfigError(
                f"--distributed: {exc} (give --coordinator HOST:PORT, --num-processes N and --process-id I, or "
                "run under SLURM, Open MPI or on a cloud TPU, where JAX detects them)"
            ) from None
        me = Processes(int(jd.global_state.process_id), int(jd.global_state.num_processes))
        _check_counts(me, max(1.0, timeout - (time.monotonic() - t0)))
        jax.devices()  # the backend: every process's devices (a topology exchange between them)
    finally:
        watchdog.cancel()
    return Processes(jax.process_index(), jax.process_count())


def _check_counts(me: Processes, timeout: float) -> None:
    """Every process must have been started with process 0's count (JAX's runtime takes the
    coordinator's and would leave a process that expects more waiting for the topology)."""
    n = me._publish(str(me.count))
    for i in range(me.count):
        if i == me.index:
            continue
        theirs = int(me._read(n, i, timeout, "the process-count check"))
        if theirs != me.count:
            raise ConfigError(
                f"--num-processes: this process (id {me.index}) was started with {me.count} processes, "
                f"process {i} with {theirs}"
            )


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------


def global_mesh(n_devices: int):
    """A one-axis mesh over every process's devices, ordered by process, so that each process's
    rows of a batch are one contiguous block (and the ray order equals one process with all the
    devices). ``n_devices`` must be the global device count."""
    from jax.sharding import Mesh

    devs = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if n_devices != len(devs):
        raise TrainingError(
            f"train.devices: {n_devices}, but the {jax.process_count()} processes have {len(devs)} "
            f"{jax.default_backend()} device(s) in all; a multi-process run trains on every device "
            f"(train.devices {len(devs)})"
        )
    return Mesh(np.array(devs), ("data",))


def batch_rows(mesh, batch_size: int) -> slice:
    """This process's rows of a global batch split on ``mesh``'s axis."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    index = NamedSharding(mesh, P(mesh.axis_names[0])).addressable_devices_indices_map((batch_size,))
    starts = sorted(s[0].start or 0 for s in index.values())
    stops = sorted(batch_size if s[0].stop is None else s[0].stop for s in index.values())
    if stops[-1] - starts[0] != sum(b - a for a, b in zip(starts, stops)):
        raise TrainingError("this process's devices hold no contiguous block of the batch")
    return slice(starts[0], stops[-1])


def to_global(tree: Any, sharding, batch_size: Optional[int] = None) -> Any:
    """Arrays as global arrays on ``sharding``: replicated ones (``batch_size`` None) from the same
    value on every process, batch-split ones from this process's rows (:func:`batch_rows`) of a
    ``batch_size`` batch. Arrays already there are kept (no copy, no collective)."""

    def leaf(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x)
        shape = x.shape if batch_size is None else (batch_size,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(leaf, tree)


def to_local(tree: Any) -> Any:
    """Replicated global arrays as arrays of this process alone (its default device)."""
    import jax.numpy as jnp

    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)


def local_mesh():
    """A one-axis mesh over this process's own devices, or None when it has one."""
    from jax.sharding import Mesh

    devs = jax.local_devices()
    return Mesh(np.array(devs), ("data",)) if len(devs) > 1 else None
