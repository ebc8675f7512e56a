"""The ``provenance`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass

GRANULARITIES = ("cohort", "sample")


@dataclass(frozen=True)
class ProvenanceConfig:
    """The provenance index (``index.nc``) and the opt-out registry.

    ``granularity: cohort`` records one row per source (size independent of the number of samples,
    but for the monitor's ``mem_score(sample, checkpoint)``); ``sample`` one row per dataset record,
    streamed to ``index.parts/`` one file per checkpoint. ``optouts``: path of an ``optouts.jsonl``
    registry (source_id, since, scope), or None. Off by default: exact shares cost time (a step
    takes 1.3-1.6x, routing on or off: ``govlab bench index [--quick] --json``, README).
    """

    enabled: bool = False
    granularity: str = "cohort"
    optouts: str | None = None

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
