"""Ground-truth evaluators: a small multi-head CNN trained once on the world, cached."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from govlab.data.cache import build_once, cache_dir
from govlab.data.world import LAYOUTS, PERSONS, SHAPES, SOURCES, WORLD_VERSION, WorldConfig, render, world_records
from govlab.io import atomic_path, sha256_json

# head name -> class names; "none" where an image has no such attribute
HEADS = {
    "source": list(SOURCES),
    "shape": ["none", *SHAPES],
    "layout": list(LAYOUTS),
    "watermark": ["no", "yes"],
    "identity": ["none", *PERSONS],
}


def labels(record: dict) -> dict[str, int]:
    """Ground-truth class index of each head for one world record."""
    return {
        "source": HEADS["source"].index(record["source_id"]),
        "shape": HEADS["shape"].index(record["shape"] or "none"),
        "layout": HEADS["layout"].index(f"{record['count']} {record['position']}"),
        "watermark": int(bool(record["watermark"])),
        "identity": HEADS["identity"].index(record["identity"] or "none"),
    }


class Evaluator(nn.Module):
    """A CNN trunk with one linear head per ground-truth attribute."""

    def __init__(self, width: int = 48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 128), nn.GELU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in HEADS.items()})

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
        return {k: torch.cat([o[k] for o in out]).argmax(1) for k in HEADS}


@dataclass(frozen=True)
class EvaluatorConfig:
    image_size: int = 16
    train_seed: int = 10_000
    test_seed: int = 20_000
    per_artist: int = 300
    epochs: int = 12
    noise: float = 0.05  # augmentation: generated images are noisier than the world's


def world_tensors(cfg: WorldConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    recs = world_records(cfg)
    imgs = torch.stack([torch.from_numpy(render(r, cfg.image_size)) for r in recs]).permute(0, 3, 1, 2)
    ys = [labels(r) for r in recs]
    return imgs.contiguous(), {k: torch.tensor([y[k] for y in ys]) for k in HEADS}


def _world(cfg: EvaluatorConfig, seed: int, scale: int) -> WorldConfig:
    n = cfg.per_artist // scale
    return WorldConfig(seed=seed, image_size=cfg.image_size, per_artist=n, n_stock=n,
                       per_person=n, dup_groups=0, dup_copies=0)


def accuracy(model: Evaluator, images, ys) -> dict[str, float]:
    pred = model.predict(images)
    return {k: round(float((pred[k] == ys[k]).float().mean()), 4) for k in HEADS}


def train_evaluator(cfg: EvaluatorConfig, *, progress: bool = True) -> tuple[Evaluator, dict]:
    """Train on one seeded world, report accuracy per head on another (held out)."""
    torch.manual_seed(cfg.train_seed)
    x, ys = world_tensors(_world(cfg, cfg.train_seed, 1))
    xt, yt = world_tensors(_world(cfg, cfg.test_seed, 3))
    model = Evaluator()
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
        loss = sum(F.cross_entropy(out[k], ys[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, accuracy(model, xt, yt)


def load_evaluator(image_size: int = 16, *, progress: bool = True) -> tuple[Evaluator, dict]:
    """The cached evaluator for this image size (trained on first use) and its held-out accuracy."""
    cfg = EvaluatorConfig(image_size=image_size)
    key = sha256_json({"world": WORLD_VERSION, "cfg": cfg.__dict__, "heads": HEADS})[:16]
    path = cache_dir("evaluators") / f"{key}.safetensors"

    def build():
        model, acc = train_evaluator(cfg, progress=progress)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"accuracy": json.dumps(acc)})

    build_once(path, path.is_file, build)
    with safe_open(str(path), "pt") as f:
        acc = json.loads(f.metadata()["accuracy"])
    model = Evaluator()
    model.load_state_dict(load_file(str(path)))
    return model.eval(), acc
