"""Provenance as plug-ins of a run: the opt-out registry at ingestion and the index writer."""

from __future__ import annotations

from pathlib import Path

from govlab.data.dataset import Dataset
from govlab.hooks import Hook
from govlab.provenance.optouts import OptOutHook, ingest, read_optouts
from govlab.provenance.writer import ProvenanceWriter


def attach(cfg, dataset: Dataset, sources: list[str]) -> tuple[Dataset, list[Hook]]:
    """For a run config: the dataset after opt-out ingestion and the provenance hooks."""
    p, hooks = cfg.provenance, []
    if p.optouts:
        optouts = read_optouts(p.optouts, sources)
        dataset, rejected = ingest(dataset, optouts)
        hooks.append(OptOutHook(optouts, rejected, Path(p.optouts).read_text(), path=p.optouts))
    if p.enabled:
        hooks.append(ProvenanceWriter(p, sources))
    return dataset, hooks
