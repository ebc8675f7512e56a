"""Fixed diffusion-loss inputs: images, captions and K (noise, timestep) draws per image, so that every
loss, gradient and score computed on them is deterministic.

A *probe* in govlab is this and only this (a ``Probe``); the world's evaluation prompts are
``govlab.eval.eval_prompts`` and a lineage pool's samples and features ``govlab.lineage.sample_features``
(``probe_prompts`` and ``lineage.probe``: their former names, still importable)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage, to_float


@dataclass
class Probe:
    """``n`` images ``x0`` (floats in [-1, 1]) with caption ``tokens`` and ``k`` fixed draws each."""

    x0: torch.Tensor  # (n, 3, S, S)
    tokens: torch.Tensor  # (n, L)
    noise: torch.Tensor  # (n, k, 3, S, S)
    timesteps: torch.Tensor  # (n, k)

    def __len__(self) -> int:
        return len(self.x0)

    @property
    def k(self) -> int:
        return self.noise.shape[1]

    def flat(self) -> tuple[torch.Tensor, ...]:
        """``(x0, tokens, noise, timesteps)`` with one row per draw (``n * k`` rows, image-major)."""
        k = self.k
        return (self.x0.repeat_interleave(k, 0), self.tokens.repeat_interleave(k, 0),
                self.noise.flatten(0, 1), self.timesteps.flatten())


def cat_probes(probes: list[Probe]) -> Probe:
    """One probe holding the images of several (same k)."""
    return Probe(*(torch.cat([getattr(p, f) for p in probes]) for f in ("x0", "tokens", "noise", "timesteps")))


def make_probe(x0: torch.Tensor, tokens: torch.Tensor, *, k: int = 1, seed: int = 0,
               num_train_timesteps: int = 1000) -> Probe:
    """Draw ``k`` noises and timesteps per image from ``seed``."""
    if k < 1:
        raise GovlabError(f"k (draws per image) must be >= 1, got {k}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(x0), k, *x0.shape[1:], generator=g)
    timesteps = torch.randint(0, num_train_timesteps, (len(x0), k), generator=g)
    return Probe(x0, tokens, noise, timesteps)


def train_probe(model: TextToImage, dataset: Dataset, *, k: int = 1, seed: int = 0) -> Probe:
    """Every training record with its caption and ``k`` fixed draws."""
    tokens = model.tokenizer([r["caption"] for r in dataset.records])
    return make_probe(to_float(dataset.images), tokens, k=k, seed=seed)


def prompt_probe(model: TextToImage, prompt: str, *, n_images: int = 4, k: int = 4, seed: int = 0,
                 steps: int = 20, guidance: float = 3.0) -> Probe:
    """Images the model generates for ``prompt`` (the output to attribute), with ``k`` fixed draws each."""
    images = model.generate([prompt] * n_images, seed=seed, steps=steps, guidance=guidance)
    return make_probe(to_float(images), model.tokenizer([prompt] * n_images), k=k, seed=seed + 1)


@torch.no_grad()
def probe_loss(model: TextToImage, probe: Probe, *, batch_size: int = 256) -> torch.Tensor:
    """Per-image diffusion loss averaged over the probe's draws, shape ``(n,)``."""
    was_training = model.training
    model.eval()
    x0, tokens, noise, t = probe.flat()
    out = torch.cat([model(x0[i:i + batch_size], tokens[i:i + batch_size], noise[i:i + batch_size],
                           t[i:i + batch_size]) for i in range(0, len(x0), batch_size)])
    model.train(was_training)
    return out.view(len(probe), probe.k).mean(1)


def model_output(model: TextToImage, probe: Probe) -> float:
    """The output that attribution explains and LDS checks: minus the mean probe loss (higher: the
    model explains the probe images better)."""
    return -float(probe_loss(model, probe).mean())
