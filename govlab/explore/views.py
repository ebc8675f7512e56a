"""HoloViews objects of the explorer, one function per view; each raises GovlabError when the run
lacks what the view needs (the app shows that message in the page)."""

from __future__ import annotations

import holoviews as hv
import numba
import pandas as pd
from holoviews.operation.datashader import rasterize

from govlab.errors import GovlabError
from govlab.explore.runs import (Run, band_timeline, lineage_table, mem_events, monitor_scores, sample_grid,
                                 source_band)

hv.extension("bokeh", logo=False)
# Datashader's numba kernels on numba's default OpenMP layer leave threads spinning after each raster,
# which starved torch's sampling in the same process (the attenuation preview ran 10x slower on 2
# cores); numba's own workqueue layer does not spin.
numba.config.THREADING_LAYER = "workqueue"

HEAT = dict(cmap="viridis", colorbar=True, tools=["hover"], xrotation=45, width=480, height=320,
            toolbar="above", default_tools=["save", "reset"])


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Text columns as Python objects: with pyarrow installed, pandas 3 stores text as Arrow arrays,
    which HoloViews' heatmap aggregation cannot reshape (NotImplementedError in the page)."""
    text = [c for c in df.columns if pd.api.types.is_string_dtype(df[c])]
    return df.astype({c: object for c in text}) if text else df


LABELS = {"update_share": "share of the applied update", "grad_norm_sq": "share of the squared gradient norm"}


def influence_heatmap(run: Run, metric: str, checkpoint: int, clim: tuple | None = None) -> hv.HeatMap:
    """Source x band heatmap of each source's share of each band at one checkpoint."""
    df = _plain(source_band(run, metric, checkpoint))
    share = hv.Dimension("share", label=LABELS[metric])
    interval = [c for c in ("estimate", "ci95_lo", "ci95_hi") if c in df]  # a sampled index: in the hover
    return hv.HeatMap(df, kdims=["band", "source"], vdims=[share, *interval]).opts(
        title=f"{run.name}, checkpoint {checkpoint}", clim=clim or (0, float(df["share"].max())), **HEAT)


def timeline_heatmap(run: Run, metric: str, source: str) -> hv.HeatMap:
    """Band x checkpoint heatmap of one source's share over training."""
    df = band_timeline(run, metric, source)
    df = _plain(df.assign(checkpoint=df["checkpoint"].astype(str)))
    share = hv.Dimension("share", label=LABELS[metric])
    return hv.HeatMap(df, kdims=["checkpoint", "band"], vdims=[share]).opts(
        title=f"{run.name}: {source} over training", **HEAT)


def sample_image(run: Run, metric: str, checkpoint: int) -> hv.Image:
    """Per-sample x band values as an image (samples on y); draw it through :func:`datashaded`."""
    xs, ys, z = sample_grid(run, metric, checkpoint)
    return hv.Image((xs, ys, z), kdims=["band", "sample"], vdims=[metric])


def datashaded(dmap: hv.DynamicMap, bands: list[str]) -> hv.DynamicMap:
    """Rasterize a per-sample image with Datashader so that 10^7 cells stay interactive."""
    return rasterize(dmap, aggregator="max", width=400, height=600).opts(
        cmap="viridis", cnorm="eq_hist", colorbar=True, tools=["hover"], width=560, height=420,
        xticks=list(enumerate(bands)), xrotation=45, title="per-sample influence (Datashader)")


def memorization_plot(run: Run) -> hv.Overlay:
    """Memorization scores over training: every score the monitor computed (grey, from
    ``memorization.json``), the flagged samples (coloured by their intervention, from
    ``events.jsonl``) and the threshold of each check (dashed)."""
    df, watched = mem_events(run), monitor_scores(run)
    if df.empty and watched.empty:
        raise GovlabError(f"{run.path}: no memorization events in events.jsonl and no memorization.json "
                          "(train with the monitor on: memorization.mode: monitor)")
    layers = []
    if not watched.empty:
        layers.append(hv.Scatter(_plain(watched.assign(sample=watched["sample"].astype(str))), kdims=["step"],
                                 vdims=["score", "sample"], label="watched").opts(
            color="lightgray", size=5, tools=["hover"]))
    if not df.empty:
        df = _plain(df.assign(sample=df["sample"].astype(str), action=df["action"].fillna("none").astype(str),
                              threshold=df["threshold"].astype(float)))
        layers.append(hv.Scatter(df, kdims=["step"], vdims=["score", "sample", "action", "threshold"]).opts(
            color="action", cmap="Category10", size=9, tools=["hover"]))
    thr = (watched if not watched.empty else df)[["step", "threshold"]].drop_duplicates("step").sort_values("step")
    layers.append(hv.Curve(thr.astype({"threshold": float}), kdims=["step"], vdims=["threshold"]).opts(
        color="black", line_dash="dashed"))
    return hv.Overlay(layers).opts(title=f"{run.name}: memorization scores and flags", width=560, height=320,
                                   legend_position="top_left", toolbar="above", default_tools=["save", "reset"])


def lineage_heatmap(run: Run) -> hv.HeatMap:
    """Per-prompt distances of the run to each base model of the lineage pool."""
    df = _plain(lineage_table(run))
    result = run.lineage
    verdict = f"fine-tuned from {result['base']}" if result.get("base") else "NULL"
    return hv.HeatMap(df, kdims=["base", "prompt"], vdims=["distance", "text"]).opts(
        title=f"{run.name}: lineage distances ({verdict})", **{**HEAT, "cmap": "magma_r"})


def side_by_side_clim(runs: list[Run], metric: str, checkpoint: int) -> tuple[float, float]:
    """One colour range for runs shown side by side (each at the checkpoint nearest ``checkpoint``)."""
    hi = max(float(source_band(r, metric, nearest(r.checkpoints, checkpoint))["share"].max()) for r in runs)
    return 0.0, hi


def nearest(values: list[int], value: int) -> int:
    return min(values, key=lambda v: abs(v - value))


def shown(fn, *args, **kwargs):
    """A Panel pane of ``fn(*args)``, or the GovlabError's message as an alert in the page."""
    import panel as pn

    try:
        obj = fn(*args, **kwargs)
    except GovlabError as e:
        return pn.pane.Alert(str(e), alert_type="warning")
    if isinstance(obj, hv.core.Dimensioned):
        return pn.pane.HoloViews(obj, linked_axes=False)
    return obj


def image_pane(images, *, scale: int = 6):
    """A Panel PNG pane of a uint8 batch ``(N, 3, H, W)`` as one row, at ``scale`` x its pixels."""
    import io

    import panel as pn

    from govlab.report import image_grid

    grid = image_grid(images, ncol=len(images), scale=scale)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return pn.pane.PNG(buf.getvalue(), width=grid.width, height=grid.height, sizing_mode="fixed")
