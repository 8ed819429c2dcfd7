"""Report building (numpy, pandas and matplotlib; never jax or torch). The runner that produces what
it reads is :mod:`tensorf_bench.report_runner`.

- :mod:`.presets`: the report presets (``quick``, ``full``, ``gpu``, ``smoke``): benchmark size,
  quality runs, budgets;
- :mod:`.io`: stage records (``RUN_DIR/stages/<name>.json``), strict JSON written atomically;
- :mod:`.machine`: machine, library versions, git commit, load (GPU details are passed in);
- :mod:`.results`: the results model: benchmark rows from pytest-benchmark JSON, quality rows from
  run summaries, stage outcomes;
- :mod:`.tables`: pandas tables with the best value in bold, rendered as markdown and HTML;
- :mod:`.plots`: matplotlib figures (PNG bytes);
- :mod:`.summary`: the generated "what this shows" paragraph;
- :mod:`.build`: ``build_report(run_dir)`` writes ``index.md``, a self-contained ``index.html``,
  ``results.json`` and CSV files;
- :mod:`.compare`: two report runs side by side.
"""
