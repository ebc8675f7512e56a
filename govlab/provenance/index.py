"""Reading the provenance index of a run, checked against the run's model, and its queries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from govlab.errors import GovlabError
from govlab.provenance.writer import FORMAT, INDEX, PARTS

REQUIRED_VARS = ("grad_norm_sq", "update_share", "steps_seen")
SHARES = ("grad_norm_sq", "update_share")  # estimated in a sampled index, with ``*_se``


def quantile95(drawn: int) -> float:
    """The multiple of the standard error that makes a two-sided 95% interval of an estimate from
    ``drawn`` randomly drawn steps: Student's t with ``drawn - 1`` degrees of freedom (the variance
    comes from those few steps; the normal 1.96 covers less than 95% of them)."""
    return float(stats.t.ppf(0.975, max(int(drawn) - 1, 1)))


UNITS = ("source", "sample")  # an index's first dimension: per source (cohort) or per sample


def unit_of(ds: xr.Dataset) -> str:
    """The index's first dimension: ``source`` (cohort granularity) or ``sample``."""
    return "source" if "source" in ds["steps_seen"].dims else "sample"


def open_file(path: Path, *, lazy_bytes: int | None = None) -> xr.Dataset:
    """One index file (``index.nc`` or a part), checked against the schema (:func:`check`); read
    into memory, unless it holds more than ``lazy_bytes`` (then it stays open on disk)."""
    try:
        ds = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError, RuntimeError) as e:
        raise GovlabError(f"{path}: not a readable netCDF provenance index (not a netCDF file, or a damaged "
                          f"one: {e})") from None
    try:
        check(ds, path)
        if lazy_bytes is not None and ds.nbytes > lazy_bytes:
            return ds
        with ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as e:
        ds.close()
        raise GovlabError(f"{path}: not a readable netCDF provenance index ({e})") from None
    except GovlabError:
        ds.close()
        raise


def check(ds: xr.Dataset, where: Path) -> xr.Dataset:
    """Raise a GovlabError unless ``ds`` is a govlab provenance index: the one schema of
    ``index.nc`` and of each file of ``index.parts/`` (docs/provenance-index.md, Schema), which
    the queries below and the explorer read."""
    if ds.attrs.get("format") != FORMAT:
        raise GovlabError(f"{where}: not a govlab provenance index (attribute 'format' is "
                          f"{ds.attrs.get('format')!r}, expected {FORMAT!r})")
    if not any(v in ds for v in REQUIRED_VARS):
        raise GovlabError(f"{where}: not a govlab provenance index (none of {', '.join(REQUIRED_VARS)})")
    missing = [v for v in REQUIRED_VARS if v not in ds]
    if missing:
        raise GovlabError(f"{where}: provenance index lacks variable {missing[0]!r}")
    first = ds["steps_seen"].dims[0] if ds["steps_seen"].dims else None
    if first not in UNITS:
        raise GovlabError(f"{where}: variable 'steps_seen' has dimensions {ds['steps_seen'].dims}, expected "
                          "(source|sample, checkpoint)")
    dim = unit_of(ds)
    for var, dims in (("grad_norm_sq", (dim, "band", "checkpoint")), ("update_share", (dim, "band", "checkpoint")),
                      ("steps_seen", (dim, "checkpoint"))):
        if ds[var].dims != dims:
            raise GovlabError(f"{where}: variable {var!r} has dimensions {ds[var].dims}, expected {dims}")
    if "mem_score" in ds and ds["mem_score"].dims != ("sample", "checkpoint"):
        raise GovlabError(f"{where}: variable 'mem_score' has dimensions {ds['mem_score'].dims}, expected "
                          "('sample', 'checkpoint')")
    if dim == "sample" and "source_id" not in ds.coords:
        raise GovlabError(f"{where}: per-sample provenance index lacks coordinate 'source_id'")
    if dim == "sample" and ds.get("source_steps_seen", xr.DataArray()).dims != ("source", "checkpoint"):
        raise GovlabError(f"{where}: per-sample provenance index lacks variable 'source_steps_seen' "
                          "(source, checkpoint)")
    if ds.attrs.get("granularity") != {"source": "cohort", "sample": "sample"}[dim]:
        raise GovlabError(f"{where}: attribute 'granularity' is {ds.attrs.get('granularity')!r}, but the "
                          f"index is laid out per {dim}")
    mode = ds.attrs.get("mode", "exact")  # an index from before the sampled mode is exact
    if mode not in ("exact", "sampled"):
        raise GovlabError(f"{where}: attribute 'mode' is {mode!r}, expected 'exact' or 'sampled'")
    if mode == "sampled":
        rate = ds.attrs.get("sample_rate")
        if not isinstance(rate, (float, np.floating)) or not 0.0 < rate <= 1.0:
            raise GovlabError(f"{where}: a sampled provenance index needs attribute 'sample_rate' in (0, 1], "
                              f"got {rate!r}")
        for var in ("grad_norm_sq_se", "update_share_se"):
            if var not in ds or ds[var].dims != (dim, "band", "checkpoint"):
                raise GovlabError(f"{where}: sampled provenance index lacks variable {var!r} "
                                  f"({dim}, band, checkpoint)")
        for var, dims in (("loss_weight", (dim, "checkpoint")), ("steps_drawn", ("checkpoint",))):
            if ds.get(var, xr.DataArray()).dims != dims:
                raise GovlabError(f"{where}: sampled provenance index lacks variable {var!r} ({', '.join(dims)})")
    for attr in ("bands_json", *(["sources_json"] if "sources_json" in ds.attrs else [])):
        try:
            json.loads(ds.attrs[attr])
        except (KeyError, TypeError, ValueError):
            raise GovlabError(f"{where}: provenance index lacks a JSON attribute {attr!r}") from None
    return ds


# the attributes that say which training wrote an index (not, e.g., the govlab version: a resumed
# run may be finished by another one)
TRAINING_ATTRS = ("format", "granularity", "accumulation", "model_hash", "config_hash", "run_name", "bands_json",
                  "sources_json", "routing_policy_json", "provenance_config_json")


def _same_attrs(parts: list[tuple[Path, xr.Dataset]]) -> None:
    """Per-sample parts of one index come from one training (``TRAINING_ATTRS`` equal)."""
    first_path, first = parts[0]
    for path, ds in parts[1:]:
        differ = [k for k in TRAINING_ATTRS if not np.array_equal(first.attrs.get(k), ds.attrs.get(k))]
        if differ:
            raise GovlabError(f"{path}: attribute {differ[0]!r} differs from {first_path.name}'s; the parts "
                              f"of {PARTS}/ come from different trainings")


def read_index(run: str | Path, *, lazy_bytes: int | None = None) -> xr.Dataset:
    """The provenance index of a run folder, checked: its ``index.nc`` (cohort granularity), or the
    files of its ``index.parts/`` (per sample, one per checkpoint; from one training) joined along
    ``checkpoint``. ``lazy_bytes``: an ``index.nc`` larger than this stays on disk."""
    run = Path(run)
    path = run / INDEX
    parts = sorted((p for p in (run / PARTS).glob("step_*.nc") if p.stem[5:].isdigit()),
                   key=lambda p: int(p.stem[5:]))
    if path.is_file():
        return open_file(path, lazy_bytes=lazy_bytes)
    if parts:
        loaded = [(p, open_file(p)) for p in parts]
        _same_attrs(loaded)
        return xr.concat([d for _, d in loaded], dim="checkpoint",
                         data_vars="minimal", coords="minimal", combine_attrs="override")
    raise GovlabError(f"{run}: no provenance index ({INDEX} or {PARTS}/); train with provenance.enabled: true")


def has_index(run: str | Path) -> bool:
    """Whether a run folder holds a provenance index (``index.nc`` or ``index.parts/``)."""
    run = Path(run)
    return (run / INDEX).is_file() or any(p.stem[5:].isdigit() for p in (run / PARTS).glob("step_*.nc"))


class ProvenanceIndex:
    """The index of one run (``ProvenanceIndex.open(run)``) and the questions it answers."""

    def __init__(self, ds: xr.Dataset, run: Path | None = None):
        self.ds, self.run = ds, run
        self.dim = unit_of(ds)

    @classmethod
    def open(cls, run: str | Path, *, check_model: bool = True) -> "ProvenanceIndex":
        """Open ``RUN/index.nc`` (or the per-sample parts); with ``check_model`` the index must
        match the run's model (structure hash) and config (hash). Given the ``index.nc`` file
        itself, its folder is the run."""
        run = Path(run)
        if run.is_file():
            if run.name != INDEX:
                raise GovlabError(f"{run}: a file; ProvenanceIndex.open takes a run folder (holding {INDEX} "
                                  f"or {PARTS}/) or its {INDEX}")
            run = run.parent
        ds = read_index(run)
        if check_model:
            cls._match(ds, run, run / INDEX if (run / INDEX).is_file() else run / PARTS)
        return cls(ds, run)

    @staticmethod
    def _match(ds: xr.Dataset, run: Path, where: Path) -> None:
        from govlab.config import from_dict, read_yaml
        from govlab.models.diffusion import TextToImage
        from govlab.provenance.writer import model_hash

        cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
        if "mode" not in ds.attrs and not read_yaml(run / "config.yaml").get("provenance", {}).get("mode"):
            # written before the sampled mode existed: an exact index, and a config.yaml without the
            # setting (which now reads as sampled); the hash it was written under is the exact one
            cfg = replace(cfg, provenance=replace(cfg.provenance, mode="exact"))
        if ds.attrs.get("config_hash") != cfg.hash():
            raise GovlabError(f"{where}: index written for config {ds.attrs.get('config_hash')}, "
                              f"the run's config.yaml is {cfg.hash()}")
        weights = run / "model.safetensors"
        if weights.is_file():
            h = model_hash(TextToImage.load(weights))
            if ds.attrs.get("model_hash") != h:
                raise GovlabError(f"{where}: index written for model {ds.attrs.get('model_hash')}, "
                                  f"{weights} is {h}")

    # -- metadata ------------------------------------------------------------------------------
    @property
    def bands(self) -> dict[str, list[str]]:
        """The modules of each band."""
        return json.loads(self.ds.attrs["bands_json"])

    @property
    def mode(self) -> str:
        """``exact`` (the shares of every step) or ``sampled`` (estimates with standard errors)."""
        return self.ds.attrs.get("mode", "exact")

    @property
    def sample_rate(self) -> float:
        return float(self.ds.attrs.get("sample_rate", 1.0)) if self.mode == "sampled" else 1.0

    @property
    def sources(self) -> list[str]:
        """Every source of the run's data, also those with no rows in a per-sample index (rejected
        at ingestion)."""
        if self.dim == "source":
            return [str(s) for s in self.ds["source"].values]
        if "sources_json" in self.ds.attrs:
            return json.loads(self.ds.attrs["sources_json"])
        return sorted({str(s) for s in self.ds["source_id"].values})

    def by_source(self) -> xr.Dataset:
        """The figures per source; zeros for a source without rows. From a per-sample index: the
        samples' ``update_share`` summed by source (exact), ``steps_seen`` as recorded per source,
        and ``grad_norm_sq`` the sum of the samples' squared norms, which is not the squared norm
        of the source's share (that needs a cohort index; zero exactly when every sample's is).
        A sampled index adds ``*_se`` and ``loss_weight``; per sample summed by source, the standard
        error is the sum of the samples' (an upper bound: they share the sampled steps)."""
        extra = [f"{k}_se" for k in SHARES] + ["loss_weight"] if self.mode == "sampled" else []
        ds = self.ds[[*REQUIRED_VARS, *extra]]
        if self.dim == "sample":
            summed = ds[[*SHARES, *extra]]
            ds = summed.groupby(self.ds["source_id"].rename("source")).sum().reindex(source=self.sources,
                                                                                    fill_value=0)
            ds["steps_seen"] = self.ds["source_steps_seen"].reindex(source=self.sources, fill_value=0)
        return ds

    def _interval(self, ds: xr.Dataset, var: str) -> dict:
        """``var``'s total over the checkpoints, its standard error and 95% interval (the
        intervals' errors are uncorrelated, so their variances add); {} in an exact index."""
        if self.mode != "sampled":
            return {}
        value = float(ds[var].sum("checkpoint"))
        se = float(np.sqrt((ds[f"{var}_se"] ** 2).sum("checkpoint")))
        q = quantile95(self.ds["steps_drawn"].sum())
        return {f"{var}_se": se, f"{var}_ci95": [value - q * se, value + q * se]}

    def _source(self, source: str) -> None:
        if source not in self.sources:
            raise GovlabError(f"no source {source!r} in the index (sources: {', '.join(self.sources)})")

    def _band(self, band: str) -> None:
        if band not in self.ds["band"].values:
            raise GovlabError(f"no band {band!r} in the index (bands: {', '.join(map(str, self.ds['band'].values))})")

    # -- queries -------------------------------------------------------------------------------
    def shares(self) -> xr.DataArray:
        """Each source's share of each band's applied update, per checkpoint interval: its
        ``update_share`` over the sum of all sources' (the shares of a band sum to 1; 0 where the
        band did not move)."""
        u = self.by_source()["update_share"]
        total = u.sum("source")
        return xr.where(total != 0, u / total.where(total != 0, 1.0), 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0

    def bands_of(self, source: str) -> dict:
        """Which bands ``source`` influenced: totals per band and its share per band over time."""
        self._source(source)
        ds, sh = self.by_source().sel(source=source), self.shares().sel(source=source)
        steps = [int(c) for c in self.ds["checkpoint"].values]
        return {"source": source, "checkpoints": steps, **self._estimated(),
                "steps_seen": [int(v) for v in ds["steps_seen"].values],
                "bands": {str(b): {"grad_norm_sq": float(ds["grad_norm_sq"].sel(band=b).sum()),
                                   "update_share": float(ds["update_share"].sel(band=b).sum()),
                                   **{k: v for var in SHARES for k, v in self._interval(ds.sel(band=b), var).items()},
                                   "share_over_time": [round(float(v), 6) for v in sh.sel(band=b).values]}
                          for b in self.ds["band"].values}}

    def _estimated(self) -> dict:
        """How the figures were made (a sampled index: estimates with a 95% interval)."""
        if self.mode != "sampled":
            return {}
        return {"mode": "sampled", "sample_rate": self.sample_rate}

    def sources_of(self, band: str) -> dict:
        """Which sources influenced ``band``, ranked by their total share of its update."""
        self._band(band)
        ds = self.by_source().sel(band=band)
        u = ds["update_share"].sum("checkpoint")
        total = float(u.sum())
        rows = [{"source": str(s), "grad_norm_sq": float(ds["grad_norm_sq"].sel(source=s).sum()),
                 "update_share": float(u.sel(source=s)),
                 "share": float(u.sel(source=s)) / total if total else 0.0,
                 **{k: v for var in SHARES for k, v in self._interval(ds.sel(source=s), var).items()}}
                for s in ds["source"].values]
        rows.sort(key=lambda r: (-r["share"], r["source"]))
        return {"band": band, **self._estimated(), "sources": rows}

    def cell(self, source: str, band: str) -> dict:
        """One source in one band, per checkpoint."""
        self._source(source)
        self._band(band)
        ds = self.by_source().sel(source=source, band=band)
        return {"source": source, "band": band, "checkpoints": [int(c) for c in self.ds["checkpoint"].values],
                "grad_norm_sq": [float(v) for v in ds["grad_norm_sq"].values],
                "update_share": [float(v) for v in ds["update_share"].values], **self._estimated(),
                **({f"{k}_se": [float(v) for v in ds[f"{k}_se"].values] for k in SHARES}
                   if self.mode == "sampled" else {})}

    def summary(self) -> dict:
        """Total squared gradient norm per source and band."""
        ds = self.by_source()
        g = ds["grad_norm_sq"].sum("checkpoint")
        out = {"granularity": self.ds.attrs["granularity"],
               "checkpoints": [int(c) for c in self.ds["checkpoint"].values],
               "grad_norm_sq": {str(s): {str(b): float(g.sel(source=s, band=b)) for b in g["band"].values}
                                for s in g["source"].values}, **self._estimated()}
        if self.mode == "sampled":
            se = np.sqrt((ds["grad_norm_sq_se"] ** 2).sum("checkpoint"))
            out["grad_norm_sq_se"] = {str(s): {str(b): float(se.sel(source=s, band=b)) for b in se["band"].values}
                                      for s in se["source"].values}
        return out

    def zero_since(self, source: str, since: int) -> dict:
        """The proof that ``source`` had no share of any gradient from step ``since`` on: the
        largest ``grad_norm_sq`` over the checkpoint intervals that start at or after ``since``.

        It is exact in a sampled index too: there ``loss_weight``, the sum of the loss weights of
        the source's rows, is recorded at every step, sampled or not. Where it is 0 over an
        interval, each of the source's rows had weight 0 (or it had none), so its share of every
        step's gradient was exactly 0, and so are the estimate and its standard error (sums of
        exact zeros); ``zero_influence`` then needs both to be 0."""
        self._source(source)
        steps = [int(c) for c in self.ds["checkpoint"].values]
        starts = [0, *steps[:-1]]
        after = [c for c, s in zip(steps, starts) if s >= since]
        ds = self.by_source().sel(source=source)
        worst = float(np.max(ds["grad_norm_sq"].sel(checkpoint=after).values)) if after else None
        out = {"source": source, "since": since, "checkpoints": after, "max_grad_norm_sq": worst,
               "zero_influence": worst == 0.0 if after else None}
        if self.mode == "sampled":
            weight = float(ds["loss_weight"].sel(checkpoint=after).sum()) if after else None
            se = float(np.max(ds["grad_norm_sq_se"].sel(checkpoint=after).values)) if after else None
            out.update(mode="sampled", loss_weight=weight, max_grad_norm_sq_se=se,
                       zero_influence=(worst == 0.0 and se == 0.0 and weight == 0.0) if after else None)
        return out
