"""Encoders, decoders and the WAE-GAN latent discriminator.

Two families, as in the WAE paper:

* MLP (any image size; the default for 8x8 digits and 16x16 fading squares): two hidden layers
  of ``width`` units (default 256) with ReLU.
* DCGAN-style conv nets with batch norm (``conv``), for 28x28 (MNIST) and 64x64 (CelebA):
  encoder: 4 stride-2 4x4 convolutions with w, 2w, 4w, 8w channels (BN + ReLU), then a linear
  layer; decoder: linear to 7x7x8w (28x28) or 8x8x8w (64x64), stride-2 transposed convolutions
  halving the channels, a final stride-1 convolution to the image channels. The paper used
  w = 128; our default is 64 (``--width`` sets it).

Encoders return ``(mu, logvar)``; ``logvar`` is None for deterministic encoders and is clipped
to ``[logvar_min, logvar_max]`` (default [-20, 5], Rubenstein et al.'s code) for Gaussian ones,
whose logvar outputs start at ``logvar_init`` (the trainer's default -5: started at 0, i.e. at the
prior's variance, the encoder tends to stay collapsed onto the prior and ignore its input).
Decoders end in a sigmoid (pixels in [0, 1]).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, body: nn.Module, feat: int, z_dim: int, stochastic: bool,
                 logvar_min: float = -20.0, logvar_max: float = 5.0, logvar_init: float = 0.0) -> None:
        super().__init__()
        self.body = body
        self.z_dim = z_dim
        self.stochastic = stochastic
        self.logvar_min, self.logvar_max = logvar_min, logvar_max
        self.head = nn.Linear(feat, 2 * z_dim if stochastic else z_dim)
        if stochastic:
            with torch.no_grad():
                self.head.bias[z_dim:].fill_(logvar_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        h = self.head(self.body(x))
        if not self.stochastic:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)


def _mlp_body(d_in: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, width), nn.ReLU(True),
                         nn.Linear(width, width), nn.ReLU(True))


class MLPDecoder(nn.Module):
    def __init__(self, z_dim: int, shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.shape = shape
        d_out = shape[0] * shape[1] * shape[2]
        self.net = nn.Sequential(nn.Linear(z_dim, width), nn.ReLU(True), nn.Linear(width, width),
                                 nn.ReLU(True), nn.Linear(width, d_out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, *self.shape)


def _conv_body(c: int, size: int, w: int) -> tuple[nn.Module, int]:
    layers = []
    ch = [c, w, 2 * w, 4 * w, 8 * w]
    for a, b in zip(ch[:-1], ch[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    body = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():
        feat = body(torch.zeros(2, c, size, size)).shape[1]
    return body, feat


class ConvDecoder(nn.Module):
    def __init__(self, z_dim: int, shape: tuple[int, int, int], w: int) -> None:
        super().__init__()
        c, h, _ = shape
        self.shape = shape
        if h == 28:
            self.start, n_up = 7, 2
        elif h == 64:
            self.start, n_up = 8, 3
        else:
            raise ValueError(f"--arch conv: supports 28x28 and 64x64 images, got {h}x{h} (use --arch mlp)")
        self.c0 = 8 * w
        self.fc = nn.Sequential(nn.Linear(z_dim, self.c0 * self.start ** 2, bias=False),
                                nn.BatchNorm1d(self.c0 * self.start ** 2), nn.ReLU(True))
        layers, ch = [], self.c0
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.Conv2d(ch, c, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.c0, self.start, self.start)
        return torch.sigmoid(self.net(h))


def build_autoencoder(arch: str, shape: tuple[int, int, int], z_dim: int, stochastic: bool,
                      width: int = 0, logvar_min: float = -20.0, logvar_max: float = 5.0,
                      logvar_init: float = 0.0) -> tuple[Encoder, nn.Module]:
    c, h, w_ = shape
    if arch == "mlp":
        width = width or 256
        d_in = c * h * w_
        enc = Encoder(_mlp_body(d_in, width), width, z_dim, stochastic, logvar_min, logvar_max, logvar_init)
        dec = MLPDecoder(z_dim, shape, width)
    elif arch == "conv":
        if h != w_ or h not in (28, 64):
            raise ValueError(f"--arch conv: supports 28x28 and 64x64 images, got {h}x{w_} (use --arch mlp)")
        width = width or 64
        body, feat = _conv_body(c, h, width)
        enc = Encoder(body, feat, z_dim, stochastic, logvar_min, logvar_max, logvar_init)
        dec = ConvDecoder(z_dim, shape, width)
    else:
        raise ValueError(f"--arch: unknown architecture {arch!r}; expected 'mlp' or 'conv'")
    return enc, dec


class LatentDiscriminator(nn.Module):
    """WAE-GAN adversary on the latent space; returns logits (prior = 1, codes = 0)."""

    def __init__(self, z_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        layers, d = [], z_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(True)]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)
