"""Image encoders for the embedding rules: the world's own (default) or a local CLIP folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from govlab.errors import GovlabError

CLIP_TYPES = ("clip", "clip_vision_model")


class WorldEncoder:
    """The 128-d trunk of the world's evaluator (``govlab.eval.classifiers``): a CNN trained once on a
    world of another seed, never on the data it tags. Images are resized to its size."""

    def __init__(self, image_size: int = 16, *, progress: bool = True):
        from govlab.eval.classifiers import load_evaluator

        self.image_size = image_size
        from govlab.tagging.world import TAGGED_WORLD_VERSION

        self.model, _ = load_evaluator(image_size, version=TAGGED_WORLD_VERSION, progress=progress)
        self.name = f"world evaluator ({image_size}px)"

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        s = self.image_size
        arr = np.stack([np.asarray(im.convert("RGB").resize((s, s), Image.BICUBIC) if im.size != (s, s)
                                   else im.convert("RGB"), dtype=np.uint8) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        return torch.cat([self.model.features(x[i:i + 512]) for i in range(0, len(x), 512)]).numpy()


class ClipEncoder:
    """A local ``CLIPModel`` (image features, after the projection) or ``CLIPVisionModel`` (pooled
    output) folder, loaded with ``from_pretrained`` and never downloaded."""

    def __init__(self, path: str | Path):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPVisionModel

        path = Path(path)
        config = path / "config.json"
        if not path.is_dir() or not config.is_file():
            raise GovlabError(f"{path}: not a CLIP model folder (no config.json)")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise GovlabError(f"{config}: not a valid JSON model config") from None
        if model_type not in CLIP_TYPES:
            raise GovlabError(f"{path}: not a CLIP model (config.json model_type {model_type!r}; "
                              f"expected {' or '.join(CLIP_TYPES)})")
        cls = CLIPModel if model_type == "clip" else CLIPVisionModel
        try:
            self.model = cls.from_pretrained(path, local_files_only=True).eval()
        except (OSError, ValueError, RuntimeError) as e:
            raise GovlabError(f"{path}: cannot load the CLIP model ({str(e).splitlines()[0]})") from None
        size = self.model.config.vision_config.image_size if model_type == "clip" else self.model.config.image_size
        if (path / "preprocessor_config.json").is_file():
            self.processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        else:
            self.processor = CLIPImageProcessor(size={"shortest_edge": size},
                                                crop_size={"height": size, "width": size})
        self.clip = model_type == "clip"
        self.name = f"{cls.__name__} {path}"

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), 64):
            pixels = self.processor(images=[im.convert("RGB") for im in images[i:i + 64]],
                                    return_tensors="pt")["pixel_values"]
            if self.clip:
                feats = self.model.get_image_features(pixel_values=pixels)
                feats = getattr(feats, "pooler_output", feats)
            else:
                feats = self.model(pixel_values=pixels).pooler_output
            out.append(feats.float())
        return torch.cat(out).numpy()


def load_encoder(path: str | Path | None = None, *, image_size: int = 16, progress: bool = True):
    """``path``: a local CLIP folder; None: the world's own encoder."""
    return WorldEncoder(image_size, progress=progress) if path is None else ClipEncoder(path)
