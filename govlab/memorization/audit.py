"""The extraction audit's scoring: generate from training captions and count training images reproduced
under the ratio criterion, in pixel space and in the world encoder's feature space. The driver that
audits a trained run directory is ``govlab.studies.audit``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from govlab.errors import GovlabError
from govlab.eval.stats import mean_ci
from govlab.memorization.detectors import (MEMORIZED_RATIO, detection_auc, distances, mem_ratio, noise_magnitude,
                                          pixel_features, unique_images, world_features)


def is_planted(record: dict) -> bool:
    """Whether a training record is one of the data's known duplicates (the world's planted ones, or
    a folder's ``duplicate_group``); no group (null, absent, -1) is not."""
    group = record.get("duplicate_group")
    return group is not None and group >= 0


def has_groups(records: list[dict]) -> bool:
    """Whether the data names duplicate groups at all: the ground truth of a planted rate."""
    return any(is_planted(r) for r in records)


def _rate(flags) -> float | None:
    return round(float(np.mean(flags)), 4) if len(flags) else None


def audit(model, dataset, *, rows: list[int] | None = None, n: int = 4, steps: int = 20, guidance: float = 3.0,
          seed: int = 0, evaluator=None, progress: bool = True) -> tuple[dict, torch.Tensor]:
    """Generate ``n`` images per distinct caption of ``rows`` (default: all) and test each against
    its own training image(s): reproduced when own / next-nearest distance < 1/3 for some generation.

    Returns the result (rates overall, for planted duplicates and for the others, the reproduced
    list) and the (training image, closest generation) pairs, one per caption, for the grid."""
    if n < 1:
        raise GovlabError(f"-n must be >= 1, got {n}")
    rows = list(range(len(dataset))) if rows is None else rows
    uniq, image_of = unique_images(dataset.images)
    own: dict[str, set[int]] = {}
    for i, r in enumerate(dataset.records):
        own.setdefault(r["caption"], set()).add(int(image_of[i]))
    captions = list(dict.fromkeys(dataset.records[r]["caption"] for r in rows))
    chunk = max(1, 256 // n)
    gens = torch.cat([model.generate([c for c in captions[i:i + chunk] for _ in range(n)], seed=seed + i,
                                     steps=steps, guidance=guidance)
                      for i in tqdm(range(0, len(captions), chunk), desc="audit", disable=not progress)])
    spaces = {"pixel": pixel_features}
    if evaluator is not None:
        spaces["feature"] = world_features(evaluator)
    ratios, dists = {}, {}
    for space, feats in spaces.items():
        d = dists[space] = distances(feats(gens), feats(uniq))
        out = []
        for k, c in enumerate(captions):
            dk = d[k * n:(k + 1) * n]
            cols = sorted(own[c])
            d_own = dk[:, cols].min(dim=1).values
            dk = dk.clone()
            dk[:, cols] = float("inf")
            out.append((d_own / dk.min(dim=1).values.clamp_min(1e-12)).min().item())
        ratios[space] = out
    first_row = {}
    for r in rows:
        first_row.setdefault(dataset.records[r]["caption"], r)
    items = []
    for k, c in enumerate(captions):
        rec = dataset.records[first_row[c]]
        items.append({"row": first_row[c], "file": rec["file_name"], "caption": c,
                      "planted": is_planted(rec),
                      "copies": sum(1 for x in dataset.records if x["caption"] == c),
                      **{f"{s}_ratio": round(ratios[s][k], 4) for s in spaces},
                      **{s: ratios[s][k] < MEMORIZED_RATIO for s in spaces}})
    result = {"captions": len(captions), "n": n, "generations": len(gens), "steps": steps,
              "criterion": f"own / next-nearest l2 < {MEMORIZED_RATIO:.4f}", "spaces": list(spaces)}
    has_truth = has_groups(dataset.records)
    for s in spaces:
        suffix = "" if s == "pixel" else f"_{s}"
        # each rate with its 95% bootstrap interval over the captions (``*_ci``: [low, high])
        for name, keep in (("", None), ("_planted", True), ("_others", False)):
            if keep is not None and not has_truth:
                continue
            flags = [it[s] for it in items if keep is None or it["planted"] == keep]
            result[f"extraction_rate{name}{suffix}"], result[f"extraction_rate{name}{suffix}_ci"] = mean_ci(flags)
        if has_truth:
            # how well the ratio alone separates planted duplicates from the rest (lower: more memorized)
            result[f"auc_planted{suffix}"] = detection_auc([-it[f"{s}_ratio"] for it in items],
                                                           [it["planted"] for it in items])
    result["reproduced"] = [it for it in items if any(it[s] for s in spaces)]
    result["items"] = items
    # one (training image, closest generation) pair per caption, most reproduced first
    order = sorted(range(len(captions)), key=lambda k: ratios["pixel"][k])
    pixel_d = dists["pixel"]
    pairs = []
    for pair, k in enumerate(order):
        items[k]["grid_pair"] = pair  # where audit_grid.png shows it (reading order, from 0)
        col = min(own[captions[k]])
        best = int(pixel_d[k * n:(k + 1) * n, col].argmin())
        pairs += [uniq[col], gens[k * n + best]]
    return result, torch.stack(pairs)


def noise_magnitude_check(model, dataset, captions: list[str], *, timesteps=(800,), noises: int = 2,
                          seeds: int = 2, steps: int = 8, guidance: float = 3.0, unconditional: int = 128,
                          seed: int = 0, reproduced: list[bool] | None = None) -> dict:
    """How the noise-magnitude detector separates planted duplicates from the other ``captions``.

    ``auc_noise_magnitude``: the monitor's form (pure noise at ``timesteps``);
    ``auc_noise_magnitude_by_step``: Wen et al.'s trajectory form, per step of each caption's own
    guided sampling. Below 0.5 the planted captions score lower, not higher. With ``reproduced``
    (per caption: did the audit extract its image), ``auc_noise_magnitude_reproduced``: the
    monitor's form against that measured extraction instead of the planted label. Also the share of
    ``unconditional`` generations whose nearest distinct training image (pixels) is planted,
    beside the planted share of distinct images: how much the unconditional model is drawn to them.
    """
    planted = {r["caption"]: is_planted(r) for r in dataset.records}
    positive = [planted[c] for c in captions]
    first = noise_magnitude(model, model.tokenizer(captions), noises=noises, timesteps=timesteps, seed=seed)
    by_step = torch.stack([model.guidance_gaps(captions, seed=seed + k, steps=steps, guidance=guidance)
                           for k in range(seeds)]).mean(0)
    uniq, image_of = unique_images(dataset.images)
    planted_image = torch.zeros(len(uniq), dtype=torch.bool)
    for i, r in enumerate(dataset.records):
        planted_image[image_of[i]] |= is_planted(r)
    gens = model.generate([""] * unconditional, seed=seed, steps=steps, guidance=guidance)
    nearest = mem_ratio(pixel_features(gens), pixel_features(uniq))[1]
    return {"auc_noise_magnitude": detection_auc(first.numpy(), positive),
            "auc_noise_magnitude_by_step": [detection_auc(by_step[:, j].numpy(), positive)
                                            for j in range(by_step.shape[1])],
            **({} if reproduced is None else
               {"auc_noise_magnitude_reproduced": detection_auc(first.numpy(), reproduced)}),
            "unconditional_nearest_planted": _rate(planted_image[nearest].numpy()),
            "planted_share_images": _rate(planted_image.numpy())}
