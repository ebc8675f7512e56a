"""Black-box access to a model: ``k`` images per prompt, seeded, cached on disk as safetensors.

Anything that turns prompts into images can be probed: a govlab run directory or model file, a
``TextToImage``, a diffusers pipeline object, or a plain callable ``(prompts, seed) -> uint8
(B, 3, H, W)``. Each (model, prompt, seed) gets its own noise: in the black-box setting the
investigator cannot make two models share seeds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from govlab.data.cache import build_once, cache_dir
from govlab.errors import GovlabError
from govlab.io import atomic_path, sha256_file, sha256_json
from govlab.models.diffusion import TextToImage

GenerateFn = Callable[[list[str], int], torch.Tensor]


@dataclass(frozen=True)
class BlackBox:
    """A model seen only through ``generate(prompts, seed)``; ``key`` identifies its weights."""

    name: str
    key: str
    generate: GenerateFn


def load_model(model, *, name: str | None = None, steps: int = 10, guidance: float = 3.0) -> BlackBox:
    """Wrap ``model`` (run dir, ``.safetensors``, ``TextToImage``, diffusers pipeline, callable, ``BlackBox``).

    ``steps`` and ``guidance`` are the sampler settings of govlab models (part of the cache key).
    A plain callable has no weights to hash, so it needs a ``name``, used as its key.
    """
    if isinstance(model, BlackBox):
        return model
    if isinstance(model, (str, Path)):
        path = Path(model)
        file = path / "model.safetensors" if path.is_dir() else path
        if not file.is_file():
            raise GovlabError(f"{path}: no model.safetensors (not a govlab run or model file)")
        module = TextToImage.load(file)
        return _govlab_box(module, name or (path.name if path.is_dir() else path.stem),
                           sha256_file(file)[:16], steps, guidance)
    if isinstance(model, TextToImage):
        return _govlab_box(model, name or "model", module_hash(model), steps, guidance)
    if _is_pipeline(model):
        return BlackBox(name or type(model).__name__, _pipeline_hash(model), _pipeline_generate(model))
    if callable(model):
        if not name:
            raise GovlabError("a plain callable model needs a name (it is its cache key)")
        return BlackBox(name, sha256_json({"callable": name})[:16], model)
    raise GovlabError(f"cannot generate images with a {type(model).__name__}")


def sample(box: BlackBox, prompt: str, k: int, *, seed: int = 0, cache: bool = True) -> torch.Tensor:
    """``k`` images of ``prompt`` from ``box``, uint8 ``(k, 3, H, W)``; read from the cache when present."""
    path, build, generate = _entry(box, prompt, k, seed)
    if not cache:
        return generate()
    build_once(path, path.is_file, build)
    return load_file(str(path))["images"]


def sample_all(boxes: list[BlackBox], prompts: list[str], k: int, *, seed: int = 0) -> None:
    """Fill the cache with ``k`` images of every prompt from every box. Entries another process is
    generating are passed over, so that processes asking for the same samples share the work."""
    for p in prompts:
        for b in boxes:
            path, build, _ = _entry(b, p, k, seed)
            build_once(path, path.is_file, build, wait=False)


def _entry(box: BlackBox, prompt: str, k: int, seed: int):
    """``(cache path, build, generate)`` of ``k`` images of ``prompt`` from ``box``."""
    if k < 1:
        raise GovlabError(f"k must be >= 1, got {k}")
    ident = {"model": box.key, "prompt": prompt, "k": k, "seed": seed}
    digest = sha256_json(ident)
    path = cache_dir("lineage", "samples") / f"{box.key}-{digest[:16]}.safetensors"
    noise_seed = int(digest[16:24], 16)

    def generate():
        return _generate(box, prompt, k, noise_seed)

    def build():
        images = generate()
        with atomic_path(path) as tmp:
            save_file({"images": images}, str(tmp), metadata={"govlab_sample": json.dumps(ident)})

    return path, build, generate


def _generate(box: BlackBox, prompt: str, k: int, noise_seed: int) -> torch.Tensor:
    try:
        images = box.generate([prompt] * k, noise_seed)
    except Exception as e:  # any failure of a foreign model is the target's, not ours
        raise GovlabError(f"model {box.name!r} failed to generate images for {prompt!r}: "
                          f"{type(e).__name__}: {e}") from None
    return _check_images(images, k, box.name)


def _check_images(images, k: int, name: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != k \
            or images.shape[1] != 3 or images.dtype != torch.uint8:
        got = (f"{type(images).__name__} {tuple(images.shape)} {images.dtype}"
               if hasattr(images, "shape") else type(images).__name__)
        raise GovlabError(f"model {name!r} must return uint8 images of shape ({k}, 3, H, W), got {got}")
    return images.contiguous()


def _govlab_box(model: TextToImage, name: str, key: str, steps: int, guidance: float) -> BlackBox:
    def generate(prompts, seed):
        return model.generate(prompts, seed=seed, steps=steps, guidance=guidance)

    return BlackBox(name, sha256_json({"weights": key, "steps": steps, "guidance": guidance})[:16], generate)


def module_hash(module: torch.nn.Module) -> str:
    """Content hash of a module's state dict."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _is_pipeline(obj) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(obj, DiffusionPipeline)


def _pipeline_hash(pipe) -> str:
    modules = {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    return sha256_json({"pipeline": type(pipe).__name__,
                        **{k: module_hash(v) for k, v in sorted(modules.items())}})[:16]


def _pipeline_generate(pipe) -> GenerateFn:
    def generate(prompts, seed):
        out = pipe(prompt=prompts, generator=torch.Generator().manual_seed(seed), output_type="np")
        images = np.asarray(out.images)  # (B, H, W, 3) floats in [0, 1]
        return torch.from_numpy((images.clip(0, 1) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)

    return generate
