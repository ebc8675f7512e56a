"""MLCommons Croissant 1.1 JSON-LD of a run's training data (``croissant.json``).

The record set ``training`` has one record per record of the run's dataset, with its governance
fields (source, licence, categories, the record's own opt-out flag, whether it was admitted to
training and, if not, why; the image's sha256). Its records are ``training-records.jsonl``,
written beside it in the run (so that the run describes itself wherever it is copied). Per-source
provenance is W3C PROV (``prov:wasDerivedFrom`` entities attributed to each source, and the
ingestion and training activities); the Responsible-AI fields (``rai:``) come from the run.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from govlab.io import atomic_path, sha256_file

CONTEXT = {  # the Croissant 1.1 context (as mlcroissant writes it), with PROV
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/", "prov": "http://www.w3.org/ns/prov#",
    "arrayShape": "cr:arrayShape", "citeAs": "cr:citeAs", "column": "cr:column", "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn", "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"}, "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isArray": "cr:isArray", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "samplingRate": "cr:samplingRate",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
}
RECORDS = "training-records.jsonl"
FIELDS = [  # (name, dataType, description)
    ("file_name", "sc:Text", "image path, relative to the dataset folder"),
    ("caption", "sc:Text", "the image's caption"),
    ("source_id", "sc:Text", "the source (rights holder) the record comes from"),
    ("license", "sc:Text", "the record's licence"),
    ("categories", "sc:Text", "governance categories (style, semantics, composition, watermark, identity), comma-separated"),
    ("opt_out", "sc:Boolean", "the record's own opt_out field in metadata.jsonl (govlab does not act on it)"),
    ("admitted", "sc:Boolean", "whether the record was admitted to training (events.jsonl)"),
    ("rejection_reason", "sc:Text", "why it was rejected at ingestion (events.jsonl), empty if admitted"),
    ("opt_out_since_step", "sc:Integer", "training step from which the source's opt-out (optouts.jsonl) acts; -1: none"),
    ("image_sha256", "sc:Text", "sha256 of the image file"),
]


def document(run: Path, a: dict, records_sha256: str) -> dict:
    """The Croissant JSON-LD for the run (``a``: its attestation)."""
    from govlab.config import from_dict, read_yaml

    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    world = cfg.data is None
    licences = sorted(a["licenses"])
    cc = (a.get("content_credentials") or {}).get("summary")
    sources = [{"@id": f"source/{s}", "@type": "prov:Entity", "name": s,
                "description": f"{v['records']} records, {v['trained']} admitted to training, {v['rejected']} rejected",
                "license": sorted(v["licenses"]),
                "prov:wasAttributedTo": {"@id": f"agent/{s}", "@type": "prov:Agent", "name": s}}
               for s, v in a["sources"].items()]
    later = ", ".join(f"{o['source_id']} since step {o['since']}" for o in a["opt_outs"] if o["since"] > 0)
    activities = [
        {"@id": "activity/ingestion", "@type": "prov:Activity", "prov:label": "ingestion",
         "description": f"{a['records']} records read from {'the embedded world (govlab.data.world)' if world else cfg.data}; "
                        f"{a['records'] - a['trained_records']} rejected "
                        f"({json.dumps(a.get('rejection_reasons', {}), sort_keys=True)})",
         "prov:used": [{"@id": s["@id"]} for s in sources]},
        {"@id": "activity/training", "@type": "prov:Activity", "prov:label": "training",
         "description": f"govlab run {cfg.name} (config {cfg.hash()}), {cfg.train.steps} steps; opt-outs from a "
                        f"later step: {later or 'none'}",
         "prov:wasInformedBy": {"@id": "activity/ingestion"}},
    ]
    fields = [{"@type": "cr:Field", "@id": f"training/{name}", "name": name, "description": desc, "dataType": dt,
               "source": {"fileObject": {"@id": RECORDS}, "extract": {"column": name}}}
              for name, dt, desc in FIELDS]
    return {
        "@context": CONTEXT, "@type": "sc:Dataset",
        "name": f"govlab-{cfg.name}-training-data",
        "description": f"The training data of govlab run {cfg.name}: {a['records']} image-caption records from "
                       f"{len(sources)} sources, {a['trained_records']} admitted to training, with their "
                       "governance fields.",
        "conformsTo": "http://mlcommons.org/croissant/1.1",
        "version": "1.0.0",
        "datePublished": datetime.date.today().isoformat(),
        "url": run.resolve().as_uri(),
        "license": licences,
        "citeAs": f"govlab run {cfg.name}, config {cfg.hash()}",
        "creator": {"@type": "sc:Organization", "name": "the provider of the run (for a person to fill)"},
        "keywords": ["text-to-image", "training data", "governance", "provenance"],
        "rai:dataCollection": ("Generated procedurally by govlab.data.world (not by an AI model) from the run's "
                               f"world config (seed {cfg.world.seed}); the sources and licences are simulated."
                               if world else f"Read from the image folder {cfg.data} (images and metadata.jsonl); "
                               "how it was collected is for a person to describe."),
        "rai:dataCollectionType": ["Synthetic data"] if world else ["Others"],
        "rai:dataPreprocessingProtocol": [
            f"images converted to RGB and brought to {cfg.model.image_size}x{cfg.model.image_size} pixels",
            "opt-out registry (optouts.jsonl) applied at ingestion (since 0) and during training (later steps)"
            if a["opt_outs"] else "no opt-out registry",
            "C2PA/CAWG training-and-data-mining assertions honoured at ingestion: "
            + (f"{cc['with_manifest']} images with a manifest, {cc['rejected']} rejected (notAllowed), "
               f"{cc['constrained']} flagged (constrained)" if cc else "no image carried a manifest"),
            f"rejected at ingestion: {json.dumps(a.get('rejection_reasons', {}), sort_keys=True)}",
        ],
        "rai:personalSensitiveInformation": (
            f"{a['categories'].get('identity', 0)} records show a person's identity (category 'identity')"
            + (f"; routing.identity: {cfg.routing.identity}" if cfg.routing.mode != "off" else "")),
        "rai:dataLimitations": (
            "A synthetic world of small images built to measure governance against ground truth; not representative of "
            "real images." if world else "For a person to describe."),
        "rai:dataUseCases": "Training and evaluating governance of text-to-image diffusion models.",
        "prov:wasDerivedFrom": sources,
        "prov:wasGeneratedBy": activities,
        "distribution": [{"@type": "cr:FileObject", "@id": RECORDS, "name": RECORDS, "contentUrl": RECORDS,
                          "encodingFormat": "application/jsonlines", "sha256": records_sha256}],
        "recordSet": [{"@type": "cr:RecordSet", "@id": "training", "name": "training",
                       "description": "one record per training record, with its governance fields",
                       "key": {"@id": "training/file_name"}, "field": fields}],
    }


def write(run: Path, a: dict, records: list[dict]) -> dict:
    """Write ``training-records.jsonl`` and ``croissant.json`` into the run (atomically)."""
    from govlab.config import from_dict, read_yaml
    from govlab.data.cache import world_dir

    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    root = world_dir(cfg.world, progress=False) if cfg.data is None else Path(cfg.data)
    since = {o["source_id"]: o["since"] for o in a["opt_outs"]}
    rows = [{"file_name": r["file_name"], "caption": r["caption"], "source_id": r["source_id"],
             "license": r["license"], "categories": ",".join(r["categories"]), "opt_out": r["opt_out"],
             "admitted": r["admitted"], "rejection_reason": r["rejection_reason"],
             "opt_out_since_step": since.get(r["source_id"], -1),
             "image_sha256": sha256_file(root / r["file_name"])} for r in records]
    # both files under temporary names first, then renamed records first: croissant.json never
    # names the sha256 of a records file that is not (yet) there
    with atomic_path(run / "croissant.json") as doc_tmp:
        with atomic_path(run / RECORDS) as records_tmp:
            records_tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
            doc = document(run, a, sha256_file(records_tmp))
            doc_tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return {"run": str(run), "files": ["croissant.json", RECORDS], "records": len(rows),
            "admitted": sum(r["admitted"] for r in rows), "sources": len(a["sources"]),
            "statements": a.get("statements", [])}
