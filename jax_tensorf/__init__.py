"""The JAX TensoRF (flax + optax). See DEVELOPERS.md for the parameter layout."""
