"""``govlab bench explore``: render times of the explorer's per-sample Datashader view on a
10^7-cell per-sample index (a synthetic fixture from ``govlab.explore.synthetic``)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from govlab.explore.runs import Run
from govlab.explore.synthetic import SOURCES, synthetic_index, write_index


def _image(pane, doc) -> np.ndarray:
    """The rasterized image the Bokeh model of ``pane`` holds."""
    from bokeh.models import GlyphRenderer, Image

    for r in doc.select({"type": GlyphRenderer}):
        if isinstance(r.glyph, Image):
            return np.asarray(r.data_source.data["image"][0])
    raise RuntimeError("no image glyph in the rendered plot")


def render_session(run: Run, checkpoints: list[int]) -> dict:
    """First render of the per-sample view in a new Bokeh document, then one re-render per
    checkpoint change; seconds, measured until the Bokeh model holds the new image."""
    import holoviews as hv
    import panel as pn
    from bokeh.document import Document

    from govlab.explore.views import datashaded, sample_image

    metric = pn.widgets.Select(options=["update_share", "grad_norm_sq"], value="update_share")
    ckpt = pn.widgets.Select(options=checkpoints, value=checkpoints[0])
    t0 = time.perf_counter()
    dmap = hv.DynamicMap(pn.bind(sample_image, run, metric, ckpt))
    pane = pn.pane.HoloViews(datashaded(dmap, run.bands), linked_axes=False)
    doc = Document()
    root = pane.get_root(doc)
    doc.add_root(root)
    img = _image(pane, doc)
    first = time.perf_counter() - t0
    if not np.isfinite(img).any():
        raise RuntimeError("first render produced an empty image")
    rerender = []
    for c in [*checkpoints[1:], checkpoints[0]]:
        t0 = time.perf_counter()
        ckpt.value = c
        new = _image(pane, doc)
        rerender.append(time.perf_counter() - t0)
        if np.array_equal(new, img, equal_nan=True):
            raise RuntimeError("the image did not change after a checkpoint change")
        img = new
    pane._cleanup(root)
    return {"first": first, "rerender": rerender, "shape": img.shape}


def _open(path: Path) -> tuple[Run, float]:
    t0 = time.perf_counter()
    run = Run(path)
    run.unit  # noqa: B018 - open and validate index.nc
    return run, time.perf_counter() - t0


def bench_explore(*, quick: bool = False) -> dict:
    """Time to first render and to re-render after a widget change (checkpoint), per-sample index of
    10^7 cells per checkpoint. ``first_render_cold_s``: the first render in a fresh process, with
    Datashader's numba JIT; ``first_render_s``: a page after that JIT is done (``govlab explore``
    compiles it at server start); both include opening and validating index.nc."""
    n_artists = sum(s.startswith("artist") for s in SOURCES)
    bands = 4 + n_artists  # outer, middle, cross_attention, trunk + one slot band per artist
    samples = 10**7 // bands
    checkpoints = [100, 200, 300] if quick else [100, 200, 300, 400, 500]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_index(synthetic_index(samples=samples, checkpoints=checkpoints), Path(tmp) / "index.nc")
        write_s = time.perf_counter() - t0
        run, open_cold = _open(Path(tmp))
        cold = render_session(run, checkpoints)
        run.index.close()
        firsts, reren = [], list(cold["rerender"])
        for _ in range(2 if quick else 4):
            run, open_s = _open(Path(tmp))
            warm = render_session(run, checkpoints)
            run.index.close()
            firsts.append(open_s + warm["first"])
            reren += warm["rerender"]
    return {
        "cells_per_checkpoint": samples * bands, "samples": samples, "bands": bands,
        "checkpoints": len(checkpoints), "first_render_s": round(statistics.median(firsts), 3),
        "first_render_cold_s": round(open_cold + cold["first"], 3), "open_index_cold_s": round(open_cold, 3),
        "rerender_s": round(statistics.median(reren), 3), "rerender_max_s": round(max(reren), 3),
        "raster_shape": list(cold["shape"]), "write_index_s": round(write_s, 2),
        "goal_s": 2.0, "quick": quick,
    }
