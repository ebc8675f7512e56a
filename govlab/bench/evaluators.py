"""``govlab bench evaluators``: are the ground-truth evaluators reading the cues they claim to read?

On world version 2, for the CNN (``govlab.eval.classifiers``) and the second, independent evaluator
(``govlab.eval.second``: hand-crafted features, logistic regression, another training world):

- ``held_out``: accuracy per head on a held-out world (seed 20000);
- ``watermark_counterfactual_acc``: the watermark head on glyph pairs (every held-out image without
  and with the glyph, all else identical): right on both members means it reads the glyph;
- ``style_palette_swap_acc``: the source head on artists' images moved to another artist's palette
  (texture and stroke kept): right means it reads texture and stroke, not the palette;
- ``counterfactual``: every head's accuracy on both sets (the ground truth follows the changed cue);
- ``agreement``: per head, the share of generated images (a small trained model's, the ``smoke``
  preset's, on the probe prompts; without ``--quick``: the same model trained 400 steps) on which the two
  evaluators agree, and ``agreement_held_out`` the same on the held-out world's images.

Every figure with a 95% percentile-bootstrap interval over images (``*_ci``).
"""

from __future__ import annotations

import time

import torch

from govlab.config import from_dict, load_config
from govlab.data.cache import cache_dir
from govlab.data.counterfactual import glyph_pairs, held_out_world, palette_swaps
from govlab.data.world import world_records
from govlab.eval.classifiers import heads_for, load_evaluator, record_tensors
from govlab.eval.scores import probe_prompts
from govlab.eval.second import load_second
from govlab.eval.stats import mean_ci

GOALS = {"watermark_counterfactual_acc": 0.95, "style_palette_swap_acc": 0.90}


def _acc(pred: dict, ys: dict) -> dict:
    out = {}
    for k in ys:
        m, ci = mean_ci((pred[k] == ys[k]).numpy().astype(float))
        out[k] = {"acc": m, "ci": ci}
    return out


def agreement(a, b, images: torch.Tensor) -> dict:
    """Per head, the share of ``images`` on which evaluators ``a`` and ``b`` give the same class."""
    pa, pb = a.predict(images), b.predict(images)
    out = {}
    for k in heads_for(2):
        m, ci = mean_ci((pa[k] == pb[k]).numpy().astype(float))
        out[k] = {"agreement": m, "ci": ci}
    return out


def test_sets(n: int, size: int = 16) -> dict[str, tuple[torch.Tensor, dict]]:
    """Images and labels of the held-out world (``n`` images per source, seed 20000), its glyph pairs
    (both members) and its artists' palette swaps."""
    world = held_out_world(n=n, image_size=size)
    pairs = glyph_pairs(world)
    return {"held_out": record_tensors(world_records(world), size, 2),
            "glyph": record_tensors([a for a, _ in pairs] + [b for _, b in pairs], size, 2),
            "palette_swap": record_tensors([b for _, b in palette_swaps(world) if b["kind"] == "artist"], size, 2)}


def evaluator_figures(evaluator, sets: dict) -> dict:
    """Held-out and counterfactual accuracies of one evaluator on ``test_sets``."""
    held, glyph, swap = (_acc(evaluator.predict(sets[k][0]), sets[k][1]) for k in ("held_out", "glyph", "palette_swap"))
    return {"held_out": held, "counterfactual": {"glyph": glyph, "palette_swap": swap},
            "watermark_counterfactual_acc": glyph["watermark"]["acc"],
            "watermark_counterfactual_acc_ci": glyph["watermark"]["ci"],
            "style_palette_swap_acc": swap["source"]["acc"], "style_palette_swap_acc_ci": swap["source"]["ci"]}


def generations(quick: bool, progress: bool = False) -> tuple[torch.Tensor, list[dict], str]:
    """Images a small trained model (cached) generates for the probe prompts: the ``smoke`` preset
    (``quick``), or the smoke model trained 400 steps at batch 32."""
    from govlab.models.diffusion import TextToImage
    from govlab.studies.localization import train_one

    cfg = load_config("smoke")
    if not quick:
        cfg = from_dict({"name": "smoke-400", "train": {"steps": 400, "batch_size": 32, "checkpoint_every": 200}},
                        base=cfg)
    path = train_one(cfg, cache_dir("bench", "evaluators", cfg.hash()), progress=progress)
    model = TextToImage.load(path)
    sources = [f"artist_{i}" for i in range(cfg.world.n_artists)] + ["stockco", "webcrawl"]
    probes = probe_prompts(sources, 2 if quick else 8, seed=0)
    with torch.no_grad():
        images = model.generate([p["caption"] for p in probes], seed=0, steps=cfg.eval.steps,
                                guidance=cfg.eval.guidance)
    return images, probes, cfg.name


def bench_evaluators(*, quick: bool = False, progress: bool = False) -> dict:
    """The figures above (``quick``: 24 held-out images per source and the smoke model's generations;
    else 100 and the smoke model trained 400 steps)."""
    t0 = time.perf_counter()
    cnn, _ = load_evaluator(16, progress=progress)
    second, _ = load_second(16, progress=progress)
    train_s = time.perf_counter() - t0
    n = 24 if quick else 100
    sets = test_sets(n)
    first, other = evaluator_figures(cnn, sets), evaluator_figures(second, sets)
    images, probes, name = generations(quick, progress)
    out = {
        "world_version": 2, "images_per_source": n,
        "watermark_counterfactual_acc": first["watermark_counterfactual_acc"],
        "watermark_counterfactual_acc_ci": first["watermark_counterfactual_acc_ci"],
        "style_palette_swap_acc": first["style_palette_swap_acc"],
        "style_palette_swap_acc_ci": first["style_palette_swap_acc_ci"],
        "goals": GOALS,
        "goals_met": {k: first[k] is not None and first[k] >= g for k, g in GOALS.items()},
        "held_out": first["held_out"], "counterfactual": first["counterfactual"],
        "second": other,
        "agreement": agreement(cnn, second, images), "agreement_images": len(images), "agreement_model": name,
        "agreement_held_out": agreement(cnn, second, sets["held_out"][0]),
        "evaluators_seconds": round(train_s, 2),
    }
    return out
