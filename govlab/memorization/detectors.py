"""Memorization detectors and the ratio criterion: small pure functions of a model and images.

- ``noise_magnitude`` (Wen et al., ICLR 2024): how strongly a caption pulls the noise prediction
  away from the unconditional one at early sampling steps; no sampling loop.
- ``regeneration_scores``: sample a caption with several seeds and compare each generation's
  distance to the caption's own training image with its distance to the next-nearest one.
- ``mem_ratio`` (Gu et al. 2023, sail-sg/DiffMemorize ``mem_ratio.py``): nearest / second-nearest
  l2 distance to the training images, normalised by sqrt(dimension); memorized below 1/3. It is
  measured in pixel space and in the feature space of the world's own image encoder (copy
  detection as Somepalli et al. do with SSCD features).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from govlab.models.diffusion import to_float

MEMORIZED_RATIO = 1 / 3
Features = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (N, 3, S, S) -> (N, D)


class Denoiser:
    """What the detectors need of a text-to-image model (any backbone, pixel or latent, epsilon or
    velocity target): ``encode`` prompts (or token ids) to the conditioning, ``predict`` the model's
    training target for inputs ``x`` at timestep ``t`` (the scheduler's training scale, 0..1000),
    ``shape`` of one input ``(C, H, W)`` (latent or pixel), ``generate`` uint8 images ``(N, 3, S, S)``,
    and ``device``. ``GovlabDenoiser`` wraps govlab's own model; ``govlab.api.DiffusersDenoiser``
    a diffusers UNet or MMDiT with its text encoder, VAE and scheduler."""

    shape: tuple[int, ...]
    device: torch.device
    module: torch.nn.Module  # put in eval mode while scoring

    def encode(self, prompts) -> torch.Tensor: ...
    def predict(self, x: torch.Tensor, t, cond) -> torch.Tensor: ...
    def generate(self, prompts: list[str], *, seed: int, steps: int, guidance: float) -> torch.Tensor: ...


class GovlabDenoiser(Denoiser):
    """govlab's own pixel-space ``TextToImage`` as a ``Denoiser``."""

    def __init__(self, model):
        self.module = model

    @property
    def shape(self):
        return tuple(self.module.noise_shape)

    @property
    def device(self):
        return self.module.device

    def encode(self, prompts):
        if isinstance(prompts, torch.Tensor):
            return self.module.text(prompts.to(self.device))
        return self.module.encode(list(prompts))

    def predict(self, x, t, cond):
        return self.module.predict_noise(x, t, cond)

    def generate(self, prompts, *, seed, steps, guidance):
        return self.module.generate(prompts, seed=seed, steps=steps, guidance=guidance)


def as_denoiser(model) -> Denoiser:
    return model if isinstance(model, Denoiser) else GovlabDenoiser(model)


@torch.no_grad()
def noise_magnitude(model, tokens, *, noises: int = 2, timesteps=(800,), seed: int = 0,
                    batch_size: int = 512) -> torch.Tensor:
    """||f(x_t, c) - f(x_t, null)|| / sqrt(C*H*W) per caption ``(B,)``, for pure-noise ``x_t`` at
    the given early timesteps, averaged over ``noises`` draws (the same draws for every caption);
    ``f`` is the model's prediction (noise, or velocity under rectified flow). ``model``: govlab's
    model or any ``Denoiser``; ``tokens``: token ids or prompts."""
    d = as_denoiser(model)
    dev = d.device
    x = torch.randn(noises, *d.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    was_training = d.module.training
    d.module.eval()
    cond, null = d.encode(tokens), d.encode([""])
    n = len(tokens)
    total = torch.zeros(n, device=dev)
    for t in timesteps:
        for xn in x:
            eps_u = d.predict(xn[None], t, null)
            for i in range(0, n, batch_size):
                c = _rows(cond, i, batch_size)
                k = len(c[0]) if isinstance(c, tuple) else len(c)
                eps_c = d.predict(xn.expand(k, *xn.shape), t, c)
                total[i:i + k] += (eps_c - eps_u).flatten(1).norm(dim=1)
    d.module.train(was_training)
    return total.cpu() / (len(timesteps) * noises * math.sqrt(math.prod(d.shape)))


def _rows(cond, i: int, n: int):
    """Rows ``i:i+n`` of a conditioning (a tensor, or a tuple of tensors: hidden states, pooled)."""
    return tuple(c[i:i + n] for c in cond) if isinstance(cond, tuple) else cond[i:i + n]


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1], flattened: the literature's space."""
    return to_float(images).flatten(1)


def world_features(evaluator) -> Features:
    """The world evaluator's embedding (its penultimate layer): copy detection in feature space."""
    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([evaluator.features(images[i:i + 512]) for i in range(0, len(images), 512)])
    return features


def unique_images(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-identical images merged: (unique images, index of each input image among them)."""
    uniq, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    return uniq.view(-1, *images.shape[1:]), inverse


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """l2 distances ``(len(a), len(b))`` normalised by sqrt(dimension)."""
    return torch.cdist(a.double(), b.double()) / math.sqrt(a.shape[1])


def mem_ratio(gen: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per generation: (nearest / second-nearest distance to ``train``, index of the nearest).

    ``train`` must hold distinct images (see ``unique_images``)."""
    d, i = distances(gen, train).topk(2, dim=1, largest=False)
    return d[:, 0] / d[:, 1].clamp_min(1e-12), i[:, 0]


def own_ratio(gen: torch.Tensor, own: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Per generation: distance to its own training image ``train[own]`` / distance to the nearest other."""
    d = distances(gen, train)
    rows = torch.arange(len(gen))
    d_own = d[rows, own]
    d[rows, own] = math.inf
    return d_own / d.min(dim=1).values.clamp_min(1e-12)


def regeneration_scores(model, captions: list[str], own: torch.Tensor, train_features: torch.Tensor,
                        features: Features = pixel_features, *, seeds: int = 4, steps: int = 8,
                        guidance: float = 3.0, seed: int = 0) -> torch.Tensor:
    """1 - min(1, best own-image ratio over ``seeds`` generations) per caption ``(B,)``: above 2/3
    when some generation is a copy under the ratio criterion. ``own``: row of each caption's image
    in ``train_features`` (features of distinct training images)."""
    images = as_denoiser(model).generate([c for c in captions for _ in range(seeds)], seed=seed, steps=steps,
                                         guidance=guidance)
    ratio = own_ratio(features(images), own.repeat_interleave(seeds), train_features)
    return 1 - ratio.view(len(captions), seeds).min(dim=1).values.clamp(max=1).float()


def detection_auc(scores, positive) -> float | None:
    """ROC AUC of ``scores`` separating ``positive`` (e.g. planted duplicates) from the rest; None
    when one class is missing."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return round(float(roc_auc_score(positive, np.asarray(scores, float))), 4)
