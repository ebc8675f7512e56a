"""Watermark removal on world version 2, judged against retraining without the watermarked images.

On world version 2 the watermark glyph is on a known share of every kind of image
(``govlab.data.world.WATERMARK_SHARE``) and no caption mentions it, so the routed model's watermark
adapter cannot be switched on by a word: it acts on every prompt and only the watermarked samples
train it (``routing.hook``: the always-on adapter). Dropping it (``scale_slot(model, "watermark",
0)``) removes what they taught. Scored by the world's evaluator, whose watermark head reads the glyph
itself (``govlab bench evaluators``: ``watermark_counterfactual_acc``), as the glyph rate among
generations from stock prompts and from every other prompt (artists', persons'), each with a 95%
bootstrap interval over generations (hierarchical over training seeds where several are trained):

- ``routed`` and ``routed_dropped``: the routed model, before and after the drop;
- ``unrouted`` and ``unrouted_dropped``: the same expanded model trained with plain gradients (every
  sample trains the adapter and the shared layers), before and after the same drop;
- ``retrain``: the routed config trained without the watermarked images: the oracle.

The training data's own glyph share per prompt kind is printed beside them (``data_rate``): what a
model that copies its data draws. Trainings are kept in the govlab cache and reused.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from govlab.config import RunConfig, from_dict, load_config
from govlab.data.cache import cache_dir, run_dataset
from govlab.data.world import WATERMARK_SHARE
from govlab.errors import GovlabError
from govlab.eval.classifiers import load_evaluator
from govlab.eval.scores import eval_prompts
from govlab.eval.stats import with_interval
from govlab.io import write_json
from govlab.models.diffusion import TextToImage
from govlab.routing.slots import scale_slot
from govlab.studies.localization import configs, seed_suffix, train_one
from govlab.studies.removal import figures

KINDS = ("stock", "other")
VARIANTS = ("routed", "routed_dropped", "unrouted", "unrouted_dropped", "retrain")
LABELS = {"routed": "routed", "routed_dropped": "routed, watermark adapter dropped", "unrouted": "unrouted",
          "unrouted_dropped": "unrouted, the same adapter dropped",
          "retrain": "retrained without the watermarked images (oracle)"}
CATEGORY = "watermark"


def study_config(quick: bool) -> RunConfig:
    """Smoke-sized model and world, 480 steps at batch 32 (``quick``), or the ``routed`` preset; world
    version 2, routed with the preset's policy (watermark sequestered)."""
    if quick:
        return from_dict({"name": "watermark-quick", "routing": {"mode": "routed"},
                          "train": {"steps": 480, "batch_size": 32, "warmup_steps": 20, "checkpoint_every": 240},
                          "eval": {"per_prompt": 16, "steps": 8}}, base=load_config("smoke"))
    return replace(load_config("routed"), name="watermark")


@torch.no_grad()
def glyphs(model: TextToImage, prompts: list[dict], *, steps: int, guidance: float, seed: int,
           evaluator) -> dict[str, np.ndarray]:
    """One generation per prompt; the watermark head's 0/1 verdict per image, by prompt kind."""
    images = model.generate([p["caption"] for p in prompts], seed=seed, steps=steps, guidance=guidance)
    seen = evaluator.predict(images)["watermark"].numpy().astype(float)
    stock = np.array([p["kind"] == "stock" for p in prompts])
    return {"stock": seen[stock], "other": seen[~stock]}


def data_rates(records: list[dict]) -> dict:
    """The training data's glyph share among stock images and among all others, with the world's
    intended shares per kind."""
    wm = np.array([CATEGORY in r["categories"] for r in records], float)
    stock = np.array([r["kind"] == "stock" for r in records])
    return {"stock": round(float(wm[stock].mean()), 4), "other": round(float(wm[~stock].mean()), 4),
            "world_share": dict(WATERMARK_SHARE)}


def watermark(cfg: RunConfig | None = None, *, quick: bool = True, seeds: int = 1, per_prompt: int | None = None,
              workdir: str | Path | None = None, progress: bool = False) -> dict:
    """Train (or reuse) the routed, unrouted and oracle models per training seed, drop the watermark
    adapter and score the glyph rates with intervals."""
    cfg = cfg or study_config(quick)
    if cfg.world.version < 2:
        raise GovlabError(f"watermark study: world version {cfg.world.version} puts the watermark on exactly the "
                          "stock images (the confound this study avoids); use world.version 2")
    if CATEGORY not in cfg.routing.sequestered:
        raise GovlabError(f"watermark study: routing.sequestered {list(cfg.routing.sequestered)} lacks 'watermark', "
                          "so the routed model has no watermark adapter to drop")
    if seeds < 1:
        raise GovlabError(f"watermark study: seeds must be >= 1, got {seeds}")
    workdir = Path(workdir) if workdir else cache_dir("studies", "watermark", cfg.hash())
    e = cfg.eval
    per_prompt = per_prompt or e.per_prompt
    dataset = run_dataset(cfg, progress=progress)
    prompts = eval_prompts(dataset.sources, per_prompt, seed=cfg.train.seed)
    evaluator = load_evaluator(cfg.model.image_size, version=cfg.world.version, progress=progress)[0]
    per: dict[str, list] = {k: [] for k in VARIANTS}

    def score(model):
        return glyphs(model, prompts, steps=e.steps, guidance=e.guidance, seed=cfg.train.seed, evaluator=evaluator)

    for s in tqdm(range(seeds), desc="watermark seeds", disable=not progress, leave=False):
        runs = configs(cfg, s)
        paths = {name: train_one(c, workdir / f"{name}{seed_suffix(s)}",
                                 exclude_category=CATEGORY if name == "retrain" else None, progress=progress)
                 for name, c in runs.items()}
        for name in ("routed", "unrouted"):
            model = TextToImage.load(paths[name])
            per[name].append(score(model))
            scale_slot(model, CATEGORY, 0.0)
            per[f"{name}_dropped"].append(score(model))
        per["retrain"].append(score(TextToImage.load(paths["retrain"])))

    variants = {v: figures(per[v], names=KINDS) for v in VARIANTS}
    oracle, dropped = variants["retrain"], variants["routed_dropped"]
    verdict = {}
    for k in KINDS:
        lo, hi = oracle[f"{k}_ci"] or [oracle[k], oracle[k]]
        verdict[k] = {"routed_dropped": dropped[k], "retrain_ci": [lo, hi], "within": bool(lo <= dropped[k] <= hi)}
    verdict["all_within"] = all(verdict[k]["within"] for k in KINDS)
    return {"quick": quick, "seeds": seeds, "per_prompt": per_prompt, "config": cfg.name, "config_hash": cfg.hash(),
            "world_version": cfg.world.version, "train_steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
            "generations": {k: variants["routed"][f"{k}_n"] for k in KINDS},
            "data_rate": data_rates(dataset.records), "variants": variants, "verdict": verdict}


def table(result: dict) -> str:
    """The markdown table: glyph rate on stock prompts and on other prompts, per variant."""
    rows = ["| variant | glyph rate, stock prompts | glyph rate, other prompts |", "| --- | --- | --- |",
            f"| training data | {result['data_rate']['stock']:.2f} | {result['data_rate']['other']:.2f} |"]
    for v in VARIANTS:
        f = result["variants"][v]
        rows.append(f"| {LABELS[v]} | {with_interval(f['stock'], f['stock_ci'])} | "
                    f"{with_interval(f['other'], f['other_ci'])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    """``python -m govlab.studies.watermark [--quick|--full] [--seeds S] [--out FILE]``: the study;
    prints the table and writes the result JSON to FILE when asked."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m govlab.studies.watermark")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke-sized trainings (the default)")
    mode.add_argument("--full", action="store_true", help="the routed preset's trainings, several seeds")
    p.add_argument("--seeds", type=int, default=None, help="training seeds (default: 1 quick, 3 full)")
    p.add_argument("--per-prompt", type=int, default=None)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (3 if args.full else 1)
    try:
        result = watermark(quick=not args.full, seeds=seeds, per_prompt=args.per_prompt, progress=True)
    except GovlabError as e:
        p.error(str(e))
    if args.out:
        write_json(Path(args.out), result)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
