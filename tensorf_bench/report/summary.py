"""The "what this shows" paragraph, generated from the numbers of one report run.

Every sentence is computed from the benchmark and quality rows (winner, ratio, values); a section
without data says nothing. No claim is written by hand.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .tables import fmt_bytes, fmt_rate, fmt_seconds


def _ok(x) -> bool:
    try:
        return x is not None and not isinstance(x, bool) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _times(a: float, b: float, other: str = "") -> str:
    """'2.3× faster than OTHER' / '1.4× slower than OTHER' / 'as fast as OTHER (1.01×)' for time a
    against time b."""
    if not (_ok(a) and _ok(b)) or a <= 0 or b <= 0:
        return "?"
    r = b / a
    than = f" than {other}" if other else ""
    if abs(r - 1) < 0.03:
        return f"as fast{' as ' + other if other else ''} ({r:.2f}×)"
    return f"{r:.2f}× faster{than}" if r >= 1 else f"{1 / r:.2f}× slower{than}"


def _group(rows, group):
    return [r for r in rows if r.get("group") == group and _ok(r.get("median_s"))]


def vmap_sentences(rows) -> list[str]:
    out = []
    vm = _group(rows, "vmap")
    for mode in dict.fromkeys(r.get("mode") for r in vm):
        rs = sorted((r for r in vm if r.get("mode") == mode), key=lambda r: float(r["median_s"]))
        if len(rs) < 2:
            continue
        best, worst = rs[0], rs[-1]
        flat = next((r for r in rs if r.get("variant") == "flat"), None)
        s = (f"vmap, {mode} at training shapes ({best.get('rays')} rays × {best.get('samples_per_ray')} samples, grid "
             f"{best.get('grid')}): `{best.get('variant')}` is fastest ({fmt_seconds(best['median_s'])}, "
             f"{fmt_rate(best.get('throughput'))} rays/s), {float(worst['median_s']) / float(best['median_s']):.2f}× "
             f"the slowest (`{worst.get('variant')}`)")
        if flat is not None and flat is not best and flat is not worst:
            s += f" and {float(flat['median_s']) / float(best['median_s']):.2f}× `flat`, the default"
        elif flat is worst:
            s += ", the default"
        out.append(s + ".")
    return out


def lookup_sentences(rows) -> list[str]:
    """Group ``lookup``, per device and dtype: the fastest variant of the plane and of the line
    lookup forward+backward (and its time over its own forward; ``flat``'s beside it), and the
    fastest forward."""
    lk = _group(rows, "lookup")
    key = lambda r: float(r["median_s"])  # noqa: E731
    out = []
    for device, dtype in dict.fromkeys((r.get("device"), r.get("dtype")) for r in lk):
        parts, first = [], None
        for kind in ("plane", "line"):
            rs = [r for r in lk if (r.get("device"), r.get("dtype"), r.get("kind")) == (device, dtype, kind)]
            fb = sorted((r for r in rs if r.get("mode") == "forward+backward"), key=key)
            fw = {r.get("variant"): r for r in rs if r.get("mode") == "forward"}
            if not fb:
                continue
            first = first or fb[0]

            def timed(r):
                f = fw.get(r.get("variant"))
                return fmt_seconds(r["median_s"]) + (f", {key(r) / key(f):.1f}× its forward" if f else "")

            text = f"{kind} `{fb[0].get('variant')}` ({timed(fb[0])}"
            flat = next((r for r in fb if r.get("variant") == "flat"), None)
            if flat is not None and flat is not fb[0]:
                text += f"; `flat` {timed(flat)}"
            if fw:
                text += f"; fastest forward `{min(fw.values(), key=key).get('variant')}`"
            parts.append(text + ")")
        if parts:
            out.append(f"Grid lookups on {device} ({dtype}, {first.get('points')} points, {first.get('channels')} "
                       f"channels, grid {first.get('grid')}), fastest forward+backward: " + "; ".join(parts) + ".")
    return out


def appearance_sentences(rows, quality: Sequence[dict]) -> list[str]:
    out = []
    ap = _group(rows, "appearance")
    qmap = {(q.get("appearance"), q.get("k")): q for q in quality
            if q.get("framework") == "jax" and q.get("precision", "fp32") == "fp32" and _ok(q.get("psnr"))}
    for workload in dict.fromkeys(r.get("workload") for r in ap):
        rs = sorted((r for r in ap if r.get("workload") == workload), key=lambda r: float(r["median_s"]))
        if len(rs) < 2:
            continue
        best = rs[0]
        base = next((r for r in rs if r.get("appearance") == "all"), None)
        s = f"Appearance, {workload.replace('_', ' ')}: `{best.get('label')}` is fastest ({fmt_seconds(best['median_s'])})"
        if base is not None and base is not best:
            s += f", {float(base['median_s']) / float(best['median_s']):.2f}× `all`"
        out.append(s + ".")
    if qmap and ap:
        parts = []
        for (app, k), q in qmap.items():
            label = app if k is None else f"{app}-{k}"
            parts.append(f"`{label}` {float(q['psnr']):.2f} dB")
        out.append("Their quality runs under the same budget reached a mean test PSNR of " + ", ".join(parts) + ".")
    return out


def precision_sentences(rows) -> list[str]:
    out = []
    pr = _group(rows, "precision")
    for workload in dict.fromkeys(r.get("workload") for r in pr):
        rs = {r.get("dtype"): r for r in pr if r.get("workload") == workload}
        if "fp32" not in rs or len(rs) < 2:
            continue
        parts = [f"{d} is {_times(float(r['median_s']), float(rs['fp32']['median_s']))}" for d, r in rs.items() if d != "fp32"]
        out.append(f"Precision, {workload.replace('_', ' ')}: against fp32, " + ", ".join(parts) + ".")
    return out


def framework_sentences(rows) -> list[str]:
    out = []
    fw = _group(rows, "framework")
    for workload in dict.fromkeys(r.get("workload") for r in fw):
        rs = {r.get("impl"): r for r in fw if r.get("workload") == workload}
        j, t = rs.get("jax-jit"), rs.get("torch-eager")
        if j is None or t is None:
            continue
        s = (f"Same work, {workload.replace('_', ' ')}: JAX (jit) is "
             f"{_times(float(j['median_s']), float(t['median_s']), 'torch eager')} "
             f"({fmt_seconds(j['median_s'])} vs {fmt_seconds(t['median_s'])})")
        c = rs.get("torch-compile")
        if c is not None:
            s += f"; torch.compile is {_times(float(c['median_s']), float(t['median_s']), 'eager')}"
        out.append(s + ".")
    return out


def official_sentences(rows) -> list[str]:
    """The train step at the official lego settings: the fastest case, the official strategy, and
    what the dense density lookup changes per strategy."""
    rs = [r for r in _group(rows, "official") if _ok(r.get("throughput"))]
    if not rs:
        return []
    by = {str(r.get("label")): r for r in rs}
    best = max(rs, key=lambda r: float(r["throughput"]))
    s = (f"Train step at the official lego settings ({best.get('rays')} rays, grid {best.get('grid')}, "
         f"{best.get('samples_per_ray')} samples per ray): `{best.get('label')}` is fastest at "
         f"{fmt_rate(best['throughput'])} rays/s")
    off = by.get("threshold")
    if off is not None and off is not best:
        s += f", {float(best['throughput']) / float(off['throughput']):.2f}× the official `threshold` strategy ({fmt_rate(off['throughput'])} rays/s)"
    out = [s + "."]
    parts = []
    for label, r in by.items():
        if label.endswith("+dense") and label[: -len("+dense")] in by:
            f = by[label[: -len("+dense")]]
            parts.append(f"`{f.get('label')}` {_times(float(r['median_s']), float(f['median_s']))}")
    if parts:
        out.append("The dense density lookup against the factored one: " + ", ".join(parts) + ".")
    return out


def device_sentences(rows) -> list[str]:
    dv = sorted(_group(rows, "devices"), key=lambda r: int(r.get("devices") or 0))
    one = next((r for r in dv if int(r.get("devices") or 0) == 1), None)
    if one is None or len(dv) < 2:
        return []
    parts = [f"{r.get('devices')} devices {_times(float(r['median_s']), float(one['median_s']))}" for r in dv if r is not one]
    kind = "host devices sharing the same CPU cores" if str(one.get("platform")) == "cpu" else "devices"
    return [f"Data parallel train step ({one.get('rays')} rays, `jax.shard_map`, {kind}): against 1 device, "
            + ", ".join(parts) + "."]


def compile_sentences(rows, quality: Sequence[dict]) -> list[str]:
    out = []
    cp = [r for r in rows if r.get("group") == "compile" and _ok(r.get("compile_s"))]
    for workload in dict.fromkeys(r.get("workload") for r in cp):
        rs = sorted((r for r in cp if r.get("workload") == workload), key=lambda r: str(r.get("grid")))
        parts = [f"{fmt_seconds(r['compile_s'])} at {r.get('grid')}" for r in rs]
        smoke = any(r.get("fast_compile") for r in rs)
        out.append(f"Compiling the {workload.replace('compile_', '').replace('_', ' ')} takes " + ", ".join(parts)
                   + (" (XLA optimisation level 0: smoke size)" if smoke else "") + ".")
    jq = [q for q in quality if q.get("framework") == "jax" and _ok(q.get("compile_seconds")) and _ok(q.get("budget_s"))]
    if jq:
        lo = min(jq, key=lambda q: q["compile_seconds"])
        hi = max(jq, key=lambda q: q["compile_seconds"])
        out.append(f"The JAX quality runs spent {fmt_seconds(lo['compile_seconds'])} to {fmt_seconds(hi['compile_seconds'])} "
                   f"of their {fmt_seconds(lo['budget_s'])} budget compiling ({lo.get('n_compiles')} to {hi.get('n_compiles')} "
                   "compilations).")
    return out


def memory_sentences(rows) -> list[str]:
    out = []
    mem = [r for r in rows if r.get("group") == "memory" and _ok(r.get("peak_rss_bytes"))]
    for workload in dict.fromkeys(r.get("workload") for r in mem):
        rs = {r.get("framework"): r for r in mem if r.get("workload") == workload}
        if "jax" in rs and "torch" in rs:
            j, t = rs["jax"], rs["torch"]
            out.append(f"Memory, {workload.replace('memory_', '').replace('_', ' ')}: peak RSS {fmt_bytes(j['peak_rss_bytes'])} "
                       f"(JAX) vs {fmt_bytes(t['peak_rss_bytes'])} (torch); growth while running "
                       f"{fmt_bytes(j['peak_rss_bytes'] - j.get('rss_before_bytes', 0))} vs "
                       f"{fmt_bytes(t['peak_rss_bytes'] - t.get('rss_before_bytes', 0))}.")
    return out


def quality_sentences(quality: Sequence[dict]) -> list[str]:
    ok = [q for q in quality if _ok(q.get("psnr"))]
    if not ok:
        return []
    ranked = sorted(ok, key=lambda q: -float(q["psnr"]))
    best = ranked[0]
    budget = best.get("budget_s")
    s = (f"Quality under the same {fmt_seconds(budget)} budget: the best mean test PSNR is `{best.get('label')}` with "
         f"{float(best['psnr']):.2f} dB (SSIM {float(best.get('ssim') or float('nan')):.4f}) after "
         f"{best.get('steps')} steps")
    torch = next((q for q in ok if q.get("framework") == "torch"), None)
    if torch is not None and torch is not best:
        s += (f"; the torch reference reached {float(torch['psnr']):.2f} dB after {torch.get('steps')} steps "
              f"({float(best['psnr']) - float(torch['psnr']):+.2f} dB for `{best.get('label')}`)")
        if _ok(best.get("rays_per_s")) and _ok(torch.get("rays_per_s")) and float(torch["rays_per_s"]) > 0:
            s += f", which trained {float(best['rays_per_s']) / float(torch['rays_per_s']):.2f}× as many rays per second"
    out = [s + "."]
    if len(ranked) > 2:
        out.append("Ranking by PSNR: " + " > ".join(f"`{q.get('label')}` ({float(q['psnr']):.2f})" for q in ranked) + ".")
    return out


def failure_sentences(problems: Sequence[dict]) -> list[str]:
    failed = [p for p in problems if p.get("outcome") == "failed"]
    if not failed:
        return []
    return [f"{len(failed)} part(s) failed and are listed below with their error: "
            + ", ".join(f"`{p.get('what')}`" for p in failed[:6]) + ("..." if len(failed) > 6 else "") + "."]


def load_sentence(machine: dict, load_end: Optional[Sequence[float]]) -> Optional[str]:
    start = machine.get("load_average")
    n = (machine.get("cores") or {}).get("usable") or (machine.get("cores") or {}).get("logical") or 1
    if not start and not load_end:
        return None
    worst = max([x for x in (start or [])[:1] + list(load_end or [])[:1] if _ok(x)] or [0.0])
    s = f"Load average (1 min) {start[0] if start else '?'} at the start and {load_end[0] if load_end else '?'} at the end, on {n} usable cores"
    if worst > 0.75 * n:
        return s + ": the load was high (other processes shared the CPU), so timings are noisy."
    return s + "."


def what_this_shows(bench_rows, quality_rows, problems, machine, load_end) -> list[str]:
    """The generated sentences, in report order."""
    out: list[str] = []
    out += quality_sentences(quality_rows)
    out += framework_sentences(bench_rows)
    out += official_sentences(bench_rows)
    out += vmap_sentences(bench_rows)
    out += lookup_sentences(bench_rows)
    out += appearance_sentences(bench_rows, quality_rows)
    out += precision_sentences(bench_rows)
    out += device_sentences(bench_rows)
    out += compile_sentences(bench_rows, quality_rows)
    out += memory_sentences(bench_rows)
    out += failure_sentences(problems)
    ls = load_sentence(machine or {}, load_end)
    if ls:
        out.append(ls)
    return out
