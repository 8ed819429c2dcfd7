"""Framework-neutral code shared by both TensoRF implementations.

This package imports numpy (and pandas/matplotlib for reports) but never jax or torch:
a test enforces it.
"""
