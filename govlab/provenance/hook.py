"""Provenance as plug-ins of a run: the opt-out registry at ingestion and the index writer."""

from __future__ import annotations

from govlab.data.dataset import Dataset
from govlab.hooks import Hook
from govlab.provenance.optouts import OptOutHook, check_slots, ingest, parse_optouts, read_registry
from govlab.provenance.writer import ProvenanceWriter


def attach(cfg, dataset: Dataset, sources: list[str]) -> tuple[Dataset, list[Hook]]:
    """For a run config: the dataset after opt-out ingestion and the provenance hooks."""
    from govlab.routing.hook import slot_sources

    p, hooks = cfg.provenance, []
    if p.optouts:
        text = read_registry(p.optouts)  # read once: what is parsed is what the run keeps
        optouts = parse_optouts(text, p.optouts, sources)
        dataset, rejected = ingest(dataset, optouts)
        r = cfg.routing
        check_slots(optouts, set() if r.mode == "off" else set(slot_sources(r, dataset.records)), r.mode, p.optouts)
        hooks.append(OptOutHook(optouts, rejected, text, p.optouts))
    if p.enabled:
        hooks.append(ProvenanceWriter(p, sources))
    return dataset, hooks
