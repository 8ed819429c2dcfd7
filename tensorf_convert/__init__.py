"""torch state_dict <-> JAX params, safetensors + JSON, official .th files. Imports both frameworks lazily.

- :mod:`tensorf_convert.state_dict`: the explicit key table (official torch key <-> JAX path, the
  layout transform, both expected shapes), ``torch_to_jax`` / ``jax_to_torch`` with a shape guard and a
  missing / unexpected key report. Numpy only; bit-exact both ways.
- :mod:`tensorf_convert.model`: whole models through one neutral record, :class:`PortableModel`
  (official kwargs + state_dict + alpha mask): torch_reference ``TensorVMSplit`` / ``TensorCP`` <->
  :class:`jax_tensorf.model.TensoRF`, official checkpoint dicts, configs <-> official kwargs.
- :mod:`tensorf_convert.files`: safetensors + JSON (readable with ``safetensors.numpy``, ``.torch`` and
  ``.flax``), official ``.th`` (safe reading), JAX ``.npz``; ``convert_file`` between any two.

The ``tensorf-bench convert IN OUT`` command wraps :func:`tensorf_convert.files.convert_file`.
"""
