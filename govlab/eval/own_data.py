"""Figures of a model trained on a folder that is not the world, measured on that folder's own data.

The evaluators' scores (style, shape, watermark, identity) need the world's ground truth; a user's
folder has none, so its model is scored against its own training images: generations from a caption
sampled from each source's records, and which training image (pixels) each generation lands nearest.
"""

from __future__ import annotations

import numpy as np
import torch

from govlab.eval.classifiers import labels
from govlab.eval.stats import mean_ci
from govlab.memorization.detectors import distances, pixel_features, unique_images

WORLD = "world"
OWN_DATA = "own-data"
WORLD_KINDS = ("artist", "stock", "identity")
WORLD_ONLY = "style, shape, watermark and identity scores (the world's evaluators need its ground truth)"


def has_world_truth(records: list[dict]) -> bool:
    """Whether every record carries the world's ground truth (a world folder, or a version of one):
    what the evaluators' scores are measured against."""
    try:
        return all(r.get("kind") in WORLD_KINDS and labels(r) is not None for r in records)
    except (KeyError, ValueError, TypeError, AttributeError):
        return False


def scored_against(cfg, dataset) -> str:
    """``"world"`` for the embedded world or a folder holding the world's ground truth, else ``"own-data"``."""
    return WORLD if cfg.data is None or has_world_truth(dataset.records) else OWN_DATA


def own_prompts(dataset, per_source: int, seed: int = 0) -> list[dict]:
    """``per_source`` captions sampled (seeded) from each source's records, preferring non-empty ones."""
    rng = np.random.default_rng(seed)
    out = []
    for source in dataset.sources:
        rows = [i for i, r in enumerate(dataset.records) if r["source_id"] == source]
        captioned = [i for i in rows if dataset.records[i]["caption"].strip()] or rows
        pick = rng.choice(captioned, size=per_source, replace=len(captioned) < per_source)
        out += [{"kind": "own", "source_id": source, "row": int(i), "caption": dataset.records[i]["caption"]}
                for i in sorted(pick.tolist())]
    return out


def score_own_images(images: torch.Tensor, probes: list[dict], dataset, *, seed: int = 0) -> dict:
    """Each generation's nearest distinct training image in pixel space (l2 / sqrt(dim), pixels in
    [-1, 1]): whether it comes from the prompted source (against the chance that a uniformly drawn
    distinct training image does), and how far it is; means with 95% bootstrap intervals."""
    uniq, image_of = unique_images(dataset.images)
    sources_of: list[set] = [set() for _ in range(len(uniq))]
    for i, r in enumerate(dataset.records):
        sources_of[int(image_of[i])].add(r["source_id"])
    d = distances(pixel_features(images), pixel_features(uniq))
    dist, nearest = d.min(dim=1)
    want = [p["source_id"] for p in probes]
    hit = np.array([w in sources_of[int(j)] for w, j in zip(want, nearest)], float)
    share = {s: sum(s in so for so in sources_of) / len(uniq) for s in dataset.sources}
    out = {"n_images": len(probes), "n_sources": len(dataset.sources), "distinct_training_images": len(uniq)}
    if len(dataset.sources) > 1:
        acc, ci = mean_ci(hit, seed=seed)
        out |= {"nearest_source_acc": acc, "nearest_source_acc_ci": ci,
                "chance_nearest_source": round(float(np.mean([share[w] for w in want])), 4),
                "nearest_source_acc_by_source": {s: mean_ci(hit[np.array(want) == s], seed=seed)[0]
                                                 for s in dataset.sources}}
    else:
        out["nearest_source_acc"] = None  # one source: every generation's nearest image is from it
    mean, ci = mean_ci(dist.numpy(), seed=seed)
    out |= {"nearest_train_distance": mean, "nearest_train_distance_ci": ci}
    return out


def score_own(model, dataset, *, per_prompt: int = 4, steps: int = 20, guidance: float = 3.0,
              seed: int = 0) -> tuple[dict, torch.Tensor, list[dict]]:
    """Generate ``4 * per_prompt`` images per source from its own captions and score them; returns
    (scores, images, probes) as ``govlab.eval.score_model`` does for the world."""
    probes = own_prompts(dataset, 4 * per_prompt, seed)
    images = model.generate([p["caption"] for p in probes], seed=seed, steps=steps, guidance=guidance)
    return score_own_images(images, probes, dataset, seed=seed), images, probes


def score_data(model, cfg, dataset, *, sources: list[str] | None = None) -> tuple[dict, torch.Tensor, list[dict]]:
    """Score ``model`` as a run of ``cfg`` on ``dataset`` is scored: the evaluators' scores for the
    world (on ``sources``, default the data's), else ``score_own``. Returns (scores, images, probes)."""
    from govlab.eval.scores import score_model

    e = cfg.eval
    if scored_against(cfg, dataset) == WORLD:
        return score_model(model, sources or dataset.sources, per_prompt=e.per_prompt, steps=e.steps,
                           guidance=e.guidance, seed=cfg.train.seed, version=cfg.world.version)
    return score_own(model, dataset, per_prompt=e.per_prompt, steps=e.steps, guidance=e.guidance,
                     seed=cfg.train.seed)


def source_captions(run, source: str, n: int) -> list[str]:
    """Up to ``n`` distinct non-empty captions of ``source``'s records in the data a run was trained on
    (its ``config.yaml`` ``data`` folder; metadata only, no images)."""
    from pathlib import Path

    from govlab.config import from_dict, read_yaml
    from govlab.data.dataset import read_metadata

    cfg = from_dict(read_yaml(Path(run) / "config.yaml"), where=str(Path(run) / "config.yaml"))
    if cfg.data is None:
        return []
    captions = [r["caption"] for r in read_metadata(Path(cfg.data)) if r["source_id"] == source]
    return list(dict.fromkeys(c for c in captions if c.strip()))[:n]
