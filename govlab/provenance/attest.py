"""``govlab attest``: what a run was trained on, with the index figures behind each opt-out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from govlab.errors import GovlabError
from govlab.hooks import EventLog
from govlab.io import write_json, write_text
from govlab.provenance.manifest import require_intact, write_manifest
from govlab.provenance.optouts import OPTOUTS, read_optouts


OUTPUTS = ("attestation.json", "attestation.md")


def attest(run: str | Path, *, progress: bool = False) -> dict:
    """Write ``attestation.json`` and ``attestation.md`` into the run and re-seal its manifest;
    refuses a run whose files no longer match the manifest (re-sealing would hide the change)."""
    from govlab.config import from_dict, read_yaml
    from govlab.data.cache import run_dataset
    from govlab.provenance.index import ProvenanceIndex

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise GovlabError(f"{run}: not a govlab run directory (no config.yaml)")
    sealed = require_intact(run, OUTPUTS, "attesting")
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    records = run_dataset(cfg, progress=progress).records
    events = EventLog(run / "events.jsonl").read()
    rejected = Counter(e["source_id"] for e in events if e["event"] == "ingestion_rejected")
    index = ProvenanceIndex.open(run) if (run / "index.nc").is_file() or (run / "index.parts").is_dir() else None
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
    result = {"run": str(run), "name": cfg.name, "config_hash": cfg.hash(), "records": len(records),
              "trained_records": sum(v["trained"] for v in sources.values()),
              "licenses": dict(Counter(r["license"] for r in records)),
              "categories": dict(Counter(c for r in records for c in r["categories"])),
              "sources": sources, "rejected_sources": sorted(rejected), "opt_outs": optouts,
              "index": index is not None}
    write_json(run / OUTPUTS[0], result)
    write_text(run / OUTPUTS[1], markdown(result))
    if sealed:
        write_manifest(run)
    return result


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
            lines.append(f"| {o['source_id']} | {o['since']} | {o['scope']} | {o['attenuated']} | "
                         f"{p.get('max_grad_norm_sq')} | {p.get('zero_influence')} |")
        lines += ["", "`max grad_norm_sq since` is the largest squared norm of the source's share of the "
                  "gradient, over every checkpoint interval of the provenance index that starts at or "
                  "after its opt-out: 0.0 means none of its records contributed to any gradient from then on (the "
                  "optimizer's momentum still carries gradients of earlier steps into later updates).", ""]
    return "\n".join(lines)
