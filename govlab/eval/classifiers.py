"""Ground-truth evaluators: a small multi-head CNN trained once on the world, cached.

On world version 2 (the default) the CNN has three more heads, one per style cue (``CUE_HEADS``:
palette, texture, stroke), and is trained with counterfactual images (the glyph added to or taken
from half the images, the palette swapped on half the artists' and stock images: the labels follow
the cue), so that its watermark head reads the glyph and its source head the texture and stroke.
``govlab.eval.second`` holds a second, independent evaluator to check it against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from govlab.data.cache import build_once, cache_dir
from govlab.data.world import (LAYOUTS, PALETTES, PERSONS, SHAPES, SOURCES, STROKES, TEXTURES, WORLD_VERSION,
                               WorldConfig, cues, render, world_records)
from govlab.io import atomic_path, sha256_json

# head name -> class names; "none" where an image has no such attribute
HEADS = {
    "source": list(SOURCES),
    "shape": ["none", *SHAPES],
    "layout": list(LAYOUTS),
    "watermark": ["no", "yes"],
    "identity": ["none", *PERSONS],
}


# world version 2's style cues, one head each ("none" for a photo of a person)
CUE_HEADS = {
    "palette": ["none", *PALETTES],
    "texture": ["none", *TEXTURES],
    "stroke": ["none", *STROKES],
}


def heads_for(version: int = WORLD_VERSION) -> dict[str, list[str]]:
    """The evaluator's heads on world ``version``: ``HEADS``, and on version 2 ``CUE_HEADS`` too."""
    return dict(HEADS) if version == 1 else {**HEADS, **CUE_HEADS}


def labels(record: dict, version: int = 1) -> dict[str, int]:
    """Ground-truth class index of each head for one world record (``heads_for(version)``)."""
    out = {
        "source": HEADS["source"].index(record["source_id"]),
        "shape": HEADS["shape"].index(record["shape"] or "none"),
        "layout": HEADS["layout"].index(f"{record['count']} {record['position']}"),
        "watermark": int(bool(record["watermark"])),
        "identity": HEADS["identity"].index(record["identity"] or "none"),
    }
    if version == 2:
        c = cues(record)
        out.update({k: CUE_HEADS[k].index(c[k] or "none") for k in CUE_HEADS})
    return out


class Evaluator(nn.Module):
    """A CNN trunk with one linear head per ground-truth attribute (``heads``: name -> class names,
    default the heads of the default world version)."""

    def __init__(self, width: int = 48, heads: dict[str, list[str]] | None = None):
        super().__init__()
        self.head_names = heads or heads_for()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 128), nn.GELU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in self.head_names.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """128-d embedding of uint8 images (the world's own image encoder)."""
        return self.trunk(images.float() / 127.5 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.eval()
        out = [self(images[i:i + 512]) for i in range(0, len(images), 512)]
        return {k: torch.cat([o[k] for o in out]).argmax(1) for k in self.heads}


@dataclass(frozen=True)
class EvaluatorConfig:
    image_size: int = 16
    train_seed: int = 10_000
    test_seed: int = 20_000
    per_artist: int = 300
    epochs: int = 12
    noise: float = 0.05  # augmentation: generated images are noisier than the world's


def record_tensors(records: list[dict], size: int, version: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images (uint8, (n, 3, size, size)) and labels of ``records`` as world ``version`` draws them."""
    imgs = torch.stack([torch.from_numpy(render(r, size, version)) for r in records]).permute(0, 3, 1, 2)
    ys = [labels(r, version) for r in records]
    return imgs.contiguous(), {k: torch.tensor([y[k] for y in ys]) for k in heads_for(version)}


def world_tensors(cfg: WorldConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return record_tensors(world_records(cfg), cfg.image_size, cfg.version)


def _world(cfg: EvaluatorConfig, seed: int, scale: int, version: int = 1) -> WorldConfig:
    n = cfg.per_artist // scale
    return WorldConfig(seed=seed, image_size=cfg.image_size, per_artist=n, n_stock=n,
                       per_person=n, dup_groups=0, dup_copies=0, version=version)


def counterfactual_training_records(cfg: WorldConfig, seed: int) -> list[dict]:
    """The records of world ``cfg`` (version 2), each with the glyph flipped with probability 1/2 and,
    for an artist's or stock image, its palette swapped for a random other one with probability 1/2
    (the ground truth follows the cue): the glyph then says nothing of the source, and the palette
    little, so that a classifier must read the glyph for the watermark and texture and stroke for the
    source."""
    rng = np.random.default_rng(seed)
    out = []
    for r in world_records(cfg):
        r = dict(r)
        flip, swap, which = rng.random(), rng.random(), int(rng.integers(len(PALETTES) - 1))
        if flip < 0.5:
            r["watermark"] = not r["watermark"]
        if r["kind"] != "identity" and swap < 0.5:
            r["palette"] = [p for p in PALETTES if p != r["palette"]][which]
        out.append(r)
    return out


def accuracy(model: Evaluator, images, ys) -> dict[str, float]:
    pred = model.predict(images)
    return {k: round(float((pred[k] == ys[k]).float().mean()), 4) for k in ys}


def train_evaluator(cfg: EvaluatorConfig, *, version: int = 1, progress: bool = True) -> tuple[Evaluator, dict]:
    """Train on one seeded world, report accuracy per head on another (held out). On world version 2
    the training images are counterfactual (``counterfactual_training_records``); the held-out world
    is not."""
    torch.manual_seed(cfg.train_seed)
    if version == 1:
        x, ys = world_tensors(_world(cfg, cfg.train_seed, 1))
    else:
        x, ys = record_tensors(counterfactual_training_records(_world(cfg, cfg.train_seed, 1, 2), cfg.train_seed),
                               cfg.image_size, 2)
    xt, yt = world_tensors(_world(cfg, cfg.test_seed, 3, version))
    heads = heads_for(version)
    model = Evaluator(heads=heads)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.train_seed)
    batches = [(e, b) for e in range(cfg.epochs) for b in range(0, len(x), 128)]
    perm = None
    for epoch, start in tqdm(batches, desc="evaluator", disable=not progress, leave=False):
        if start == 0:
            perm = torch.randperm(len(x), generator=g)
        idx = perm[start:start + 128]
        xb = x[idx].float() + torch.randn(len(idx), *x.shape[1:], generator=g) * cfg.noise * 127.5
        out = model(xb.clamp(0, 255))
        loss = sum(F.cross_entropy(out[k], ys[k][idx]) for k in heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, accuracy(model, xt, yt)


def load_evaluator(image_size: int = 16, *, version: int = WORLD_VERSION,
                   progress: bool = True) -> tuple[Evaluator, dict]:
    """The cached evaluator of world ``version`` for this image size (trained on first use, a minute
    on 2 CPU cores) and its held-out accuracy per head."""
    cfg = EvaluatorConfig(image_size=image_size)
    heads = heads_for(version)
    spec = {"world": version, "cfg": cfg.__dict__, "heads": heads}
    if version == 2:
        spec["training"] = "counterfactual"
    key = sha256_json(spec)[:16]
    path = cache_dir("evaluators") / f"{key}.safetensors"

    def build():
        model, acc = train_evaluator(cfg, version=version, progress=progress)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"accuracy": json.dumps(acc)})

    build_once(path, path.is_file, build)
    with safe_open(str(path), "pt") as f:
        acc = json.loads(f.metadata()["accuracy"])
    model = Evaluator(heads=heads)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), acc
