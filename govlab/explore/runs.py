"""Read what a govlab run wrote (index.nc, events.jsonl, lineage.json, PNGs), with clear errors.

Nothing here imports Panel: these are plain loaders and tables that the explorer's views draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from govlab.errors import GovlabError

UNITS = ("source", "sample")  # the first dimension of the index: cohort or per-sample granularity
METRICS = ("update_share", "grad_norm_sq")
LAZY_BYTES = 64 << 20  # indexes larger than this stay on disk and are read one checkpoint at a time


def open_index(path: str | Path) -> xr.Dataset:
    """Open and check a provenance index (the index schema of the README); GovlabError names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: no provenance index (index.nc) in this run")
    try:
        ds = xr.open_dataset(path)
    except (OSError, ValueError):
        raise GovlabError(f"{path}: not a netCDF file, so not a govlab provenance index") from None
    try:
        validate_index(ds, path)
    except GovlabError:
        ds.close()
        raise
    return ds.load() if ds.nbytes <= LAZY_BYTES else ds


def validate_index(ds: xr.Dataset, where: str | Path = "index") -> str:
    """Check the variables and dimensions the explorer reads; returns the unit dim (source|sample)."""
    need = ("grad_norm_sq", "update_share", "steps_seen")
    if not any(v in ds.data_vars for v in need):
        raise GovlabError(f"{where}: not a govlab provenance index (none of {', '.join(need)})")
    for v in need:
        if v not in ds.data_vars:
            raise GovlabError(f"{where}: provenance index lacks variable {v!r}")
    dims = ds["grad_norm_sq"].dims
    if len(dims) != 3 or dims[0] not in UNITS or dims[1:] != ("band", "checkpoint"):
        raise GovlabError(f"{where}: grad_norm_sq has dims {dims}, expected (source|sample, band, checkpoint)")
    unit = dims[0]
    if ds["update_share"].dims != dims:
        raise GovlabError(f"{where}: update_share has dims {ds['update_share'].dims}, expected {dims}")
    if ds["steps_seen"].dims != (unit, "checkpoint"):
        raise GovlabError(f"{where}: steps_seen has dims {ds['steps_seen'].dims}, expected ({unit}, checkpoint)")
    if "mem_score" in ds.data_vars and ds["mem_score"].dims != ("sample", "checkpoint"):
        raise GovlabError(f"{where}: mem_score has dims {ds['mem_score'].dims}, expected (sample, checkpoint)")
    for d in (unit, "band", "checkpoint"):
        if ds.sizes[d] == 0:
            raise GovlabError(f"{where}: the index has no {d}")
    return unit


def attr_json(ds: xr.Dataset, name: str, default=None):
    """An attribute stored as a JSON string (netCDF rejects dicts), decoded."""
    value = ds.attrs.get(name)
    if value is None:
        return default
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


def read_jsonl(path: Path) -> list[dict]:
    """Entries of a JSON-lines file; a bad line is an error naming the file and line."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise GovlabError(f"{path}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(entry, dict):
            raise GovlabError(f"{path}:{i}: expected a JSON object")
        out.append(entry)
    return out


@dataclass
class Run:
    """One run directory as the explorer sees it; each part loads on first use."""

    path: Path
    name: str = field(default="")

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.path.is_dir():
            raise GovlabError(f"{self.path}: run directory not found")
        if not (self.path / "config.yaml").is_file() and not (self.path / "index.nc").is_file():
            raise GovlabError(f"{self.path}: not a govlab run directory (no config.yaml or index.nc)")
        self.name = self.name or self.path.name

    @cached_property
    def index(self) -> xr.Dataset:
        return open_index(self.path / "index.nc")

    @property
    def has_index(self) -> bool:
        return (self.path / "index.nc").is_file()

    @cached_property
    def unit(self) -> str:
        return validate_index(self.index, self.path / "index.nc")

    @property
    def checkpoints(self) -> list[int]:
        return [int(c) for c in self.index["checkpoint"].values]

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.index["band"].values]

    @cached_property
    def sources(self) -> list[str]:
        """Sources of the index: its ``source`` dim, or a per-sample ``source`` coordinate."""
        ds = self.index
        if self.unit == "source":
            return [str(s) for s in ds["source"].values]
        coord = sample_sources(ds)
        return sorted({str(s) for s in np.unique(coord.values)}) if coord is not None else []

    @cached_property
    def events(self) -> list[dict]:
        path = self.path / "events.jsonl"
        return read_jsonl(path) if path.is_file() else []

    @cached_property
    def lineage(self) -> dict | None:
        """The object printed by ``govlab lineage --target RUN ... --json``, saved as ``lineage.json``."""
        path = self.path / "lineage.json"
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise GovlabError(f"{path}: not JSON ({e.msg})") from None
        if not isinstance(result, dict) or not isinstance(result.get("votes"), list) or not result["votes"]:
            raise GovlabError(f"{path}: not a govlab lineage result (no per-prompt votes)")
        return result

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @cached_property
    def preview(self):
        """The attenuation preview of the run's model (loaded on first use)."""
        from govlab.explore.preview import AttenuationPreview

        return AttenuationPreview(self)


def sample_sources(ds: xr.Dataset) -> xr.DataArray | None:
    """The per-sample source coordinate of a per-sample index, if it has one."""
    for name in ("source", "source_id"):
        if name in ds.coords and ds[name].dims == ("sample",):
            return ds[name]
    return None


def load_runs(paths) -> tuple[list[Run], list[str]]:
    """Runs named on the command line, each checked up front (index, events, lineage files):
    ``(runs that load, one error message per run that does not)``."""
    runs, errors = [], []
    for p in paths:
        try:
            run = Run(Path(p))
            if run.has_index:
                run.unit  # noqa: B018 - opens and validates index.nc
            run.events  # noqa: B018
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
    """The metric per source (a per-sample index summed over each source's samples)."""
    da = _metric(run.index, metric)
    if run.unit == "source":
        return da
    coord = sample_sources(run.index)
    if coord is None:
        raise GovlabError(f"{run.path}: per-sample index without a per-sample source coordinate")
    return da.groupby(coord.rename("source")).sum()


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
    """Memorization flags of events.jsonl (``event`` starting ``mem``): step, sample, score, threshold, action."""
    rows = [e for e in run.events if str(e.get("event", "")).startswith("mem")]
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
