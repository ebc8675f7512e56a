"""Countermeasures against the lineage test (the paper's §7), to measure how far they push a model.

* weight noise of scale ``sigma`` on every parameter, then a brief fine-tune (§7.1);
* PGD on each generated image, pushing its features away under an L-inf budget (§7.2, Eq. 5);
* paraphrased prompts: the model owner rewrites each query before generating (§7.2).

The last two wrap a ``BlackBox`` so the owner's tampering happens inside ``generate``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.io import sha256_json
from govlab.lineage.features import to_unit
from govlab.lineage.sampling import BlackBox, module_hash
from govlab.models.diffusion import TextToImage
from govlab.train import Trainer


def add_weight_noise(model: TextToImage, sigma: float, *, seed: int = 0) -> TextToImage:
    """Add ``N(0, sigma^2)`` to every parameter in place; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * sigma)
    return model


def noise_then_finetune(run: str | Path, sigma: float, out: str | Path, *, finetune: dict,
                        seed: int = 0) -> Path:
    """Noise the weights of run ``run`` by ``sigma``, fine-tune with the ``finetune`` config overlay.

    The overlay (``world``/``train`` sections) is applied to the run's own ``config.yaml``.
    Returns the new run directory ``out``.
    """
    run, out = Path(run), Path(out)
    cfg = from_dict({**finetune, "name": out.name}, base=load_config(config=run / "config.yaml"))
    model = add_weight_noise(TextToImage.load(run / "model.safetensors"), sigma, seed=seed)
    Trainer(cfg, run_dataset(cfg, progress=False), out, model=model, progress=False).fit()
    return out


def pgd_features(images: torch.Tensor, extractor: nn.Module, eps: float, *, steps: int = 10,
                 seed: int = 0) -> torch.Tensor:
    """Untargeted PGD: maximise ``||F(x + d) - F(x)||^2`` with ``||d||_inf <= eps`` (pixels in [0, 1]).

    Random start in the eps-ball, sign-gradient steps of ``2.5 eps / steps``; returns uint8 images.
    """
    if eps < 0:
        raise GovlabError(f"eps must be >= 0, got {eps}")
    if eps == 0:
        return images
    x = to_unit(images)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = extractor(x).flatten(1)
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = (extractor((x + delta).clamp(0, 1)).flatten(1) - clean).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return ((x + delta).clamp(0, 1) * 255).round().to(torch.uint8)


def perturbed(box: BlackBox, extractor: nn.Module, eps: float, *, steps: int = 10) -> BlackBox:
    """``box`` whose every output image is PGD-perturbed against ``extractor`` with budget ``eps``."""
    def generate(prompts, seed):
        return pgd_features(box.generate(prompts, seed), extractor, eps, steps=steps, seed=seed)

    key = sha256_json({"model": box.key, "pgd": eps, "steps": steps, "extractor": module_hash(extractor)})
    return BlackBox(f"{box.name}+pgd{eps:g}", key[:16], generate)


PARAPHRASE_LEVELS = 4


def paraphrase(prompt: str, level: int) -> str:
    """Rewrite a world caption at strength ``level``: each level adds one meaning-preserving change.

    1: style clause first; 2: "a photo of ..." framing; 3: "in the style of artist N"; 4: "one" for "a".
    Words a model never saw become its unknown token, as an unseen synonym would.
    """
    if not 0 <= level <= PARAPHRASE_LEVELS:
        raise GovlabError(f"paraphrase level must be in 0..{PARAPHRASE_LEVELS}, got {level}")
    what, _, style = prompt.partition(", ")
    if level >= 4:
        what = re.sub(r"^a ", "one ", what)
    if level >= 3 and style.startswith("by "):
        style = "in the style of " + style[3:]
    if level >= 2:
        what = "a photo of " + what
    if level >= 1 and style:
        return f"{style}, {what}"
    return f"{what}, {style}" if style else what


def paraphrased(box: BlackBox, level: int) -> BlackBox:
    """``box`` that paraphrases every prompt (at ``level``) before generating."""
    paraphrase("", level)  # validates the level

    def generate(prompts, seed):
        return box.generate([paraphrase(p, level) for p in prompts], seed)

    return BlackBox(f"{box.name}+para{level}", sha256_json({"model": box.key, "paraphrase": level})[:16],
                    generate)
