"""The explorer's view of runs: a run directory (``govlab.rundir.RunDir``) with its provenance
index read through ``govlab.provenance.index`` (one schema, one reader: ``index.nc`` or a per-sample
run's ``index.parts/``), and the tables the views draw.

Nothing here imports Panel: these are plain loaders and tables that the explorer's views draw.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from govlab.errors import GovlabError
from govlab.provenance.index import UNITS, ProvenanceIndex, check, open_file, unit_of
from govlab.rundir import RunDir

__all__ = ["LAZY_BYTES", "METRICS", "UNITS", "Run", "load_runs", "open_index", "validate_index"]

METRICS = ("update_share", "grad_norm_sq")
LAZY_BYTES = 64 << 20  # indexes larger than this stay on disk and are read one checkpoint at a time


def open_index(path: str | Path) -> xr.Dataset:
    """Open and check one provenance index file (``govlab.provenance.index.open_file``: the index
    schema, docs/provenance-index.md); GovlabError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: no provenance index (index.nc) in this run")
    return open_file(path, lazy_bytes=LAZY_BYTES)


def validate_index(ds: xr.Dataset, where: str | Path = "index") -> str:
    """Check ``ds`` against the index schema (``govlab.provenance.index.check``) and that it has
    something to draw; returns the unit dim (source|sample)."""
    check(ds, Path(where))
    unit = unit_of(ds)
    for d in (unit, "band", "checkpoint"):
        if ds.sizes[d] == 0:
            raise GovlabError(f"{where}: the index has no {d}")
    return unit


class Run(RunDir):
    """One run directory as the explorer sees it; each part loads on first use."""

    def __init__(self, path: str | Path, name: str = ""):
        super().__init__(path)
        self.name = name or self.path.name

    @cached_property
    def index(self) -> xr.Dataset:
        """The run's provenance index: ``index.nc``, or a per-sample run's ``index.parts/``."""
        return self.read_index(lazy_bytes=LAZY_BYTES)

    @cached_property
    def unit(self) -> str:
        return validate_index(self.index, self.path / "index.nc" if (self.path / "index.nc").is_file()
                              else self.path / "index.parts")

    @property
    def checkpoints(self) -> list[int]:
        """The checkpoints of the index (steps)."""
        return [int(c) for c in self.index["checkpoint"].values]

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.index["band"].values]

    @cached_property
    def provenance(self) -> ProvenanceIndex:
        """The index's queries (``ProvenanceIndex``), not matched to the model."""
        return ProvenanceIndex(self.index, self.path)

    @cached_property
    def sources(self) -> list[str]:
        """Sources of the index: its ``source`` dim, or those of a per-sample ``source_id`` coordinate."""
        return self.provenance.sources

    @cached_property
    def preview(self):
        """The attenuation preview of the run's model (loaded on first use)."""
        from govlab.explore.preview import AttenuationPreview

        return AttenuationPreview(self)


def load_runs(paths) -> tuple[list[Run], list[str]]:
    """Runs named on the command line, each checked up front (index, events, memorization and
    lineage files): ``(runs that load, one error message per run that does not)``."""
    runs, errors = [], []
    for p in paths:
        try:
            run = Run(Path(p))
            if run.has_index:
                run.unit  # noqa: B018 - opens and validates the index
            run.events  # noqa: B018
            run.memorization  # noqa: B018
            run.lineage  # noqa: B018
        except GovlabError as e:
            errors.append(str(e))
            continue
        runs.append(run)
    names = [r.name for r in runs]
    for r in runs:  # two runs named alike (a/run, b/run): name them by their parent too
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    return runs, errors


# -- tables the views draw ---------------------------------------------------------------------


def _metric(ds: xr.Dataset, metric: str) -> xr.DataArray:
    if metric.removesuffix("_se") not in METRICS:
        raise GovlabError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    return ds[metric]


def _share(da: xr.DataArray, unit: str) -> xr.DataArray:
    """The metric as a share of the band's total over ``unit`` (0 where the band has none), as
    ``ProvenanceIndex`` reports shares: update_share is stored as a raw inner product with the update."""
    total = da.sum(unit)  # update_share sums to <g, delta>, which is negative for a descent step
    return (da / total.where(total != 0)).fillna(0.0)


def _by_source(run: Run, metric: str) -> xr.DataArray:
    """The metric per source (``ProvenanceIndex.by_source``: a per-sample index summed over each
    source's samples)."""
    _metric(run.index, metric)
    return run.provenance.by_source()[metric]


def source_band(run: Run, metric: str, checkpoint: int) -> pd.DataFrame:
    """Long table ``source, band, share`` at one checkpoint (per-sample indexes summed by source).
    From a sampled index (the default mode: estimates with standard errors ``*_se``) also the
    estimate of the metric and its 95% interval, ``estimate, ci95_lo, ci95_hi`` (per sample summed
    by source, the samples' errors summed: an upper bound)."""
    value = _by_source(run, metric).sel(checkpoint=checkpoint).load()
    share = _share(value, "source")
    df = share.rename("share").to_dataframe().reset_index()[["source", "band", "share"]]
    if f"{metric}_se" in run.index.data_vars:
        from govlab.provenance.index import quantile95

        se = _by_source(run, f"{metric}_se").sel(checkpoint=checkpoint).load()
        q = quantile95(int(run.index["steps_drawn"].sel(checkpoint=checkpoint)))
        est = xr.Dataset({"estimate": value, "ci95_lo": value - q * se, "ci95_hi": value + q * se})
        df = df.merge(est.to_dataframe().reset_index()[["source", "band", "estimate", "ci95_lo", "ci95_hi"]],
                      on=["source", "band"])
    return df.astype({"source": str, "band": str})


def band_timeline(run: Run, metric: str, source: str) -> pd.DataFrame:
    """Long table ``checkpoint, band, share`` of one source over training."""
    if source not in run.sources:
        raise GovlabError(f"{run.path}: no source {source!r} in the index (sources: {', '.join(run.sources)})")
    share = _share(_by_source(run, metric).load(), "source").sel(source=source)
    df = share.rename("share").to_dataframe().reset_index()[["checkpoint", "band", "share"]]
    return df.astype({"band": str})


def sample_grid(run: Run, metric: str, checkpoint: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(band positions, sample positions, values (n_sample, n_band))`` of a per-sample index."""
    if run.unit != "sample":
        raise GovlabError(f"{run.path}: the index is at {run.unit} granularity; the per-sample view needs "
                          "an index written at per-sample granularity")
    values = np.asarray(_metric(run.index, metric).sel(checkpoint=checkpoint).transpose("sample", "band").values)
    return np.arange(values.shape[1]), np.arange(values.shape[0]), values


def mem_events(run: Run) -> pd.DataFrame:
    """Memorization flags of events.jsonl (the monitor's ``memorization_flag``; any ``mem*flag``
    event): step, sample, score, threshold, action."""
    rows = [e for e in run.events if str(e.get("event", "")).startswith("mem")
            and str(e.get("event", "")).endswith("flag")]
    cols = ["event", "step", "sample", "score", "threshold", "action"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = None
    missing = df[["step", "score"]].isna().any(axis=1)
    if missing.any():
        raise GovlabError(f"{run.path / 'events.jsonl'}: memorization event without step or score "
                          f"(line {int(np.flatnonzero(missing)[0]) + 1} of its memorization events)")
    return df.astype({"step": int, "score": float})


def monitor_scores(run: Run) -> pd.DataFrame:
    """Every score the memorization monitor computed (``memorization.json``'s history): one row per
    check and watched sample, ``step, sample, score, threshold``; empty without the monitor."""
    cols = ["step", "sample", "score", "threshold"]
    m = run.memorization
    if m is None:
        return pd.DataFrame(columns=cols)
    rows = [(int(h["step"]), int(r), float(v), float(h["threshold"]))
            for h in m.get("history", []) for r, v in h.get("scores", {}).items() if h.get("threshold") is not None]
    return pd.DataFrame(rows, columns=cols)


def event_images(run: Run, event: dict) -> dict[str, Path]:
    """PNGs of a memorization event: its ``image`` and ``generation`` fields (paths in the run), or the
    audit grid named by ``grid``; only files inside the run directory are read."""
    out = {}
    for key in ("image", "generation", "grid"):
        if event.get(key):
            p = (run.path / str(event[key])).resolve()
            if run.path.resolve() in p.parents and p.suffix.lower() == ".png" and p.is_file():
                out[key] = p
    return out


def lineage_table(run: Run) -> pd.DataFrame:
    """Long table ``prompt, base, distance`` of the run's lineage result (per-prompt distances)."""
    result = run.lineage
    if result is None:
        raise GovlabError(f"{run.path}: no lineage result (save `govlab lineage --target RUN ... --json` "
                          "as RUN/lineage.json)")
    rows = [{"prompt": f"p{i}", "text": v.get("prompt", ""), "base": b, "distance": float(d)}
            for i, v in enumerate(result["votes"]) for b, d in v.get("distances", {}).items()]
    if not rows:
        raise GovlabError(f"{run.path / 'lineage.json'}: the lineage result has no distances")
    return pd.DataFrame(rows)
