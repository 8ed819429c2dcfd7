"""The report runner: benchmarks, quality runs and parity, stage by stage, then the report pages.

``tensorf-bench report`` creates RUN_DIR (default ``reports/<run-id>``) and runs these stages
(:mod:`.stages`):

1. ``machine``: CPU, cores, memory, GPUs, library versions, commit, date, load average;
2. ``data``: resolves the dataset (renders the built-in procedural scene once when no ``--data``),
   writes the ground truth of the figure views;
3. ``bench``: the pytest-benchmark suite in a subprocess under the allocator, at the preset's size,
   with ``--benchmark-json`` and a per-test outcome file;
4. ``quality-<name>``: one subprocess per compared configuration (:mod:`.quality`, started as
   ``python -m tensorf_bench.report_runner quality JOB.json``): the same ExperimentConfig except the
   appearance strategy, the same data, batches and wall-clock budget, evaluated on the test views
   (PSNR, SSIM, LPIPS-alex, LPIPS-vgg). A crash or an out-of-memory kill fails that run only, and
   each process's peak memory is its own;
5. ``parity``: ``tensorf-bench parity`` when this checkout has that command ("not available" otherwise);

then builds ``index.md``, ``index.html``, ``results.json`` and CSV files (:mod:`tensorf_bench.report.build`).

Each stage writes ``RUN_DIR/stages/<name>.json`` atomically when it ends, with its status (ok, failed,
skipped), its one-line error and its data. ``--resume RUN_DIR`` skips the stages recorded as ok and
runs the others again. A failed stage (or benchmark) does not stop the others; it is listed in the
report, and the command exits 1 at the end (:mod:`.run`). Progress (stage, what it is doing, time
left) is shown with tqdm (:mod:`.progress`); every subprocess's output goes to
``RUN_DIR/logs/<stage>.log`` (:mod:`.children`).
"""
