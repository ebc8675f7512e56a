"""Structural vs statistical attribution, scored against ground truth by retraining.

For one prompt per artist, each method scores every source; the ground truth is (a) leave-one-source-out
retraining and (b) the linear datamodeling score over random half-subsets of the sources. The model
output throughout is minus the diffusion loss, at fixed draws, on images the full model generated for
the prompt (``govlab.attribution.probe``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

from scipy.stats import spearmanr

from govlab.attribution.aggregate import per_source
from govlab.attribution.dtrak import dtrak_scores
from govlab.attribution.lds import half_subsets, lds
from govlab.attribution.probe import cat_probes, model_output, prompt_probe, train_probe
from govlab.attribution.retrain import retrain, retrain_all
from govlab.attribution.tracin import tracin_scores
from govlab.config import RunConfig
from govlab.data.cache import run_dataset
from govlab.data.world import ARTISTS, caption_for
from govlab.models.diffusion import TextToImage
from govlab.provenance.attribute import slot_ablation_scores
from govlab.routing.hook import attach
from govlab.train import CHECKPOINT_DIR

METHODS = ("structural", "tracin", "dtrak")


@dataclass(frozen=True)
class CompareConfig:
    """Sizes of the comparison (the run config is separate)."""

    n_subsets: int = 32  # LDS retrainings
    n_images: int = 4  # generated images per prompt
    k_test: int = 4  # fixed draws per generated image
    k_train: int = 1  # fixed draws per training image (TracIn)
    k_dtrak: int = 4  # D-TRAK's timesteps per training image
    proj_dim: int = 512  # D-TRAK's random projection
    sample_steps: int = 20
    seed: int = 0


def artist_prompts(sources: list[str]) -> list[dict]:
    """One prompt per artist in the data: ``[{"prompt": ..., "artist": ...}]``."""
    out = []
    for a in ARTISTS:
        if a.source_id in sources:
            attrs = {"kind": "artist", "source_id": a.source_id, "shape": "circle", "color": "red",
                     "count": 1, "position": "center"}
            out.append({"prompt": caption_for(attrs), "artist": a.source_id})
    return out


def _top(scores: dict[str, float]) -> str:
    return max(sorted(scores), key=lambda s: scores[s])


def _mean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return round(statistics.fmean(xs), 4) if xs else math.nan


def compare(cfg: RunConfig, cc: CompareConfig = CompareConfig(), *, methods=METHODS,
            progress: bool = True) -> dict:
    """Run the whole comparison; returns ``{"summary": {...}, "prompts": [...], "config": {...}}``."""
    full = run_dataset(cfg, progress=progress)
    trained, _ = attach(cfg, full)  # the records the model was trained on (after ingestion)
    sources = full.sources
    run = retrain(cfg, full, sources)
    model = TextToImage.load(run / "model.safetensors")
    checkpoints = sorted((run / CHECKPOINT_DIR).glob("step_*.safetensors"))
    prompts = artist_prompts(sources)
    probes = [prompt_probe(model, p["prompt"], n_images=cc.n_images, k=cc.k_test, seed=cc.seed + i,
                           steps=cc.sample_steps) for i, p in enumerate(prompts)]
    n = cc.n_images

    scores: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if "structural" in methods:  # govlab.provenance's slot ablation; sources without a slot score 0
        ranked = [slot_ablation_scores(model, pr) for pr in probes]
        scores["structural"] = [{s: 0.0 for s in sources} | {r["source"]: r["score"] for r in rk} for rk in ranked]
        seconds["structural"] = time.perf_counter() - t0
    for name in ("tracin", "dtrak"):
        if name not in methods:
            continue
        t0 = time.perf_counter()
        test = cat_probes(probes)
        if name == "tracin":
            per_image = tracin_scores(model, checkpoints, cfg.train.lr, train_probe(model, trained, k=cc.k_train,
                                      seed=cc.seed), test)
        else:
            per_image = dtrak_scores(model, checkpoints, train_probe(model, trained, k=cc.k_dtrak, seed=cc.seed),
                                     test, proj_dim=cc.proj_dim, seed=cc.seed)
        scores[name] = [per_source(per_image[i * n:(i + 1) * n].mean(0), trained.records)
                        for i in range(len(prompts))]
        seconds[name] = time.perf_counter() - t0

    base = [model_output(model, pr) for pr in probes]
    loo_models = retrain_all(cfg, full, [[s for s in sources if s != d] for d in sources], desc="leave-one-out",
                             progress=progress)
    loo = [{d: base[i] - model_output(m, pr) for d, m in zip(sources, loo_models)} for i, pr in enumerate(probes)]
    subsets = half_subsets(sources, cc.n_subsets, seed=cc.seed)
    lds_models = retrain_all(cfg, full, subsets, desc="LDS subsets", progress=progress)
    actual = [[model_output(m, pr) for m in lds_models] for pr in probes]

    rows = []
    for i, p in enumerate(prompts):
        row = {**p, "loo": loo[i], "loo_top": _top(loo[i]), "lds_actual": actual[i]}
        for name, per in scores.items():
            s = per[i]
            rho = spearmanr([s[d] for d in sources], [loo[i][d] for d in sources]).statistic
            row[name] = {"scores": s, "top": _top(s), "lds": lds(s, subsets, actual[i]), "loo_spearman": float(rho)}
        rows.append(row)
    summary = {"prompts": len(prompts), "sources": len(sources), "lds_subsets": len(subsets),
               "loo_top1": _mean(r["loo_top"] == r["artist"] for r in rows)}
    for name in scores:
        summary[f"lds_{name}"] = _mean(r[name]["lds"] for r in rows)
        summary[f"top1_{name}"] = _mean(r[name]["top"] == r["artist"] for r in rows)
        summary[f"top1_loo_{name}"] = _mean(r[name]["top"] == r["loo_top"] for r in rows)
        summary[f"loo_spearman_{name}"] = _mean(r[name]["loo_spearman"] for r in rows)
        summary[f"time_{name}_s"] = round(seconds[name], 4)
    if "structural" in seconds and "tracin" in seconds:
        summary["speedup_structural_vs_tracin"] = round(seconds["tracin"] / seconds["structural"], 1)
    return {"summary": summary, "prompts": rows, "subsets": subsets, "config": asdict(cc),
            "run_config_hash": cfg.hash()}
