"""``govlab bench tagging``: the world with its ground-truth labels hidden is tagged, then compared."""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from govlab.config import load_config
from govlab.data.cache import world_dir
from govlab.data.world import CATEGORIES


UNSEEN = "artist_5"
FEW = 8  # exemplars a folder in the exemplars_8 run (the shipped folders hold 24)


def mean_ci(hits, *, seed: int = 0) -> tuple[float, list[float]]:
    """The mean of 0/1 outcomes and its 95% percentile-bootstrap interval (2000 resamples of records)."""
    from scipy.stats import bootstrap

    x = np.asarray(hits, float)
    if len(x) == 0:
        return float("nan"), [float("nan"), float("nan")]
    if len(x) == 1:
        return float(x[0]), [float(x[0]), float(x[0])]
    ci = bootstrap((x,), np.mean, method="percentile", n_resamples=2000, random_state=seed).confidence_interval
    return round(float(x.mean()), 4), [round(float(ci.low), 4), round(float(ci.high), 4)]


def compare(truth: list[dict], got: list[dict]) -> dict:
    """Agreement of tagged records with the world's ground truth (same order, same files)."""
    assert [t["file_name"] for t in truth] == [g["file_name"] for g in got]
    out: dict = {"agreement": {}, "agreement_ci": {}}
    for c in CATEGORIES:
        out["agreement"][c], out["agreement_ci"][c] = mean_ci(
            [(c in t["categories"]) == (c in g["categories"]) for t, g in zip(truth, got)])
    out["source_agreement"], out["source_agreement_ci"] = mean_ci(
        [t["source_id"] == g["source_id"] for t, g in zip(truth, got)])
    out["license_agreement"], out["license_agreement_ci"] = mean_ci(
        [t["license"] == g["license"] for t, g in zip(truth, got)])
    for c in ("identity", "watermark"):
        out[f"{c}_records"] = sum(c in t["categories"] for t in truth)
        out[f"{c}_recall"], out[f"{c}_recall_ci"] = mean_ci(
            [c in g["categories"] for t, g in zip(truth, got) if c in t["categories"]])
        out[f"{c}_precision"], out[f"{c}_precision_ci"] = mean_ci(
            [c in t["categories"] for t, g in zip(truth, got) if c in g["categories"]])
    return out


def variant_taxonomy(out: Path, *, drop: str | None = None, per_folder: int | None = None) -> Path:
    """The world taxonomy written to ``out`` less the source ``drop`` (a source the user has no
    exemplars of), and with ``per_folder`` evenly spaced exemplars kept of each folder."""
    import shutil

    import yaml

    from govlab.tagging.taxonomy import WORLD_TAXONOMY

    spec = yaml.safe_load(WORLD_TAXONOMY.read_text())
    spec["sources"].pop(drop, None)
    for rule in [*spec["categories"].values(), *spec["sources"].values()]:
        if rule and "exemplars" in rule:
            folder = WORLD_TAXONOMY.parent / rule["exemplars"]
            if per_folder is not None:
                files = sorted(folder.glob("*.png"))
                keep = files[:: max(1, len(files) // per_folder)][:per_folder]
                folder = out.parent / f"{out.stem}_exemplars" / folder.name
                folder.mkdir(parents=True, exist_ok=True)
                for f in keep:
                    shutil.copyfile(f, folder / f.name)
            rule["exemplars"] = str(folder)
    out.write_text(yaml.safe_dump(spec))
    return out


def without_source(source: str, out: Path) -> Path:
    """The world taxonomy less one source's entry (its exemplars too): a source the user has none of."""
    return variant_taxonomy(out, drop=source)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bench_tagging(*, quick: bool = False) -> dict:
    """Tag the world (``smoke`` preset's with ``quick``, else ``demo``'s) from images and captions
    alone, with the default taxonomy, its exemplars and the world's encoder. The headline figures come
    from captions stripped of every word naming a source, the stock agency or a person (only the
    images tell those); ``with_cues`` repeats them with the captions as written; ``unseen_source_*``
    tags the same folder with a taxonomy that lacks ``artist_5`` (no exemplars of it): the share of its
    images set apart as an unknown origin, and the sources they were given; ``exemplars_8`` repeats
    the blind and the unseen-source runs with 8 exemplars a folder instead of 24."""
    from govlab.tagging import tag_folder
    from govlab.tagging.world import hide_labels

    preset = "smoke" if quick else "demo"
    from govlab.tagging.world import TAGGED_WORLD_VERSION

    world = world_dir(replace(load_config(preset).world, version=TAGGED_WORLD_VERSION), progress=False)
    truth = _read(world / "metadata.jsonl")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def run(src: Path, name: str, **kw) -> tuple[list[dict], dict, float]:
            start = time.perf_counter()
            summary = tag_folder(src, tmp / name, progress=False, **kw)
            return _read(tmp / name / "metadata.jsonl"), summary, time.perf_counter() - start

        blind = hide_labels(world, tmp / "blind", cues=False)
        got, summary, seconds = run(blind, "out")
        result |= compare(truth, got) | {"seconds": round(seconds, 3), "source_evidence": summary["source_evidence"],
                                         "low_confidence_rows": summary["low_confidence_rows"]}
        got, _, seconds = run(hide_labels(world, tmp / "cues", cues=True), "out_cues")
        figures = compare(truth, got) | {"seconds": round(seconds, 3)}
        result["with_cues"] = {k: figures[k] for k in ("agreement", "source_agreement", "identity_recall",
                                                      "watermark_recall", "seconds")}
        # the same blind folder with no exemplars of one artist: is it set apart?
        got, _, _ = run(blind, "unseen", taxonomy=variant_taxonomy(tmp / "unseen.yaml", drop=UNSEEN))
        pairs = list(zip(truth, got))
        unseen = [g["source_id"] for t, g in pairs if t["source_id"] == UNSEEN]
        result["unseen_source_flagged"], result["unseen_source_flagged_ci"] = mean_ci(
            [s.startswith("unknown_") for s in unseen])
        result["known_sources_flagged"], result["known_sources_flagged_ci"] = mean_ci(
            [g["source_id"].startswith("unknown_") for t, g in pairs if t["source_id"] != UNSEEN])
        result["unseen_source_assigned"] = dict(Counter(unseen).most_common(3))
        # and with a third of the exemplars (8 a folder)
        got, _, _ = run(blind, "few", taxonomy=variant_taxonomy(tmp / "few.yaml", per_folder=FEW))
        figures = compare(truth, got)
        result[f"exemplars_{FEW}"] = {k: figures[k] for k in ("agreement", "source_agreement", "identity_recall",
                                                             "watermark_recall")}
        got, _, _ = run(blind, "few_unseen", taxonomy=variant_taxonomy(tmp / "few_unseen.yaml", drop=UNSEEN,
                                                                      per_folder=FEW))
        result[f"exemplars_{FEW}"] |= {
            "unseen_source_flagged": mean_ci([g["source_id"].startswith("unknown_")
                                              for t, g in zip(truth, got) if t["source_id"] == UNSEEN])[0],
            "known_sources_flagged": mean_ci([g["source_id"].startswith("unknown_")
                                              for t, g in zip(truth, got) if t["source_id"] != UNSEEN])[0]}
    result |= {"records": len(truth), "preset": preset, "encoder": summary["encoder"],
               "exemplars": "govlab/tagging/world_exemplars (world seed 30000)", "quick": quick}
    return result
