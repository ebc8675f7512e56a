"""The ``provenance`` section of a run config."""

from __future__ import annotations

from dataclasses import asdict, dataclass

GRANULARITIES = ("cohort", "sample")
MODES = ("sampled", "exact")
SAMPLING_FIELDS = ("mode", "sample_rate", "sample_seed", "exact_first")  # absent from the hash of an exact index


@dataclass(frozen=True)
class ProvenanceConfig:
    """The provenance index (``index.nc``) and the opt-out registry.

    ``granularity: cohort`` records one row per source (size independent of the number of samples,
    but for the monitor's ``mem_score(sample, checkpoint)``); ``sample`` one row per dataset record,
    streamed to ``index.parts/`` one file per checkpoint. ``optouts``: path of an ``optouts.jsonl``
    registry (source_id, since, scope), or None.

    ``mode: sampled`` (the default) computes the exact per-group shares on the first ``exact_first``
    steps (the early transient, whose gradients are several times the later ones) and then on a
    random subset of steps, each independently with probability ``sample_rate`` (seeded by
    ``sample_seed`` and the step number, so a resumed run samples the same steps), and stores
    unbiased estimates of the interval totals with their standard errors (``*_se``); the other steps
    cost next to nothing.
    ``mode: exact`` computes them at every step (for audits: a step takes 1.3-1.6x; ``govlab bench
    index [--quick] --json``, docs/provenance-index.md).
    """

    enabled: bool = False
    granularity: str = "cohort"
    optouts: str | None = None
    mode: str = "sampled"
    sample_rate: float = 0.1
    sample_seed: int = 0
    exact_first: int = 20

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if self.exact_first < 0:
            raise ValueError(f"exact_first must be >= 0, got {self.exact_first!r}")

    def hashed(self) -> dict:
        """The fields that enter the run's config hash: an exact index leaves out the sampling
        settings, so that runs written before they existed (all exact) keep their hash."""
        d = asdict(self)
        if self.mode == "exact":
            for k in SAMPLING_FIELDS:
                del d[k]
        return d
