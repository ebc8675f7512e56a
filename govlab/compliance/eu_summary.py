"""The EU AI Office's template for the public summary of training content of general-purpose AI
models (July 2025; AI Act Art. 53(1)(d)), pre-filled from a run.

The sections and fields follow the template: 1 general information (1.1 provider, 1.2 model,
1.3 modalities, size and characteristics), 2 list of data sources (2.1 publicly available
datasets, 2.2 private datasets from third parties, 2.3 crawled and scraped data, 2.4 user data,
2.5 synthetic data, 2.6 other sources), 3 data processing aspects (3.1 respect of reservations of
rights from the text-and-data-mining exception, 3.2 removal of illegal content, 3.3 other
information). Every field is either filled by govlab, with ``source`` naming the run file and key
its value comes from, or marked for a person (``filled_by: a person``) with what govlab cannot know.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from govlab.provenance.manifest import MANIFEST

TEMPLATE = "EU AI Office, Template for the Public Summary of Training Content for general-purpose AI models (July 2025)"
GOVLAB, PERSON = "govlab", "a person"
SECTIONS = [  # (id, title, field names in template order)
    ("1.1", "Provider identification", ["provider_name_and_contact", "authorised_representative"]),
    ("1.2", "Model identification", ["versioned_model_name", "model_dependencies", "date_of_placement_on_the_market"]),
    ("1.3", "Modalities, overall training data size and other characteristics",
     ["modalities", "training_data_size", "types_of_content", "latest_date_of_data_collection",
      "other_characteristics"]),
    ("2.1", "Publicly available datasets", ["used", "large_datasets", "other_datasets_description"]),
    ("2.2", "Private non-publicly available datasets obtained from third parties",
     ["licensed_from_rights_holders", "other_private_datasets", "sources_with_licences"]),
    ("2.3", "Data crawled and scraped from online sources",
     ["used", "crawlers", "collection_period", "top_domain_names", "description"]),
    ("2.4", "User data", ["used", "description"]),
    ("2.5", "Synthetic data", ["used", "description"]),
    ("2.6", "Other sources of data", ["used", "description"]),
    ("3.1", "Respect of reservation of rights from text and data mining exception or limitation",
     ["code_of_practice_signatory", "opt_out_registry", "content_credentials", "per_record_opt_out_field",
      "other_measures"]),
    ("3.2", "Removal of illegal content", ["rejected_at_ingestion", "other_measures"]),
    ("3.3", "Other information", ["memorization_interventions"]),
]
IMAGE_RANGES = [(1_000_000, "less than 1 million images"), (1_000_000_000, "1 million to 1 billion images"),
                (None, "more than 1 billion images")]
TEXT_RANGES = [(1_000_000_000, "less than 1 billion tokens"), (10 ** 13, "1 billion to 10 trillion tokens"),
               (None, "more than 10 trillion tokens")]


def filled(value, *sources: str, note: str | None = None) -> dict:
    f = {"value": value, "filled_by": GOVLAB, "source": list(sources)}
    return f | ({"note": note} if note else {})


def person(what: str, *, hint=None) -> dict:
    f = {"value": None, "filled_by": PERSON, "what": what}
    return f | ({"hint": hint} if hint is not None else {})


def size_range(n: int, ranges) -> str:
    return next(label for bound, label in ranges if bound is None or n < bound)


def build(run: Path, a: dict, records: list[dict]) -> dict:
    """The summary of run ``run`` from its attestation ``a`` and records (``govlab.provenance.attest.facts``)."""
    from govlab.config import from_dict, read_yaml
    from govlab.hooks import EventLog

    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    events = EventLog(run / "events.jsonl").read()
    world = cfg.data is None
    data = "the embedded world (govlab.data.world)" if world else cfg.data
    meta = f"{cfg.data}/metadata.jsonl" if not world else "the world's metadata.jsonl"
    trained = [r for r in records if r["admitted"]]
    s = {}

    # 1 general information
    s["1.1"] = {"provider_name_and_contact": person("the provider's name, address and contact"),
                "authorised_representative": person("name and contact of the authorised representative, "
                                                    "where the provider is established outside the Union")}
    manifest = json.loads((run / MANIFEST).read_text()) if (run / MANIFEST).is_file() else {}
    model_sha = manifest.get("files", {}).get("model.safetensors")
    s["1.2"] = {
        "versioned_model_name": filled(f"{cfg.name} (config {cfg.hash()}"
                                       + (f", weights sha256 {model_sha[:16]})" if model_sha else ")"),
                                       "config.yaml#name", "config.yaml (config hash)",
                                       *([f"{MANIFEST}#files.model.safetensors"] if model_sha else []),
                                       note="the run's name; a person replaces it with the name the model is "
                                       "placed on the market under, keeping the hashes"),
        "model_dependencies": _dependencies(run),
        "date_of_placement_on_the_market": person("the date the model is placed on the Union market"),
    }
    words = sum(len(r["caption"].split()) for r in trained)
    s["1.3"] = {
        "modalities": filled(["image", "text"], f"{meta} (file_name: images; caption: text)",
                             note="text-to-image: each record pairs an image with its caption"),
        "training_data_size": filled({"image": f"{size_range(len(trained), IMAGE_RANGES)} ({len(trained)} images)",
                                      "text": f"{size_range(words, TEXT_RANGES)} ({words} caption words)"},
                                     f"{meta} (records)", "events.jsonl#event=ingestion_rejected (not counted)",
                                     note="images admitted to training; text counted in whitespace-separated "
                                     "caption words (govlab's caption tokenizer splits on words)"),
        "types_of_content": filled({"categories": a["categories"], "licences": a["licenses"]},
                                   f"{meta}#categories", f"{meta}#license"),
        "latest_date_of_data_collection": _collection_date(cfg, world),
        "other_characteristics": filled(
            {"image_size": cfg.model.image_size, "sources": len(a["sources"]), "records": a["records"],
             "admitted": a["trained_records"]},
            "config.yaml#model.image_size", f"{meta}#source_id", "events.jsonl#event=ingestion_rejected"),
    }

    # 2 data sources
    table = {src: {"licences": v["licenses"], "records": v["records"], "trained": v["trained"],
                   "rejected": v["rejected"]} for src, v in a["sources"].items()}
    if world:
        no = "no: every record of this run was generated by govlab.data.world"
        for sec in ("2.1", "2.3", "2.4", "2.6"):
            s[sec] = {name: filled(no, "config.yaml#data (null: the embedded world)") if name == "used"
                      else filled(None, "config.yaml#data (null: the embedded world)", note="not applicable")
                      for name in _fields(sec)}
        s["2.2"] = {name: filled(no if name != "sources_with_licences" else table,
                                 "config.yaml#data (null: the embedded world)",
                                 *([f"{meta}#source_id", f"{meta}#license"] if name == "sources_with_licences" else []))
                    for name in _fields("2.2")}
        s["2.5"] = {"used": filled("yes", "config.yaml#data (null: the embedded world)"),
                    "description": filled(
                        f"{a['records']} image-caption records generated procedurally (not by an AI model) by "
                        f"govlab.data.world from config.yaml#world (seed {cfg.world.seed}); its sources "
                        f"(artists, a stock agency, a web crawl) and their licences are simulated", "config.yaml#world")}
    else:
        s["2.1"] = {"used": person("whether publicly available datasets were used", hint=table),
                    "large_datasets": person("publicly available datasets above 3% of all public data of a "
                                             "modality, by name and link"),
                    "other_datasets_description": person("general description of the other public datasets")}
        s["2.2"] = {"licensed_from_rights_holders": person("whether datasets were licensed from rights holders",
                                                           hint=a["licenses"]),
                    "other_private_datasets": person("private datasets obtained from other third parties"),
                    "sources_with_licences": filled(table, f"{meta}#source_id", f"{meta}#license",
                                                    "events.jsonl#event=ingestion_rejected")}
        s["2.3"] = {"used": person("whether data was crawled or scraped"),
                    "crawlers": person("crawler names and purposes, and whether they respect robots.txt"),
                    "collection_period": person("period of collection"),
                    "top_domain_names": _domains(trained, meta),
                    "description": person("type of content and online sources crawled")}
        s["2.4"] = {"used": person("whether data from user interactions or other services of the provider was used"),
                    "description": person("description of the services")}
        s["2.5"] = _synthetic(a)
        s["2.6"] = {"used": person("whether other sources were used"), "description": person("description")}

    # 3 processing
    s["3.1"] = {"code_of_practice_signatory": person("whether the provider signed the GPAI Code of Practice"),
                "opt_out_registry": _registry(a),
                "content_credentials": _credentials(a),
                "per_record_opt_out_field": _record_flag(records, meta),
                "other_measures": person("other measures before training (robots.txt, machine-readable "
                                         "reservations honoured by the crawler)")}
    reasons = a.get("rejection_reasons", {})
    s["3.2"] = {"rejected_at_ingestion": filled(
                    {"records": sum(reasons.values()), "by_reason": reasons},
                    "events.jsonl#event=ingestion_rejected (reason)",
                    note="what govlab removed before training, and why (e.g. identity images under "
                    "routing.identity: reject); unlawful content as such is not detected by govlab"),
                "other_measures": person("measures taken to remove illegal content (e.g. CSAM filtering)")}
    flags = [e for e in events if e["event"] == "memorization_flag"]
    s["3.3"] = {"memorization_interventions": filled(
        {"flags": len(flags), "interventions": dict(Counter(e.get("action", "?") for e in flags))},
        "events.jsonl#event=memorization_flag (action)",
        note="training records the in-flight monitor found reproducible, and what was done to them")}

    sections = []
    for sid, title, names in SECTIONS:
        fields = s[sid]
        if list(fields) != names:  # the template's order (an internal invariant, kept under python -O)
            raise RuntimeError(f"EU summary section {sid}: fields {list(fields)}, the template's are {names}")
        sections.append({"id": sid, "title": title, "fields": fields})
    by = {sec["id"]: {f["filled_by"] for f in sec["fields"].values()} for sec in sections}
    fields = [f for sec in sections for f in sec["fields"].values()]
    return {"template": TEMPLATE, "run": str(run), "name": cfg.name, "config_hash": cfg.hash(),
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sections": sections,
            "sections_filled": [sid for sid, b in by.items() if b == {GOVLAB}],
            "sections_for_a_person": [sid for sid, b in by.items() if PERSON in b],
            "fields_filled": sum(f["filled_by"] == GOVLAB for f in fields),
            "fields_for_a_person": sum(f["filled_by"] == PERSON for f in fields),
            "statements": a.get("statements", [])}


def _fields(sid: str) -> list[str]:
    return next(names for i, _, names in SECTIONS if i == sid)


def _dependencies(run: Path) -> dict:
    recipe = run / "recipe.json"
    if recipe.is_file():  # a lineage-zoo model: its ancestry and the parent's weights
        r = json.loads(recipe.read_text())
        lineage = r.get("lineage", [])
        if len(lineage) > 1:
            return filled({"base_model": lineage[1].get("name"), "base_weights_sha256": r.get("parent_weights"),
                           "ancestry": [m.get("name") for m in lineage[1:]]},
                          "recipe.json#lineage", "recipe.json#parent_weights",
                          note="fine-tuned: a person adds the link to the base model's own summary")
        return filled("none: trained from scratch", "recipe.json#lineage (no parent)")
    return filled("none: trained from scratch (randomly initialised weights)", "config.yaml (no base model)",
                  note="govlab train_run initialises every run's model from its config")


def _collection_date(cfg, world: bool) -> dict:
    from govlab.data.cache import world_dir

    root = world_dir(cfg.world, progress=False) if world else Path(cfg.data)
    mtime = (root / "metadata.jsonl").stat().st_mtime
    date = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).date().isoformat()
    return filled(date, f"{'the world' if world else cfg.data}/metadata.jsonl (file modification time)",
                  note="when the dataset's metadata was last written; a person confirms it is the last "
                  "collection date")


def _domains(records: list[dict], meta: str) -> dict:
    urls = [r.get("url") or r.get("source_url") for r in records]
    hosts = Counter(urlparse(u).hostname for u in urls if isinstance(u, str) and urlparse(u).hostname)
    if not hosts:
        return person("most relevant domain names crawled (top 10% by content size)",
                      hint="no record carries a url or source_url field")
    top = hosts.most_common(max(1, -(-len(hosts) // 10)))
    return filled({h: n for h, n in top}, f"{meta}#url",
                  note=f"top 10% of {len(hosts)} domains by number of admitted records")


def _synthetic(a: dict) -> dict:
    s = (a.get("content_credentials") or {}).get("summary") or {}
    n = s.get("digital_source_types", {}).get("http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia", 0)
    if n:
        return {"used": filled("yes", "events.jsonl#event=c2pa_ingestion (digital_source_types)"),
                "description": filled(f"{n} training images declare trainedAlgorithmicMedia in their C2PA manifest",
                                      "events.jsonl#event=c2pa_ingestion (digital_source_types)",
                                      note="a person names the generating models where known")}
    return {"used": person("whether synthetic (AI-generated) data was used",
                           hint="no training image declares trainedAlgorithmicMedia in a C2PA manifest"),
            "description": person("the models that generated it")}


def _registry(a: dict) -> dict:
    if not a["opt_outs"]:
        return filled("no opt-out registry was given to this run (provenance.optouts)", "config.yaml#provenance.optouts")
    out = []
    for o in a["opt_outs"]:
        p = o["proof"]
        out.append({"source_id": o["source_id"], "since_step": o["since"], "scope": o["scope"],
                    "rejected_at_ingestion": a["sources"].get(o["source_id"], {}).get("rejected", 0),
                    "slot_attenuated": o["attenuated"],
                    "max_grad_norm_sq_since": p["max_grad_norm_sq"] if p else None,
                    "zero_influence": p["zero_influence"] if p else None,
                    "index_checkpoints": p["checkpoints"] if p else None,
                    **({k: p[k] for k in ("mode", "loss_weight", "max_grad_norm_sq_se") if k in p} if p else {})})
    return filled(out, "optouts.jsonl", "index.nc#grad_norm_sq (source, checkpoints from since)",
                  "events.jsonl#event=ingestion_rejected", "events.jsonl#event=opt_out_attenuated",
                  note="max_grad_norm_sq_since: the largest squared norm of the source's share of any gradient "
                  "over the index's checkpoint intervals from its opt-out on; 0.0 proves zero influence from then "
                  "on" + ("" if a["index"] else "; this run has no provenance index, so no proof is given"))


def _credentials(a: dict) -> dict:
    cc = a.get("content_credentials") or {}
    s = cc.get("summary")
    if not s:
        return filled("no training image carries a C2PA manifest", "events.jsonl (no c2pa_ingestion event)")
    return filled({"with_manifest": s["with_manifest"], "rejected_not_allowed": s["rejected"],
                   "kept_constrained": cc["constrained"], "kept_with_warning": cc["warnings"]},
                  "events.jsonl#event=c2pa_ingestion", "events.jsonl#event=ingestion_rejected",
                  "events.jsonl#event=c2pa_constrained", "events.jsonl#event=c2pa_warning",
                  note="CAWG training-and-data-mining assertion (cawg.ai_generative_training): notAllowed "
                  "rejected at ingestion; constrained kept and listed for a person to check its constraint")


def _record_flag(records: list[dict], meta: str) -> dict:
    flagged = [r for r in records if r["opt_out"]]
    return filled({"records_with_opt_out_true": len(flagged),
                   "of_which_trained": sum(r["admitted"] for r in flagged)}, f"{meta}#opt_out",
                  "events.jsonl#event=ingestion_rejected",
                  note="govlab does not act on this per-record field; opt-outs are honoured through the "
                  "registry and Content Credentials above")


def markdown(e: dict) -> str:
    lines = [f"# Public summary of training content: `{e['name']}`", "",
             f"Pre-filled by govlab from run `{e['run']}` (config `{e['config_hash']}`), after the {e['template']}. "
             f"Fields filled by govlab name the run file and key their value comes from; fields marked "
             f"**for a person** are what govlab cannot know. {e['fields_filled']} fields filled, "
             f"{e['fields_for_a_person']} for a person.", ""]
    if e["statements"]:
        lines += ["**Statements:**", "", *[f"- {t}" for t in e["statements"]], ""]
    top = {"1": "1. General information", "2": "2. List of data sources", "3": "3. Data processing aspects"}
    for sec in e["sections"]:
        if sec["id"].endswith(".1"):
            lines += [f"## {top[sec['id'][0]]}", ""]
        lines += [f"### {sec['id']} {sec['title']}", "", "| field | value | from |", "| --- | --- | --- |"]
        for name, f in sec["fields"].items():
            if f["filled_by"] == GOVLAB:
                value = _cell(f["value"]) + (f" ({f['note']})" if f.get("note") else "")
                lines.append(f"| {name} | {value} | {'; '.join(f'`{x}`' for x in f['source'])} |")
            else:
                hint = f" (govlab's hint: {_cell(f['hint'])})" if f.get("hint") is not None else ""
                lines.append(f"| {name} | **for a person**: {f['what']}{hint} | |")
        lines.append("")
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "n/a"
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")
