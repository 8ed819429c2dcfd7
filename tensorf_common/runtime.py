"""Process set-up shared by every entry point: the memory allocator.

On the suite's reference machines (small VMs) the time XLA and torch spend on CPU is often dominated
not by arithmetic but by page faults: both allocate large temporary buffers for every step, glibc
hands buffers above 32 MiB straight back to the kernel, and each new 4 KiB page then costs a fault
(measured: DEVELOPERS.md, "Process set-up").

So, like the PyTorch CPU tuning guides recommend for jemalloc/tcmalloc, commands run under
mimalloc (shipped as a wheel, ``cmeel-mimalloc``) when it is installed, for *both* frameworks
alike. ``TENSORF_BENCH_ALLOCATOR=system`` turns it off; reports record which allocator ran.
The allocator must be loaded before the process starts, so entry points re-execute themselves once
with ``LD_PRELOAD`` set (:func:`reexec_with_allocator`).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Mapping, Optional, Sequence

ENV_CHOICE = "TENSORF_BENCH_ALLOCATOR"
"""``mimalloc`` (default when available) or ``system``."""
_MARK = "TENSORF_BENCH_ALLOCATOR_SET"


def mimalloc_path() -> Optional[str]:
    """The mimalloc shared library installed by ``cmeel-mimalloc``, or None."""
    if not sys.platform.startswith("linux"):
        return None
    seen = set()
    for key in ("platlib", "purelib"):
        base = sysconfig.get_paths().get(key)
        if not base or base in seen:
            continue
        seen.add(base)
        for name in ("libmimalloc.so.3", "libmimalloc.so"):
            p = Path(base) / "cmeel.prefix" / "lib" / name
            if p.is_file():
                return str(p)
    return None


def allocator_env(env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) that preloads mimalloc, unless the user chose the
    system allocator or mimalloc is not installed."""
    out = dict(os.environ if env is None else env)
    if out.get(ENV_CHOICE, "mimalloc").lower() in ("system", "off", "none", "glibc"):
        return out
    lib = mimalloc_path()
    if lib is None or lib in out.get("LD_PRELOAD", ""):
        return out
    out["LD_PRELOAD"] = lib + (":" + out["LD_PRELOAD"] if out.get("LD_PRELOAD") else "")
    out.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "1")
    out[_MARK] = "1"
    return out


def active_allocator() -> str:
    """``mimalloc`` when it is loaded into this process, else ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image, in bytes.

    Reads ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` carries the high-water
    mark of the image before ``exec`` (a process forked from a large one, or re-executed with the
    allocator, reports its parent's peak). Falls back to ``ru_maxrss`` where /proc is absent.
    """
    peak = _proc_kib("/proc/self/status", "VmHWM:")
    if peak is not None:
        return peak * 1024
    import resource

    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss if sys.platform == "darwin" else rss * 1024


def available_memory_bytes() -> int:
    """Bytes of RAM the kernel reports as available (``MemAvailable`` in ``/proc/meminfo``; free
    physical pages where that is absent)."""
    avail = _proc_kib("/proc/meminfo", "MemAvailable:")
    if avail is not None:
        return avail * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def _proc_kib(path: str, key: str) -> Optional[int]:
    """The kiB figure of the line starting with ``key`` in a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (mimalloc's ``mi_collect``, else glibc's
    ``malloc_trim``). Both allocators keep freed pages for reuse, which after a large one-off (an
    XLA compilation, the ray filter over every training ray) stay resident. Called at
    schedule events, never per step. A no-op where neither symbol exists."""
    import ctypes

    try:
        lib = ctypes.CDLL(None)
    except OSError:  # pragma: no cover
        return
    if hasattr(lib, "mi_collect"):
        lib.mi_collect(ctypes.c_bool(True))
    elif hasattr(lib, "malloc_trim"):
        lib.malloc_trim(ctypes.c_size_t(0))


def reexec_with_allocator(argv: Sequence[str]) -> None:
    """Replace this process with itself under mimalloc (once); returns if nothing needs doing.

    ``argv`` is the full command line to run again (``[sys.executable, "-m", ...]``)."""
    if os.environ.get(_MARK) or active_allocator() == "mimalloc":
        return
    env = allocator_env()
    if env.get(_MARK) != "1":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], list(argv), env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tensorf_common.runtime CMD [ARGS...]``: run a command under the allocator."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m tensorf_common.runtime CMD [ARGS...]", file=sys.stderr)
        return 2
    env = allocator_env()
    os.execvpe(args[0], args, env)
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
