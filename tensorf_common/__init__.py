"""Framework-neutral code shared by both TensoRF implementations.

This package imports numpy, scipy and PIL, never jax or torch, pandas or matplotlib: tests
enforce it (``tests/test_import_boundaries.py``, ``tests/test_import_graph.py``).
"""
