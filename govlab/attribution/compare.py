"""Structural vs statistical attribution, scored against ground truth by retraining.

Four query sets, each answered by every method that can: prompts naming an artist (``named``),
prompts naming none (``unnamed``), generated images with no caption (``images``: the images the
model generated for the named prompts, attributed as pictures, not captions) and prompts naming an
artist who is not in the training data (``removed``: an artist of the dataset dropped from training,
``CompareConfig.removed``, or one the dataset never held). Methods: structural
(slot ablation on a named prompt, slot evidence on the others: ``govlab.attribution.structural``), the
name-reading baseline (1 for the source a prompt names, 0 for every other; named prompts only), TracIn
over every trained parameter and D-TRAK. Ground truth is (a) leave-one-source-out retraining and (b)
the linear datamodeling score over random half-subsets of the sources, with a 95% bootstrap interval
over queries and subsets. The model output throughout is minus the diffusion loss, at fixed draws, on
the query's images with the query's caption (``govlab.attribution.probe``).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

from scipy.stats import spearmanr

from govlab.attribution.aggregate import per_source
from govlab.attribution.dtrak import dtrak_scores
from govlab.attribution.lds import half_subsets, lds, lds_ci
from govlab.attribution.probe import Probe, cat_probes, model_output, prompt_probe, train_probe
from govlab.attribution.retrain import retrain_job
from govlab.attribution.structural import slot_ablation_scores, slot_evidence_scores
from govlab.attribution.tracin import tracin_scores
from govlab.config import RunConfig
from govlab.data.cache import build_once, cache_dir, run_dataset
from govlab.data.world import ARTISTS, COLORS, POSITIONS_1, SHAPES, caption_for
from govlab.errors import GovlabError
from govlab.io import read_text, sha256_json, write_json
from govlab.models.diffusion import TextToImage
from govlab.routing.hook import attach
from govlab.sweep import Sweep
from govlab.train import CHECKPOINT_DIR

METHODS = ("structural", "name_baseline", "tracin", "dtrak")
RESULT_FORMAT = 3  # bumped when the comparison computes something else: a cached result is not reused
QUERY_SETS = {"named": "", "unnamed": "_unnamed", "images": "_images",
              "removed": "_removed"}  # set: suffix of its summary fields
UNKNOWN_ARTISTS = ("artist_6", "artist_7", "artist_8")  # names no world holds
REMOVED_PROMPTS = (("circle", "red", "center"), ("triangle", "blue", "top left"), ("bar", "green", "bottom right"))


@dataclass(frozen=True)
class CompareConfig:
    """Sizes of the comparison (the run config is separate)."""

    n_subsets: int = 32  # LDS retrainings
    n_images: int = 4  # generated images per prompt
    k_test: int = 4  # fixed draws per generated image
    k_train: int = 1  # fixed draws per training image (TracIn)
    k_dtrak: int = 4  # D-TRAK's timesteps per training image
    proj_dim: int = 512  # D-TRAK's random projection (capped below the number of training rows)
    sample_steps: int = 20
    seed: int = 0
    query_sets: tuple[str, ...] = tuple(QUERY_SETS)
    removed: tuple[str, ...] = ("artist_5",)  # dataset sources dropped from training (model, LOO, LDS alike)


def artist_prompts(sources: list[str]) -> list[dict]:
    """One prompt per artist in the data: ``[{"prompt": ..., "artist": ...}]``."""
    out = []
    for a in ARTISTS:
        if a.source_id in sources:
            attrs = {"kind": "artist", "source_id": a.source_id, "shape": "circle", "color": "red",
                     "count": 1, "position": "center"}
            out.append({"prompt": caption_for(attrs), "artist": a.source_id})
    return out


def removed_prompts(removed: list[str], sources: list[str]) -> list[dict]:
    """Prompts naming an artist who is not in the training data: three per removed artist (dropped from
    training) and one per unknown artist (``UNKNOWN_ARTISTS``, in no dataset's sources), each
    ``{"prompt", "artist": None, "named": source_id, "kind": "removed" | "unknown"}``."""
    out = []
    for src in removed:
        for shape, color, position in REMOVED_PROMPTS:
            attrs = {"kind": "artist", "source_id": src, "shape": shape, "color": color, "count": 1,
                     "position": position}
            out.append({"prompt": caption_for(attrs), "artist": None, "named": src, "kind": "removed"})
    for i, src in enumerate(a for a in UNKNOWN_ARTISTS if a not in sources):
        shape, color, position = REMOVED_PROMPTS[i % len(REMOVED_PROMPTS)]
        attrs = {"kind": "artist", "source_id": src, "shape": shape, "color": color, "count": 1, "position": position}
        out.append({"prompt": caption_for(attrs), "artist": None, "named": src, "kind": "unknown"})
    return out


def unnamed_prompts(n: int) -> list[dict]:
    """``n`` prompts naming no source ("a blue triangle top left"): shapes, colours and positions in turn."""
    colors, positions = list(COLORS), list(POSITIONS_1)
    return [{"prompt": f"a {colors[i % len(colors)]} {SHAPES[i % len(SHAPES)]} {positions[i % len(positions)]}",
             "artist": None} for i in range(n)]


def _top(scores: dict[str, float]) -> str:
    return max(sorted(scores), key=lambda s: scores[s])


def _mean(xs) -> tuple[float, int]:
    """The mean of the finite values and how many were NaN (left out of the mean, never silently)."""
    xs = list(xs)
    finite = [x for x in xs if not math.isnan(x)]
    return (round(statistics.fmean(finite), 4) if finite else math.nan), len(xs) - len(finite)


def _queries(model: TextToImage, sources: list[str], cc: CompareConfig,
             dataset_sources: list[str]) -> dict[str, list[dict]]:
    """Each query set's queries: ``{"prompt", "artist" (truth or None), "caption", "probe"}``."""
    named = artist_prompts(sources)
    probes = [prompt_probe(model, p["prompt"], n_images=cc.n_images, k=cc.k_test, seed=cc.seed + i,
                           steps=cc.sample_steps) for i, p in enumerate(named)]
    out = {}
    if "named" in cc.query_sets:
        out["named"] = [{**p, "caption": p["prompt"], "probe": pr} for p, pr in zip(named, probes)]
    if "unnamed" in cc.query_sets:
        out["unnamed"] = [{**p, "caption": p["prompt"],
                           "probe": prompt_probe(model, p["prompt"], n_images=cc.n_images, k=cc.k_test,
                                                 seed=cc.seed + 100 + i, steps=cc.sample_steps)}
                          for i, p in enumerate(unnamed_prompts(len(named)))]
    if "images" in cc.query_sets:  # the named prompts' images, with the empty (unconditional) caption
        out["images"] = [{"prompt": "", "artist": p["artist"], "caption": "", "generated_for": p["prompt"],
                          "probe": Probe(pr.x0, model.tokenizer([""] * len(pr)), pr.noise, pr.timesteps)}
                         for p, pr in zip(named, probes)]
    if "removed" in cc.query_sets:
        out["removed"] = [{**p, "caption": p["prompt"],
                           "probe": prompt_probe(model, p["prompt"], n_images=cc.n_images, k=cc.k_test,
                                                 seed=cc.seed + 200 + i, steps=cc.sample_steps)}
                          for i, p in enumerate(removed_prompts(list(cc.removed), dataset_sources))]
    return out


def _structural(model, queries: list[dict], sources: list[str]) -> list[dict[str, float]]:
    """Slot ablation where the prompt names a training source; slot evidence on the query's own images
    otherwise (no source named, an image, or a named artist with no slot: not in the training data)."""
    out = []
    for q in queries:
        ranked = (slot_ablation_scores(model, q["probe"]) if q["artist"] is not None and q["caption"]
                  else slot_evidence_scores(model, q["probe"], q["caption"]))
        out.append({s: 0.0 for s in sources} | {r["source"]: r["score"] for r in ranked})
    return out


def _name_baseline(queries: list[dict], sources: list[str]) -> list[dict[str, float]] | None:
    """Reads the source's name in the prompt; a query naming none has no answer (None). A prompt naming
    an artist who is not a training source credits no source (every score 0: its LDS is undefined)."""
    named = [q["artist"] if q["artist"] is not None else q.get("named") for q in queries]
    if any(n is None or not q["caption"] for n, q in zip(named, queries)):
        return None
    return [{s: float(s == n) for s in sources} for n in named]


def _statistical(name: str, model, queries: list[dict], *, checkpoints, trained, lr: float, cc: CompareConfig,
                 proj_dim: int) -> list[dict[str, float]]:
    """TracIn (one gradient per example over every trained parameter, the slot banks included) or
    D-TRAK, one call for every query (the training gradients are computed once), per source."""
    test = cat_probes([q["probe"] for q in queries])
    if name == "tracin":
        per_image = tracin_scores(model, checkpoints, lr, train_probe(model, trained, k=cc.k_train, seed=cc.seed),
                                  test, sample_wise=False)
    else:
        per_image = dtrak_scores(model, checkpoints, train_probe(model, trained, k=cc.k_dtrak, seed=cc.seed),
                                 test, proj_dim=proj_dim, seed=cc.seed)
    n = cc.n_images
    return [per_source(per_image[i * n:(i + 1) * n].mean(0), trained.records) for i in range(len(queries))]


def compare(cfg: RunConfig, cc: CompareConfig = CompareConfig(), *, methods=METHODS,
            progress: bool = True, sweep: Sweep | None = None) -> dict:
    """Run the whole comparison, or load its result from the cache (keyed by the run config, ``cc``
    and ``methods``; not by ``sweep``, which runs the retrainings, on Ray or serially, with the same
    result); returns ``{"summary": {...}, "prompts": [...] (named), "queries": {set: [...]},
    "subsets": [...], "config": {...}}``."""
    key = sha256_json({"format": RESULT_FORMAT, "config": cfg.hash(), "compare": asdict(cc),
                       "methods": sorted(methods)})[:16]
    path = cache_dir("attribution", "compare") / f"{key}.json"
    build_once(path, path.is_file, lambda: write_json(path, _compare(cfg, cc, methods, progress, sweep or Sweep())))
    return json.loads(read_text(path))


def _compare(cfg: RunConfig, cc: CompareConfig, methods, progress: bool, sweep: Sweep) -> dict:
    full = run_dataset(cfg, progress=progress)
    unknown = sorted(set(cc.removed) - set(full.sources))
    if unknown:
        raise GovlabError(f"CompareConfig.removed: {unknown[0]!r} is not a source of the dataset "
                          f"(sources: {', '.join(full.sources)})")
    sources = [s for s in full.sources if s not in cc.removed]  # the training sources
    # the records the model was trained on: the removed sources' dropped, then ingestion
    trained, _ = attach(cfg, full.subset([i for i, r in enumerate(full.records) if r["source_id"] in sources]))
    # every training the comparison needs, as one sweep: the model itself, leave-one-out, LDS subsets
    loo_sets = [[s for s in sources if s != d] for d in sources]
    subsets = half_subsets(sources, cc.n_subsets, seed=cc.seed)
    runs = sweep.run([retrain_job(cfg, full, s) for s in [sources, *loo_sets, *subsets]],
                     desc="retrain (model, leave-one-out, LDS subsets)", progress=progress)
    run = runs[0]
    model = TextToImage.load(run / "model.safetensors")
    checkpoints = sorted((run / CHECKPOINT_DIR).glob("step_*.safetensors"))
    proj_dim = min(cc.proj_dim, len(trained) // 2)  # below the training rows: the kernel solve is well-posed
    sets = _queries(model, sources, cc, full.sources)
    everything = [q for queries in sets.values() for q in queries]

    scores: dict[str, dict[str, list]] = {name: {} for name in methods}
    seconds: dict[str, float] = {}
    for name in methods:
        t0 = time.perf_counter()
        if name == "structural":
            for set_name, queries in sets.items():
                scores[name][set_name] = _structural(model, queries, sources)
        elif name == "name_baseline":
            for set_name, queries in sets.items():
                got = _name_baseline(queries, sources)
                if got is not None:
                    scores[name][set_name] = got
        else:
            per = iter(_statistical(name, model, everything, checkpoints=checkpoints, trained=trained,
                                    lr=cfg.train.lr, cc=cc, proj_dim=proj_dim))
            for set_name, queries in sets.items():
                scores[name][set_name] = [next(per) for _ in queries]
        seconds[name] = time.perf_counter() - t0

    loo_models = [TextToImage.load(r / "model.safetensors") for r in runs[1:1 + len(sources)]]
    lds_models = [TextToImage.load(r / "model.safetensors") for r in runs[1 + len(sources):]]

    summary = {"prompts": len(sets.get("named", [])), "queries": len(everything), "sources": len(sources),
               "lds_subsets": len(subsets), "n_subsets": len(subsets), "dtrak_proj_dim": proj_dim,
               "train_rows": len(trained), "removed_sources": list(cc.removed),
               "removed_queries": len(sets.get("removed", []))}
    for name in methods:  # seconds for every query of every set (the same queries for each method)
        summary[f"time_{name}_s"] = round(seconds[name], 4)
    if "structural" in seconds and "tracin" in seconds:
        summary["speedup_structural_vs_tracin"] = round(seconds["tracin"] / seconds["structural"], 1)
    nan_prompts: dict[str, int] = {}
    rows_by_set = {}
    for set_name, queries in sets.items():
        sfx = QUERY_SETS[set_name]
        base = [model_output(model, q["probe"]) for q in queries]
        loo = [{d: base[i] - model_output(m, q["probe"]) for d, m in zip(sources, loo_models)}
               for i, q in enumerate(queries)]
        actual = [[model_output(m, q["probe"]) for m in lds_models] for q in queries]
        answered = [name for name in methods if set_name in scores[name]]
        rows = []
        for i, q in enumerate(queries):
            row = {k: v for k, v in q.items() if k not in ("probe", "caption")}
            row |= {"loo": loo[i], "loo_top": _top(loo[i]), "lds_actual": actual[i]}
            for name in answered:
                s = scores[name][set_name][i]
                rho = (spearmanr([s[d] for d in sources], [loo[i][d] for d in sources]).statistic
                       if len(set(s.values())) > 1 else math.nan)
                row[name] = {"scores": s, "top": _top(s), "lds": lds(s, subsets, actual[i]),
                             "loo_spearman": float(rho)}
            rows.append(row)
        rows_by_set[set_name] = rows
        truth = all(r["artist"] is not None for r in rows)
        if truth:
            summary[f"loo_top1{sfx}"] = _mean(r["loo_top"] == r["artist"] for r in rows)[0]
        for name in answered:
            key = f"lds_{name}{sfx}"
            summary[key], nan_prompts[key] = _mean(r[name]["lds"] for r in rows)
            summary[f"{key}_ci"] = lds_ci(scores[name][set_name], subsets, actual, seed=cc.seed)
            if truth:
                summary[f"top1_{name}{sfx}"] = _mean(r[name]["top"] == r["artist"] for r in rows)[0]
            summary[f"top1_loo_{name}{sfx}"] = _mean(r[name]["top"] == r["loo_top"] for r in rows)[0]
            key = f"loo_spearman_{name}{sfx}"
            summary[key], n_nan = _mean(r[name]["loo_spearman"] for r in rows)
            if n_nan:
                nan_prompts[key] = n_nan
    summary["nan_prompts"] = nan_prompts
    return {"summary": summary, "prompts": rows_by_set.get("named", []), "queries": rows_by_set,
            "subsets": subsets, "config": asdict(cc), "run_config_hash": cfg.hash()}


def summary_table(summary: dict) -> list[dict]:
    """The four-way comparison per query set, one row per (set, method) the summary holds:
    ``{"queries", "method", "lds", "lds_ci_low", "lds_ci_high", "top1", "top1_loo", "loo_spearman",
    "time_s_all_queries", "nan_prompts"}`` (None where a figure does not apply)."""
    rows = []
    for set_name, sfx in QUERY_SETS.items():
        for m in METHODS:
            key = f"lds_{m}{sfx}"
            if key not in summary:
                continue
            ci = summary.get(f"{key}_ci") or [None, None]
            rows.append({"queries": set_name, "method": m, "lds": summary[key], "lds_ci_low": ci[0],
                         "lds_ci_high": ci[1], "top1": summary.get(f"top1_{m}{sfx}"),
                         "top1_loo": summary.get(f"top1_loo_{m}{sfx}"),
                         "loo_spearman": summary.get(f"loo_spearman_{m}{sfx}"),
                         "time_s_all_queries": summary.get(f"time_{m}_s"),
                         "nan_prompts": summary.get("nan_prompts", {}).get(key, 0)})
    return rows
