"""torch state_dict <-> JAX params, safetensors + JSON, official .th files. Imports both frameworks lazily."""
