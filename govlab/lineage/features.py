"""Pluggable feature extractors: torch modules from float images in ``[0, 1]`` ``(N, 3, H, W)`` to ``(N, D)``.

``"world"`` is the world's own image encoder (the evaluator trunk, trained once and cached, no
downloads), ``"multiscale"`` its S2-style variant (features at several input scales, concatenated),
``"pixels"`` the raw-pixel baseline. Any other torch module with the same contract can be passed.
Being modules, all of them are differentiable, which the PGD countermeasure needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from govlab.errors import GovlabError
from govlab.eval.classifiers import load_evaluator

EXTRACTORS = ("world", "multiscale", "pixels")


class WorldEncoder(nn.Module):
    """The 128-d embedding of the cached world evaluator."""

    def __init__(self, image_size: int = 16):
        super().__init__()
        self.trunk = load_evaluator(image_size, progress=False)[0].trunk.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x * 2 - 1)


class MultiScale(nn.Module):
    """Features of ``encoder`` at each input scale (bilinear resize), concatenated (the S2 idea)."""

    def __init__(self, encoder: nn.Module, scales: tuple[float, ...] = (1.0, 2.0, 0.5)):
        super().__init__()
        self.encoder, self.scales = encoder, tuple(scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for s in self.scales:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            feats.append(self.encoder(xs).flatten(1))
        return torch.cat(feats, dim=1)


class Pixels(nn.Module):
    """Raw pixels, flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def get_extractor(extractor: str | nn.Module = "world", *, image_size: int = 16) -> nn.Module:
    """A named extractor (``world``, ``multiscale``, ``pixels``) or the given module, in eval mode."""
    if isinstance(extractor, nn.Module):
        return extractor.eval()
    if extractor == "world":
        return WorldEncoder(image_size).eval()
    if extractor == "multiscale":
        return MultiScale(WorldEncoder(image_size)).eval()
    if extractor == "pixels":
        return Pixels()
    raise GovlabError(f"unknown feature extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)} "
                      f"or pass a torch module")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in ``[0, 1]``."""
    return images.float() / 255.0


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, *, batch_size: int = 512) -> np.ndarray:
    """Features ``(N, D)`` (float64) of uint8 images ``(N, 3, H, W)``."""
    out = [extractor(to_unit(images[i:i + batch_size])).flatten(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy()
