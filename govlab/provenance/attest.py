"""``govlab attest``: what a run was trained on, with the index figures behind each opt-out; and
the same facts in the formats regulators and platforms read (``--format eu-summary|croissant``,
``govlab.compliance``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from govlab.errors import GovlabError
from govlab.hooks import EventLog
from govlab.io import write_json, write_text
from govlab.provenance.manifest import MANIFEST, require_intact, write_manifest
from govlab.provenance.optouts import OPTOUTS, read_optouts


OUTPUTS = ("attestation.json", "attestation.md")
FORMATS = {"md": OUTPUTS, "json": OUTPUTS, "eu-summary": ("eu-summary.json", "eu-summary.md"),
           "croissant": ("croissant.json", "training-records.jsonl")}


def attest(run: str | Path, *, format: str = "md", progress: bool = False) -> dict:
    """Write the attestation of ``format`` into the run and re-seal its manifest: ``md``/``json``
    (``attestation.json`` and ``attestation.md``), ``eu-summary`` (``eu-summary.json`` and
    ``eu-summary.md``) or ``croissant`` (``croissant.json`` and the ``training-records.jsonl`` it
    describes). Refuses a run whose files no longer match the manifest (re-sealing would hide the
    change). Returns what was written (for ``eu-summary`` and ``croissant``: with ``files``)."""
    if format not in FORMATS:
        raise GovlabError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise GovlabError(f"{run}: not a govlab run directory (no config.yaml)")
    outputs = FORMATS[format]
    sealed = require_intact(run, outputs, "attesting")
    result, records = facts(run, progress=progress)
    if format in ("md", "json"):
        write_json(run / OUTPUTS[0], result)
        write_text(run / OUTPUTS[1], markdown(result))
    elif format == "eu-summary":
        from govlab.compliance.eu_summary import build, markdown as eu_markdown

        result = build(run, result, records)
        write_json(run / outputs[0], result)
        write_text(run / outputs[1], eu_markdown(result))
    else:
        from govlab.compliance.croissant import write

        result = write(run, result, records)
    if sealed:
        write_manifest(run)
    return result


def facts(run: Path, *, progress: bool = False) -> tuple[dict, list[dict]]:
    """The attestation (what ``attestation.json`` holds) and the run's records, each with
    ``admitted`` and, if it was not, ``rejection_reason`` (from events.jsonl)."""
    from govlab.config import from_dict, read_yaml
    from govlab.data.cache import run_dataset
    from govlab.provenance.index import ProvenanceIndex

    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    dataset = run_dataset(cfg, progress=progress)
    events = EventLog(run / "events.jsonl").read()
    rejections = {e["file"]: e.get("reason", "") for e in events if e["event"] == "ingestion_rejected"}
    records = [{**r, "admitted": r["file_name"] not in rejections,
                "rejection_reason": rejections.get(r["file_name"], "")} for r in dataset.records]
    rejected = Counter(e["source_id"] for e in events if e["event"] == "ingestion_rejected")
    has_index = (run / "index.nc").is_file() or (run / "index.parts").is_dir()
    index = ProvenanceIndex.open(run) if has_index else None
    sources = {}
    for s in sorted({r["source_id"] for r in records}):
        mine = [r for r in records if r["source_id"] == s]
        sources[s] = {"records": len(mine), "rejected": rejected.get(s, 0),
                      "trained": len(mine) - rejected.get(s, 0),
                      "licenses": dict(Counter(r["license"] for r in mine)),
                      "categories": dict(Counter(c for r in mine for c in r["categories"]))}
    optouts = []
    if (run / OPTOUTS).is_file():
        for o in read_optouts(run / OPTOUTS, sorted(sources)):
            entry = {"source_id": o.source_id, "since": o.since, "scope": o.scope,
                     "attenuated": any(e["event"] == "opt_out_attenuated" and e["source_id"] == o.source_id
                                       for e in events)}
            entry["proof"] = index.zero_since(o.source_id, o.since) if index is not None else None
            optouts.append(entry)
    c2pa = [e for e in events if e["event"] == "c2pa_ingestion"]
    statements = []
    if index is None and any(o["since"] > 0 for o in optouts):
        statements.append("this run has no provenance index (provenance.enabled: false): no figure proves "
                          "that the sources opted out after step 0 had no influence from their opt-out on")
    if not (run / MANIFEST).is_file():
        statements.append(f"this run is not sealed (no {MANIFEST}): its files are not hash-checked")
    result = {"run": str(run), "name": cfg.name, "config_hash": cfg.hash(), "records": len(records),
              "trained_records": sum(v["trained"] for v in sources.values()),
              "licenses": dict(Counter(r["license"] for r in records)),
              "categories": dict(Counter(c for r in records for c in r["categories"])),
              "sources": sources, "rejected_sources": sorted(rejected), "opt_outs": optouts,
              "rejection_reasons": dict(Counter(rejections.values())),
              "content_credentials": {
                  "summary": c2pa[-1] if c2pa else None,
                  "rejected": sum(1 for r in rejections.values() if r.startswith("C2PA")),
                  "constrained": [{k: e.get(k) for k in ("file", "source_id", "constraint_info")}
                                  for e in events if e["event"] == "c2pa_constrained"],
                  "warnings": [{k: e.get(k) for k in ("file", "source_id", "problem")}
                               for e in events if e["event"] == "c2pa_warning"]},
              "index": index is not None, "sealed": (run / MANIFEST).is_file(), "statements": statements}
    return result, records


def markdown(a: dict) -> str:
    rows = [f"| {s} | {v['records']} | {v['rejected']} | {v['trained']} | "
            f"{', '.join(f'{k} ({n})' for k, n in v['licenses'].items())} | "
            f"{', '.join(f'{k} ({n})' for k, n in v['categories'].items())} |" for s, v in a["sources"].items()]
    lines = [f"# Training-content attestation: `{a['name']}`", "",
             f"Config hash `{a['config_hash']}`; {a['records']} records, {a['trained_records']} admitted "
             "to training.", "",
             "| source | records | rejected | trained | licenses | categories |",
             "| --- | --- | --- | --- | --- | --- |", *rows, ""]
    if a["opt_outs"]:
        lines += ["## Opt-outs", "", "| source | since step | scope | slot attenuated | max grad_norm_sq since | zero influence |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for o in a["opt_outs"]:
            p = o["proof"] or {}
            sampled = f" (estimate, SE {p['max_grad_norm_sq_se']})" if p.get("mode") == "sampled" else ""
            lines.append(f"| {o['source_id']} | {o['since']} | {o['scope']} | {o['attenuated']} | "
                         f"{p.get('max_grad_norm_sq')}{sampled} | {p.get('zero_influence')} |")
        lines += ["", "`max grad_norm_sq since` is the largest squared norm of the source's share of the "
                  "gradient, over every checkpoint interval of the provenance index that starts at or "
                  "after its opt-out: 0.0 means none of its records contributed to any gradient from then on (the "
                  "optimizer's momentum still carries gradients of earlier steps into later updates).", ""]
        if any((o["proof"] or {}).get("mode") == "sampled" for o in a["opt_outs"]):
            lines += ["The index is sampled (shares computed on a random subset of steps, the figures "
                      "estimates with a standard error, 95% interval estimate +- t x SE). The zero is exact "
                      "all the same: the index records every step's loss weight of each source, and a source "
                      "whose rows all weigh 0 has a share of exactly 0 in every step, so its estimate and SE "
                      "are sums of exact zeros; `zero influence` also requires its loss weight to be 0.", ""]
    if a.get("rejection_reasons"):
        lines += ["## Rejected at ingestion", "", "| reason | records |", "| --- | --- |",
                  *[f"| {k} | {n} |" for k, n in a["rejection_reasons"].items()], ""]
    cc = a.get("content_credentials") or {}
    if cc.get("summary"):
        s = cc["summary"]
        lines += ["## Content Credentials (C2PA) in the training images", "",
                  f"{s['with_manifest']} images carry a manifest: {s['rejected']} rejected "
                  f"(`cawg.ai_generative_training: notAllowed`), {s['constrained']} kept and flagged "
                  f"(`constrained`), {s['warnings']} kept with a warning (manifest not relied on).", "",
                  *[f"- constrained: `{c['file']}` ({c['source_id']}): {c['constraint_info'] or 'no constraint_info'}"
                    for c in cc["constrained"]],
                  *[f"- warning: `{w['file']}` ({w['source_id']}): {w['problem']}" for w in cc["warnings"]], ""]
    if a.get("statements"):
        lines += ["## Statements", "", *[f"- {t}" for t in a["statements"]], ""]
    return "\n".join(lines)
