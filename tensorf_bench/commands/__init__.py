"""One module per group of subcommands. Modules import only light code at the top level
(dataclasses, configs); jax and torch are imported inside ``run()`` so that ``--help`` is fast."""
