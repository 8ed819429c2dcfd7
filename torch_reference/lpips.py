"""LPIPS v0.1 (AlexNet and VGG16) in plain torch (no torchvision), from the pretrained numpy weights.

The same network as ``jax_tensorf.lpips`` and the official ``lpips.LPIPS(net=..., version='0.1')``
called with ``normalize=True``: inputs in [0, 1] -> ``2x - 1`` -> ``ScalingLayer``
``(x - shift) / scale`` -> torchvision's ``features`` trunk tapped at 5 ReLUs (AlexNet relu1..5,
VGG16 relu1_2, 2_2, 3_3, 4_3, 5_3) -> per stage: channel unit-normalisation (eps 1e-10), squared
difference, 1x1 linear layer without bias, spatial mean -> sum over stages.

Layout: NCHW activations and OIHW kernels (torch's own); the numpy weights (HWIO) from
:mod:`tensorf_common.lpips_weights` are transposed once at construction. TF32 is not used for the
convolutions: on CUDA, cuDNN's TF32 (on by default in torch) is switched off for the duration of
each call and restored after it; CPUs compute float32 anyway.

Both images of a pair go through the trunk as one batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


@contextmanager
def _full_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 in cuDNN convolutions while inside (a no-op off CUDA); the previous flag is restored."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


class LPIPSNet(nn.Module):
    """The LPIPS network of one net as a module (frozen parameters, ``forward`` on NCHW batches).

    ``forward(img0, img1)`` takes two (N, 3, H, W) batches in [0, 1] and returns the (N,)
    distances.
    """

    def __init__(self, net: str, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.net = canonical_net(net)
        self.convs = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i in range(len(TRUNK_CONVS[self.net])):
            kernel = np.ascontiguousarray(np.asarray(weights[f"conv{i}.kernel"]).transpose(3, 2, 0, 1))
            self.convs.append(nn.Parameter(torch.tensor(kernel, dtype=torch.float32), requires_grad=False))
            self.biases.append(
                nn.Parameter(torch.tensor(np.asarray(weights[f"conv{i}.bias"]), dtype=torch.float32), requires_grad=False)
            )
        self.lins = nn.ParameterList(
            nn.Parameter(torch.tensor(np.asarray(weights[f"lin{s}"]), dtype=torch.float32), requires_grad=False)
            for s in range(len(STAGES[self.net]))
        )
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALING_SCALE, dtype=torch.float32).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 5 tapped trunk activations (NCHW) of ``x``, already scaled by the ``ScalingLayer``."""
        window, stride = POOL[self.net]
        feats = []
        for s, convs in enumerate(STAGES[self.net]):
            if POOL_BEFORE[self.net][s]:
                x = F.max_pool2d(x, window, stride)
            for i in convs:
                _, _, _, conv_stride, pad = TRUNK_CONVS[self.net][i]
                x = F.relu(F.conv2d(x, self.convs[i], self.biases[i], stride=conv_stride, padding=pad))
            feats.append(x)
        return feats

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        n = img0.shape[0]
        x = torch.cat([img0, img1], dim=0).to(torch.float32)
        x = ((2.0 * x - 1.0) - self.shift) / self.scale
        total = torch.zeros(n, dtype=torch.float32, device=x.device)
        for s, f in enumerate(self.features(x)):
            f = f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + NORMALIZE_EPS)
            d = (f[:n] - f[n:]) ** 2
            total = total + torch.einsum("nchw,c->nhw", d, self.lins[s]).mean(dim=(1, 2))
        return total


class LPIPS:
    """LPIPS v0.1 distance with pretrained weights, in torch (same API as ``jax_tensorf.lpips.LPIPS``).

    ``LPIPS("alex")`` or ``LPIPS("vgg")`` reads the weights (see
    :mod:`tensorf_common.lpips_weights`; raises ``LpipsUnavailable`` without them). ``weights``
    (the numpy layout) or ``path`` (a ``.ckpt`` file) override where they come from; ``device``
    places the network. ``source`` records where the weights came from.
    """

    def __init__(
        self,
        net: str = "alex",
        weights: Optional[Mapping[str, np.ndarray]] = None,
        path: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        self.net = canonical_net(net)
        if weights is None:
            f = path if path is not None else find_lpips_weights(self.net)
            weights = load_lpips_weights(self.net, f)
            self.source = str(f)
        else:
            self.source = "<given weights>"
        self.device = torch.device(device)
        self.module = LPIPSNet(self.net, weights).to(self.device).eval()

    def _tensor(self, x) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        return t.to(device=self.device, dtype=torch.float32)

    def batch(self, imgs0, imgs1) -> np.ndarray:
        """Distances (N,) of two (N, H, W, 3) batches of images in [0, 1] (numpy or torch)."""
        a, b = self._tensor(imgs0), self._tensor(imgs1)
        check_lpips_input(self.net, tuple(a.shape), tuple(b.shape), ndim=4)
        with torch.inference_mode(), _full_fp32(self.device):
            d = self.module(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2))
        return d.cpu().numpy()

    def __call__(self, img0, img1) -> float:
        """Distance of two (H, W, 3) images in [0, 1] (numpy or torch)."""
        a, b = self._tensor(img0), self._tensor(img1)
        check_lpips_input(self.net, tuple(a.shape), tuple(b.shape), ndim=3)
        with torch.inference_mode(), _full_fp32(self.device):
            d = self.module(a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None])
        return float(d[0])


def available_lpips(nets: Sequence[str] = NETS, device: Union[str, torch.device] = "cpu") -> dict[str, Union[LPIPS, str]]:
    """``{net: LPIPS(net)}`` for each net, or ``{net: reason}`` (a one-line string) where the
    weights are unavailable. The form ``tensorf_common.evaluation.evaluate_images`` takes."""
    out: dict[str, Union[LPIPS, str]] = {}
    for net in nets:
        try:
            out[canonical_net(net)] = LPIPS(net, device=device)
        except LpipsUnavailable as exc:
            out[canonical_net(net)] = str(exc)
    return out
