"""Mixed precision: half-precision training stays finite and close to fp32, the step really
computes in the half dtype (no silent promotion to fp32, the seed's bug), and fp16 loss scaling
skips non-finite steps."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorf_common.config import ConfigError, preset
from jax_helpers import scatter_dtypes
from jax_tensorf.precision import PARTS, policy
from jax_tensorf.step import RegFlags, ScaledState, train_step
from jax_tensorf.training import Trainer


def _cfg(precision: str, n_iters: int = 200, **train):
    base = preset("smoke")
    return dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train, n_iters=n_iters, precision=precision, upsample_at=(), alpha_mask_at=(120,), log_every=50, **train
        ),
    )


@pytest.fixture(scope="module")
def runs(small_dataset):
    """200 steps of the same run in fp32, bf16 and fp16 (same init, batches and jitter)."""
    out = {}
    for prec in ("fp32", "bf16", "fp16"):
        tr = Trainer(_cfg(prec), small_dataset, log=lambda s: None)
        tr.run()
        out[prec] = tr
    return out


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_half_precision_trains_finite_and_close_to_fp32(runs, prec):
    tr, ref = runs[prec], runs["fp32"]
    assert tr.pos.step == ref.pos.step == 200
    for leaf in jax.tree.leaves(tr.model.params):
        assert leaf.dtype == jnp.float32  # parameters stay fp32
        assert np.all(np.isfinite(np.asarray(leaf)))
    psnr, psnr_ref = tr.history[-1].psnr, ref.history[-1].psnr
    assert psnr > runs["fp32"].history[0].psnr + 1.0  # it learned something
    assert abs(psnr - psnr_ref) <= 0.5, (prec, psnr, psnr_ref)


def test_fp16_uses_dynamic_loss_scaling(runs):
    assert isinstance(runs["fp16"].opt_state, ScaledState)
    assert not isinstance(runs["bf16"].opt_state, ScaledState)
    assert float(runs["fp16"].opt_state.scale.scale) > 0


def _step_text(tr) -> str:
    """The lowered (StableHLO) train step of a trainer."""
    m, s = tr.model, tr.shape
    opts = m.render_options(s.n_samples, train=True)
    args = tr._step_args(np.zeros(tr.tc.batch_size, np.int64))
    return train_step.lower(
        *args, cfg=tr.cfg.field, opts=opts, variant="flat", reg=RegFlags(), adam=tr.adam, policy=tr.policy
    ).as_text()


def _dtype_census(tr, text: str | None = None) -> Counter:
    """Result dtypes of the gathers and dot products in the lowered train step (``text``: already lowered)."""
    text = _step_text(tr) if text is None else text
    census: Counter = Counter()
    for line in text.splitlines():
        for op in ("gather", "dot_general"):
            if f"stablehlo.{op}" in line:
                dt = re.findall(r"->\s*tensor<[^>]*?(bf16|f16|f32|i32|i1)>", line)
                census[(op, dt[-1] if dt else "?")] += 1
    return census


@pytest.mark.parametrize("prec,dt", [("bf16", "bf16"), ("fp16", "f16")])
def test_step_computes_in_the_half_dtype(small_dataset, prec, dt):
    tr = Trainer(_cfg(prec, n_iters=1, precision_parts=PARTS), small_dataset, log=lambda s: None)
    census = _dtype_census(tr)
    # with every part: every float gather (grid values) and every dot (basis matrix, MLP) is in the half dtype
    assert census[("gather", dt)] > 0 and census[("dot_general", dt)] > 0, census
    assert census[("gather", "f32")] == 0 and census[("dot_general", "f32")] == 0, census


@pytest.mark.parametrize("prec,dt", [("bf16", "bf16"), ("fp16", "f16")])
def test_default_parts_look_up_float32_and_never_scatter_in_16_bits(small_dataset, prec, dt):
    """The default parts (features, mlp): the grids are gathered in float32 and their gradients
    scatter-added in float32, the products, the basis matrix and the MLP compute in the half dtype."""
    tr = Trainer(_cfg(prec, n_iters=1), small_dataset, log=lambda s: None)
    text = _step_text(tr)
    census = _dtype_census(tr, text)
    assert census[("gather", "f32")] > 0 and census[("dot_general", dt)] > 0, census
    assert census[("dot_general", "f32")] == 0, census
    scatters = scatter_dtypes(text)
    assert "f32" in scatters and not {"bf16", "f16"} & set(scatters), scatters


def test_fp32_step_has_no_half_dtype(small_dataset):
    census = _dtype_census(Trainer(_cfg("fp32", n_iters=1), small_dataset, log=lambda s: None))
    assert census[("dot_general", "f32")] > 0
    assert not any(k[1] in ("bf16", "f16") for k in census), census


def test_parts_are_switchable(small_dataset):
    """Half-precision lookups with fp32 products and MLP: only the gathers are bf16."""
    tr = Trainer(_cfg("bf16", n_iters=1, precision_parts=("grid",)), small_dataset, log=lambda s: None)
    census = _dtype_census(tr)
    assert census[("gather", "bf16")] > 0
    assert census[("dot_general", "bf16")] == 0 and census[("dot_general", "f32")] > 0


def test_fp16_overflow_is_skipped_and_the_scale_backs_off(small_dataset):
    tr = Trainer(_cfg("fp16", n_iters=1), small_dataset, log=lambda s: None)
    # a scale that overflows fp16 gradients: the step must be skipped, not applied
    tr.opt_state = ScaledState(tr.opt_state.adam, tr.opt_state.scale.replace(scale=jnp.float32(1e30)))
    before = jax.tree.map(np.asarray, tr.model.params)
    step = tr._step_fn()
    params, opt, metrics = step(*tr._step_args(tr.sampler.next()))
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert float(opt.scale.scale) < 1e30


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision"):
        policy("fp8")
    with pytest.raises(ConfigError, match="precision_parts"):
        policy("bf16", parts=("grid", "attention"))
