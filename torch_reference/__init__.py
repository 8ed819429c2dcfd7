"""A small PyTorch TensoRF with the official implementation's semantics and checkpoint layout."""
