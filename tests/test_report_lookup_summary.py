"""The report summary's sentence on the ``lookup`` benchmark group: per device and dtype, the
fastest forward+backward variant of each lookup, its ratio to its own forward, ``flat`` beside it,
and the fastest forward."""

from __future__ import annotations

from tensorf_bench.report.results import benchmark_rows
from tensorf_bench.report.summary import lookup_sentences, what_this_shows


def _row(device, dtype, kind, variant, mode, median):
    grid = "300x300" if kind == "plane" else "300"
    return {
        "group": "lookup", "name": f"test_lookup[{kind}-{variant}-{mode}-{dtype}]", "param": None,
        "extra_info": dict(device=device, dtype=dtype, kind=kind, variant=variant, mode=mode, points=1048576,
                           channels=48, grid=grid),
        "stats": {"median": median, "mean": median, "min": median, "max": median, "rounds": 3},
    }


def _rows():
    times = {  # (kind, variant): (forward, forward+backward) seconds
        ("plane", "flat"): (4e-3, 48e-3), ("plane", "vjp"): (4.2e-3, 6e-3), ("plane", "gather"): (3e-3, 40e-3),
        ("line", "flat"): (2e-3, 9e-3), ("line", "sorted"): (2.5e-3, 7e-3),
    }
    b = []
    for device in ("gpu:NVIDIA H200", "cpu"):
        for (kind, variant), (fw, fb) in times.items():
            scale = 1.0 if device == "cpu" else 0.1
            b.append(_row(device, "fp32", kind, variant, "forward", fw * scale))
            b.append(_row(device, "fp32", kind, variant, "forward+backward", fb * scale))
    b.append(_row("cpu", "bf16-grid", "line", "flat", "forward+backward", 0.02))
    return benchmark_rows({"benchmarks": b})


def test_lookup_sentence_names_the_fastest_variant_per_device_and_dtype():
    s = lookup_sentences(_rows())
    assert len(s) == 3  # H200 fp32, cpu fp32, cpu bf16-grid
    assert s[0] == (
        "Grid lookups on gpu:NVIDIA H200 (fp32, 1048576 points, 48 channels, grid 300x300), fastest "
        "forward+backward: plane `vjp` (600 µs, 1.4× its forward; `flat` 4.8 ms, 12.0× its forward; fastest "
        "forward `gather`); line `sorted` (700 µs, 2.8× its forward; `flat` 900 µs, 4.5× its forward; fastest "
        "forward `flat`)."
    ), s[0]
    assert s[1].startswith("Grid lookups on cpu (fp32,") and "plane `vjp` (6 ms, 1.4× its forward" in s[1], s[1]
    # a case without forward timings names the winner only
    assert s[2] == "Grid lookups on cpu (bf16-grid, 1048576 points, 48 channels, grid 300), fastest forward+backward: line `flat` (20 ms)."


def test_lookup_sentence_is_in_the_summary_and_absent_without_data():
    assert any(x.startswith("Grid lookups on") for x in what_this_shows(_rows(), [], [], {}, None))
    assert lookup_sentences(benchmark_rows({"benchmarks": []})) == []
