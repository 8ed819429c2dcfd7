#!/usr/bin/env python3
"""Where the train step's backward spends its time on a GPU (issue 17), in one rerunnable command.

    python tools/gpu_lookup_profile.py OUT_DIR [--size gpu] [--cases flat:fp32,vjp:bf16,...]

For every case (lookup variant : precision) it compiles the project's real train step at the size's
framework shapes (the cpu preset, appearance on every sample), with XLA dumping the optimized HLO
(and, on a GPU, the PTX) of every module it compiles, and then

- lists the scatter fusions of the optimized train step (dtype, shapes, window dimensions) and, from
  the PTX, whether each uses native float atomic adds (``atom``/``red`` ``.add.f32``), 16-bit ones,
  or compare-and-swap loops (``atom.cas``);
- times steps (median) and profiles a few (``jax.profiler``): the device time per XLA op and per
  kernel, and the scatter fusions' share of it;

then times every lookup variant's plane and line lookup, forward and forward+backward
(``benchmarks/bench_workloads.lookup_function``). Output, small enough to bring back from a lent
machine: ``OUT_DIR/lookup_profile.json`` (everything), ``OUT_DIR/lookup_profile.md`` (tables for a
report's NOTES.md) and ``OUT_DIR/dumps.tgz`` (the optimized HLO and PTX of the train steps of the
first ``--keep-dumps`` cases, left out when larger than ``--max-dump-mib``).

``XLA_FLAGS`` (``--xla_dump_to``...) is set here, in this process's environment, before JAX is
imported; flags already in ``XLA_FLAGS`` are kept. On a CPU the same runs at ``--size smoke`` in a
minute (no PTX there), which is how it is tested.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import json
import os
import platform
import re
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "flat:fp32,flat:bf16-grid,vjp:fp32,flat:bf16,vjp:bf16,vjp:bf16-grid,gather:fp32,sorted:fp32,pallas:fp32,pallas:bf16"
LOOKUP_KINDS = ("plane", "line")
LOOKUP_MODES = ("forward", "forward+backward")

# ---------------------------------------------------------------------------------------------
# Reading XLA's dumps (pure functions of text; tested on the CPU with GPU-shaped snippets)
# ---------------------------------------------------------------------------------------------

_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?)\s+([\w\-]+)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_KIND = re.compile(r"kind=(\w+)")
_ATTR = re.compile(r"(update_window_dims|inserted_window_dims|scatter_dims_to_operand_dims|input_batching_dims)=\{([\d,]*)\}")
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_PARAM = re.compile(r"%?([\w.\-]+):\s*([a-z]+\d*\[[\d,]*\])")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _element_type(type_text: str) -> str:
    m = _SHAPE.search(type_text)
    return m.group(1) if m else type_text


def scatter_fusions(hlo_text: str) -> list[dict]:
    """The scatters of an optimized HLO module, each with the fusion that runs it (or itself when
    unfused): ``{"name", "fusion_kind", "computation", "dtype", "shape", "operands": [shapes],
    "update_window_dims"...}``. A scatter whose update window dimensions come before its indexed
    (inserted) dimensions writes strided memory; one whose window is the trailing axis writes
    contiguous rows."""
    comps: dict[str, list[tuple[str, str, str, str]]] = {}
    types: dict[str, dict[str, str]] = {}  # per computation: value name -> its shape
    current = None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(1)
                comps[current] = []
                types[current] = dict(_PARAM.findall(line.split("->")[0]))
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            comps[current].append(m.groups())
            types[current][m.group(1)] = m.group(2).split("{")[0]
    scatters_in = {}
    for comp, instrs in comps.items():
        found = []
        for name, type_text, op, rest in instrs:
            if op == "scatter":
                operands = [o.strip().split()[-1].lstrip("%") for o in rest.split(")")[0].split(",") if o.strip()]
                op_name = _OP_NAME.search(rest)
                info = {"scatter": name, "dtype": _element_type(type_text), "shape": type_text.split("{")[0],
                        "operands": [types[comp].get(o, o) for o in operands],
                        "op_name": op_name.group(1) if op_name else None}
                info.update({k: [int(x) for x in v.split(",") if x] for k, v in _ATTR.findall(rest)})
                found.append(info)
        if found:
            scatters_in[comp] = found
    out = []
    fused = set()
    for comp, instrs in comps.items():
        for name, type_text, op, rest in instrs:
            called = _CALLS.search(rest)
            if op == "fusion" and called and called.group(1) in scatters_in:
                fused.add(called.group(1))
                kind = _KIND.search(rest)
                for info in scatters_in[called.group(1)]:
                    out.append({"name": name, "fusion_kind": kind.group(1) if kind else None, "computation": comp, **info})
    for comp, found in scatters_in.items():
        if comp not in fused:  # scatters left unfused (or in a computation called some other way)
            out.extend({"name": info["scatter"], "fusion_kind": None, "computation": comp, **info} for info in found)
    return out


_ENTRY = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+([\w$]+)\s*\(")
_ATOMIC = re.compile(r"^\s*(?:@!?%\w+\s+)?((?:atom|red)\.[\w.:]+)")


def ptx_atomics(ptx_text: str) -> dict[str, dict[str, int]]:
    """Atomic instructions per PTX kernel: ``{kernel: {opcode: count}}`` (e.g. ``red.global.add.f32``,
    ``atom.global.cas.b32``)."""
    out: dict[str, collections.Counter] = {}
    entry = None
    for line in ptx_text.splitlines():
        m = _ENTRY.match(line)
        if m:
            entry = m.group(1)
            out.setdefault(entry, collections.Counter())
            continue
        if entry is not None:
            a = _ATOMIC.match(line)
            if a:
                out[entry][a.group(1)] += 1
    return {k: dict(v) for k, v in out.items()}


def atomic_kind(opcodes: dict[str, int]) -> str:
    """How a kernel's atomics add: ``cas-loop``, ``native-16bit``, ``native-f32``, ``none``, or a mix
    joined by ``+``."""
    kinds = []
    if any(".cas" in op for op in opcodes):
        kinds.append("cas-loop")
    if any(re.search(r"\.add(\.noftz)?\.(bf16|f16)", op) for op in opcodes):
        kinds.append("native-16bit")
    if any(re.search(r"\.add\.f32", op) for op in opcodes):
        kinds.append("native-f32")
    return "+".join(kinds) or "none"


def _kernel_key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name)


def attach_atomics(fusions: list[dict], atomics: dict[str, dict[str, int]]) -> None:
    """Add each scatter fusion's PTX kernel atomics (kernel names are the fusion names with '.' and
    '-' as '_'; a fusion split into several kernels counts them all)."""
    for f in fusions:
        key = _kernel_key(f["name"])
        ops: collections.Counter = collections.Counter()
        kernels = [k for k in atomics if k == key or k.startswith(key + "_")]
        for k in kernels:
            ops.update(atomics[k])
        f["ptx_kernels"] = kernels
        f["atomics"] = dict(ops)
        f["atomic_kind"] = atomic_kind(ops) if kernels else None


def profile_times(xplane_path: Path, steps: int) -> dict:
    """Time per XLA op and per kernel, summed over a trace of ``steps`` steps and divided by it:
    ``{"source", "ops": {hlo op: ms per step}, "kernels": {name: ms per step}}``. On a GPU the
    events are the kernels of the device plane's stream lines, on a CPU the thunks the client's
    threads run; both carry the XLA op they belong to in an ``hlo_op`` statistic."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(xplane_path))
    gpu = [p for p in data.planes if p.name.startswith("/device:GPU")]
    planes, prefix = (gpu, "Stream") if gpu else ([p for p in data.planes if p.name == "/host:CPU"], "tf_XLA")
    ops: collections.Counter = collections.Counter()
    kernels: collections.Counter = collections.Counter()
    for plane in planes:
        for line in plane.lines:
            if not line.name.startswith(prefix):
                continue
            for ev in line.events:
                op = dict(ev.stats).get("hlo_op")
                if op:
                    ops[str(op)] += ev.duration_ns
                    if gpu:
                        kernels[ev.name] += ev.duration_ns
    per_step = lambda c: {k: round(v / 1e6 / steps, 4) for k, v in c.most_common()}  # noqa: E731
    source = ", ".join(p.name for p in planes) + f" ({prefix} lines)"
    return {"source": source, "ops": per_step(ops), "kernels": per_step(kernels)}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _set_xla_dump_flags(dump_dir: Path) -> str:
    if "jax" in sys.modules:
        raise RuntimeError("XLA_FLAGS must be set before JAX is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    extra = f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
    os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
    return os.environ["XLA_FLAGS"]


def _median_ms(fn, rounds: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 4)


def _new_files(dump_dir: Path, before: set) -> list[Path]:
    return sorted(p for p in dump_dir.iterdir() if p.name not in before)


def _step_module_files(files: list[Path]) -> list[Path]:
    """The dump files of the train step's module (the largest after-optimizations module among
    the new files, and every file of that module)."""
    after = [p for p in files if p.name.endswith("after_optimizations.txt")]
    if not after:
        return []
    main = max(after, key=lambda p: p.stat().st_size)
    prefix = main.name.split(".")[0]  # module_0123
    return [p for p in files if p.name.split(".")[0] == prefix]


def run_case(W, size, variant: str, precision: str, dump_dir: Path, steps: int, profile_steps: int) -> dict:
    import dataclasses

    import jax

    cfg = W.experiment(size, "all")
    cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, vmap_variant=variant))
    before = {p.name for p in dump_dir.iterdir()}
    c = W.compile_train_step(cfg, W.grid3(size), size.rays, precision, size=size)
    files = _step_module_files(_new_files(dump_dir, before))
    step = W.train_loop(c)
    step_ms = _median_ms(step, steps)
    case = {"variant": variant, "precision": precision, "rays": size.rays, **c.extra_info(), "step_ms": step_ms,
            "module_files": [p.name for p in files]}
    hlo = next((p for p in files if p.name.endswith("after_optimizations.txt")), None)
    fusions = scatter_fusions(hlo.read_text()) if hlo else []
    ptx = [p for p in files if p.suffix == ".ptx"]
    if ptx:
        atomics: dict = {}
        for p in ptx:
            atomics.update(ptx_atomics(p.read_text()))
        attach_atomics(fusions, atomics)
        case["ptx_atomic_kernels"] = {k: v for k, v in atomics.items() if v}
    case["scatter_fusions"] = fusions
    try:
        trace_dir = Path(tempfile.mkdtemp(prefix="trace-", dir=dump_dir.parent))
        with jax.profiler.trace(str(trace_dir)):
            for _ in range(profile_steps):
                step()
        xplanes = sorted(trace_dir.rglob("*.xplane.pb"))
        prof = profile_times(xplanes[-1], profile_steps) if xplanes else None
    except Exception as exc:  # no profiler on this machine (CUPTI): keep the rest of the case
        case["profile_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        prof = None
    if prof:
        total = sum(prof["ops"].values())
        names = {f["name"] for f in fusions}
        scatter_ms = sum(v for k, v in prof["ops"].items() if k in names)
        case["profile"] = {
            "source": prof["source"],
            "ops_ms_per_step": total,
            "scatter_fusions_ms_per_step": round(scatter_ms, 4),
            "scatter_share": round(scatter_ms / total, 4) if total else None,
            "top_ops": dict(list(prof["ops"].items())[:25]),
            "top_kernels": dict(list(prof["kernels"].items())[:25]),
        }
        for f in fusions:
            f["ms_per_step"] = prof["ops"].get(f["name"])
    return case


def run_lookups(W, size, variants: list[str], dtypes: list[str], rounds: int) -> list[dict]:
    import jax

    channels = W.experiment(size).field.app_components[0]
    rows = []
    for kind in LOOKUP_KINDS:
        args = jax.device_put(W.lookup_inputs(kind, size.grid, channels, size.points))
        for dtype in dtypes:
            for variant in variants:
                for mode in LOOKUP_MODES:
                    row = {"kind": kind, "variant": variant, "dtype": dtype, "mode": mode, "points": size.points,
                           "channels": channels, "grid": size.grid}
                    try:
                        t0 = time.perf_counter()
                        compiled = jax.jit(W.lookup_function(kind, variant, mode, dtype)).lower(*args).compile(
                            compiler_options=W.compiler_options("train", size)
                        )
                        row["compile_s"] = round(time.perf_counter() - t0, 3)
                        row["ms"] = _median_ms(lambda: jax.block_until_ready(compiled(*args)), rounds)
                    except Exception as exc:  # a variant that fails here must not lose the others
                        row["error"] = f"{type(exc).__name__}: {exc}"[:1000]
                    rows.append(row)
    return rows


def _markdown(result: dict) -> str:
    lines = [f"# Lookup profile: {result['device']} ({result['date']})", "",
             f"Command: `{result['command']}`  ", f"Versions: {result['versions']}  ", f"XLA_FLAGS: `{result['xla_flags']}`", "",
             "## Train step per case", "",
             "| variant | precision | step ms | compile s | scatter fusions (dtype, atomics) | scatter ms/step | share |",
             "|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        if "error" in c:
            lines.append(f"| {c['variant']} | {c['precision']} | error: {c['error'][:120]} | | | | |")
            continue
        groups = collections.Counter((f["dtype"], f.get("atomic_kind") or "-") for f in c["scatter_fusions"])
        fus = ", ".join(f"{n}× {dt} ({kind})" for (dt, kind), n in groups.most_common()) or "none"
        p = c.get("profile", {})
        lines.append(f"| {c['variant']} | {c['precision']} | {c['step_ms']} | {c.get('compile_s')} | {fus} | "
                     f"{p.get('scatter_fusions_ms_per_step')} | {p.get('scatter_share')} |")
    lines += ["", "## Slowest scatter fusions per case (ms per step)", ""]
    for c in result["cases"]:
        timed = sorted((f for f in c.get("scatter_fusions", []) if f.get("ms_per_step")), key=lambda f: -f["ms_per_step"])
        if timed:
            lines.append(f"- {c['variant']}:{c['precision']}: " + ", ".join(
                f"`{f['name']}` {f['ms_per_step']} ({f['dtype']} {f['shape']}, window {f.get('update_window_dims')}, "
                f"{f.get('atomic_kind') or '-'})" for f in timed[:5]))
    lines += ["", "## Lookups (median ms)", "", "| kind | dtype | variant | forward | forward+backward | ratio |", "|---|---|---|---|---|---|"]
    by = collections.defaultdict(dict)
    for r in result["lookups"]:
        by[(r["kind"], r["dtype"], r["variant"])][r["mode"]] = r.get("ms", "error")
    for (kind, dtype, variant), m in by.items():
        f, fb = m.get("forward"), m.get("forward+backward")
        ratio = f"{fb / f:.1f}" if isinstance(f, float) and isinstance(fb, float) and f else ""
        lines.append(f"| {kind} | {dtype} | {variant} | {f} | {fb} | {ratio} |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _pack_dumps(dump_dir: Path, names: list[str], out: Path, max_mib: float) -> Optional[str]:
    """tar.gz of the named dump files into ``out`` (atomically); None when it would exceed ``max_mib``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            p = dump_dir / name
            if p.is_file() and (p.suffix == ".ptx" or p.name.endswith("after_optimizations.txt")):
                tar.add(p, arcname=name)
    if buf.tell() > max_mib * 2**20:
        return None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)
    return out.name


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for lookup_profile.json / .md and dumps.tgz")
    ap.add_argument("--size", default="gpu", help="benchmark size (benchmarks/bench_sizes.py): gpu, full, quick, smoke")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated variant:precision (precision fp32, bf16, fp16, bf16-grid)")
    ap.add_argument("--steps", type=int, default=10, help="timed train steps per case (median)")
    ap.add_argument("--profile-steps", type=int, default=3, help="profiled train steps per case")
    ap.add_argument("--lookup-variants", default="flat,gather,vjp,sorted,pallas", help="variants of the lookup timings ('' = none)")
    ap.add_argument("--lookup-dtypes", default="fp32,bf16-grid")
    ap.add_argument("--lookup-rounds", type=int, default=10)
    ap.add_argument("--keep-dumps", type=int, default=3, help="cases whose train-step HLO and PTX go into dumps.tgz")
    ap.add_argument("--max-dump-mib", type=float, default=15.0)
    ap.add_argument("--dump-dir", type=Path, default=None, help="where XLA dumps (default: a new temporary folder)")
    args = ap.parse_args(argv)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dump_dir = args.dump_dir or Path(tempfile.mkdtemp(prefix="xla-dump-"))
    dump_dir.mkdir(parents=True, exist_ok=True)
    xla_flags = _set_xla_dump_flags(dump_dir)

    import importlib.metadata as md

    import jax

    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO))
    import bench_sizes
    import bench_workloads as W

    size = bench_sizes.SIZES[args.size]
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": W.jax_device_info()["device"],
        "host": platform.node(),
        "versions": {n: md.version(n) for n in ("jax", "jaxlib")},
        "xla_flags": xla_flags,
        "size": size.name,
        "cases": [],
        "lookups": [],
    }
    kept: list[str] = []
    for i, spec in enumerate(s for s in args.cases.split(",") if s):
        variant, precision = spec.split(":")
        print(f"[gpu_lookup_profile] train step {variant}:{precision}", flush=True)
        try:
            case = run_case(W, size, variant, precision, dump_dir, args.steps, args.profile_steps)
        except Exception as exc:  # one failing case (a kernel that does not compile) must not lose the rest
            case = {"variant": variant, "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        if i < args.keep_dumps:
            kept += case.get("module_files", [])
        result["cases"].append(case)
        _write(out / "lookup_profile.json", json.dumps(result, indent=1))
    variants = [v for v in args.lookup_variants.split(",") if v]
    if variants:
        print("[gpu_lookup_profile] lookups", flush=True)
        result["lookups"] = run_lookups(W, size, variants, [d for d in args.lookup_dtypes.split(",") if d], args.lookup_rounds)
    result["dumps"] = _pack_dumps(dump_dir, kept, out / "dumps.tgz", args.max_dump_mib) if kept else None
    _write(out / "lookup_profile.json", json.dumps(result, indent=1))
    _write(out / "lookup_profile.md", _markdown(result))
    print((out / "lookup_profile.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
