"""encoding: positional encoding (official ordering, no pi) and the SH bases, JAX vs torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_tensorf.encoding as je
import torch_reference.encoding as te
from compare import assert_close

positional_encoding = jax.jit(je.positional_encoding, static_argnums=1)
eval_sh_bases = jax.jit(je.eval_sh_bases, static_argnums=0)


@pytest.mark.parametrize("freqs", [0, 1, 2, 6])
@pytest.mark.parametrize("dim", [3, 12])
def test_positional_encoding(freqs, dim):
    # magnitudes like features (|x| ~ 1) and normalised positions; sin/cos of 2^5 x stay well-conditioned
    x = np.random.default_rng(freqs * 10 + dim).uniform(-1.5, 1.5, (700, dim)).astype(np.float32)
    got = positional_encoding(jnp.asarray(x), freqs)
    want = te.positional_encoding(torch.from_numpy(x), freqs)
    assert_close(f"encoding.positional_encoding[f={freqs},d={dim}]", got, want)


@pytest.mark.parametrize("deg", [0, 1, 2])
def test_eval_sh_bases(deg):
    d = np.random.default_rng(deg).normal(size=(900, 3))
    d[:3] = np.eye(3)  # axis directions
    d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    got = eval_sh_bases(deg, jnp.asarray(d))
    want = te.eval_sh_bases(deg, torch.from_numpy(d))
    assert_close(f"encoding.eval_sh_bases[deg={deg}]", got, want)
