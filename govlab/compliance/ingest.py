"""Ingestion that honours Content Credentials: a training image whose C2PA manifest marks
generative training ``notAllowed`` (CAWG training-and-data-mining assertion) is rejected like an
opted-out record; ``constrained`` is kept and flagged for a person to check (the CAWG text treats
``constrained`` without further information as ``notAllowed``); a manifest that cannot be read or
does not validate is kept, with a warning naming the file. Everything is logged to events.jsonl
at the start of training.
"""

from __future__ import annotations

import warnings
from collections import Counter

from govlab.compliance.credentials import TrainingPermission, has_c2pa, training_permission
from govlab.data.dataset import Dataset
from govlab.hooks import Hook

REJECT_REASON = "C2PA/CAWG cawg.ai_generative_training: notAllowed (embedded manifest)"


class ContentCredentialsWarning(UserWarning):
    """A training image's Content Credentials could not be relied on (the record is kept)."""


def scan(dataset: Dataset) -> list[tuple[int, TrainingPermission]]:
    """(row, permission) for every record whose image carries a C2PA manifest."""
    found = []
    for i, r in enumerate(dataset.records):
        path = dataset.root / r["file_name"]
        if has_c2pa(path):
            p = training_permission(path, r["file_name"])
            if p is not None:
                found.append((i, p))
    return found


def ingest(dataset: Dataset) -> tuple[Dataset, dict]:
    """The dataset without its ``notAllowed`` images, and what was found (lists of event fields:
    ``rejected``, ``constrained``, ``warnings``; ``summary`` counts)."""
    found = scan(dataset)
    out = {"rejected": [], "constrained": [], "warnings": [], "summary": None}
    drop = set()
    for i, p in found:
        r = dataset.records[i]
        base = {"file": r["file_name"], "source_id": r["source_id"]}
        if p.problem is not None:
            out["warnings"].append({**base, "problem": p.problem, "claimed_use": p.use})
            warnings.warn(f"{dataset.root / r['file_name']}: C2PA manifest not relied on ({p.problem}); "
                          "record kept", ContentCredentialsWarning, stacklevel=2)
        elif p.use == "notAllowed":
            drop.add(i)
            out["rejected"].append({**base, "reason": REJECT_REASON, "signer": p.signer})
        elif p.use == "constrained":
            out["constrained"].append({**base, "constraint_info": p.constraint_info, "signer": p.signer})
    if found:
        out["summary"] = {"with_manifest": len(found), "rejected": len(out["rejected"]),
                          "constrained": len(out["constrained"]), "warnings": len(out["warnings"]),
                          "uses": dict(Counter(p.use or "none" for _, p in found)),
                          "digital_source_types": dict(Counter(p.digital_source_type or "none" for _, p in found))}
    if drop:
        dataset = dataset.subset([i for i in range(len(dataset)) if i not in drop])
    return dataset, out


class ContentCredentialsHook(Hook):
    """Logs what ingestion found in the images' Content Credentials (at step 0 only: a resumed
    run logged it already): ``ingestion_rejected`` per ``notAllowed`` image, ``c2pa_constrained``
    per flagged one, ``c2pa_warning`` per manifest not relied on, and one ``c2pa_ingestion`` summary."""

    def __init__(self, found: dict):
        self.found = found

    def on_start(self, trainer) -> None:
        if trainer.step != 0:
            return
        for r in self.found["rejected"]:
            trainer.events.write("ingestion_rejected", step=0, **r)
        for r in self.found["constrained"]:
            trainer.events.write("c2pa_constrained", step=0, **r)
        for r in self.found["warnings"]:
            trainer.events.write("c2pa_warning", step=0, **r)
        trainer.events.write("c2pa_ingestion", step=0, **self.found["summary"])


def attach(dataset: Dataset) -> tuple[Dataset, list[Hook]]:
    """For a run: the dataset after Content Credentials ingestion, and its hook (none when no image
    carries a manifest)."""
    dataset, found = ingest(dataset)
    return dataset, ([ContentCredentialsHook(found)] if found["summary"] else [])


def scan_cost(preset: str = "demo", rounds: int = 3) -> dict:
    """What the Content Credentials scan adds to loading a preset's world: the best of ``rounds``
    loads and scans, in seconds, and their ratio."""
    import time

    from govlab.config import load_config
    from govlab.data.cache import run_dataset

    cfg = load_config(preset)
    dataset = run_dataset(cfg, progress=False)
    load, scanned = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        run_dataset(cfg, progress=False)
        load.append(time.perf_counter() - t)
        t = time.perf_counter()
        found = scan(dataset)
        scanned.append(time.perf_counter() - t)
    return {"preset": preset, "records": len(dataset), "with_manifest": len(found),
            "load_s": round(min(load), 4), "scan_s": round(min(scanned), 4),
            "scan_over_load": round(min(scanned) / min(load), 4)}


if __name__ == "__main__":  # python -m govlab.compliance.ingest [PRESET]
    import json
    import sys

    print(json.dumps(scan_cost(*sys.argv[1:2])))
