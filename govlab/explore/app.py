"""The govlab explorer app: ``explorer(paths)`` builds the page for some run directories.

Widgets, ``pn.bind`` and a template over ``govlab.explore``; all loading and plotting lives in
``runs``, ``views`` and ``preview``. ``govlab explore RUN [RUN ...]`` serves it (``serve``), as
does ``panel serve apps/explorer.py --args RUN ...`` (a thin entry that calls ``explorer``).
"""

from __future__ import annotations

import holoviews as hv
import panel as pn
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import FIXED_SIZING_MODE

from govlab.errors import GovlabError
from govlab.explore.runs import METRICS, event_images, load_runs, mem_events
from govlab.explore.views import (datashaded, image_pane, influence_heatmap, lineage_heatmap, memorization_plot,
                                  nearest, sample_image, shown, side_by_side_clim, timeline_heatmap)

TITLE = "govlab explorer"
silence(FIXED_SIZING_MODE, True)  # Panel 1.9 wraps pn.bind's fixed-size plots in a width-less 'fixed' Column


def options(fn, run):
    """Widget options drawn from a run; none when the run lacks the file they come from."""
    try:
        return fn(run) if run is not None else []
    except GovlabError:  # the view itself shows the message
        return []


def explorer(paths) -> pn.template.BootstrapTemplate:
    """The page for the run directories ``paths`` (loaded once per server, shared by sessions)."""
    pn.extension()
    runs, errors = pn.state.as_cached("govlab-explore-runs", load_runs, paths=tuple(map(str, paths)))
    by_name = {r.name: r for r in runs}
    indexed = {r.name: r for r in runs if r.has_index}
    per_sample = {n: r for n, r in indexed.items() if r.unit == "sample"}
    pair = [r for r in indexed.values() if r.unit == "source"][:2] or list(indexed.values())[:2]

    run_w = pn.widgets.Select(label="Run", options=by_name)
    metric_w = pn.widgets.Select(label="Metric", options=list(METRICS))
    checkpoint_w = pn.widgets.Select(label="Checkpoint")
    source_w = pn.widgets.Select(label="Source")
    event_w = pn.widgets.Select(label="Memorization event")
    slot_w = pn.widgets.Select(label="Slot (artist)")
    factor_w = pn.widgets.FloatSlider(label="Slot factor", start=0.0, end=2.0, step=0.25, value=0.0)
    sample_run_w = pn.widgets.Select(label="Per-sample run", options=per_sample)
    sample_ckpt_w = pn.widgets.Select(label="Per-sample checkpoint")
    left_w = pn.widgets.Select(label="Left run", options=indexed, value=pair[0] if pair else None)
    right_w = pn.widgets.Select(label="Right run", options=indexed, value=pair[-1] if pair else None)

    def on_run(run):
        ckpts = options(lambda r: r.checkpoints, run)
        checkpoint_w.options, checkpoint_w.value = ckpts, ckpts[-1] if ckpts else None
        sources = options(lambda r: r.sources, run)
        source_w.options, source_w.value = sources, sources[0] if sources else None
        flags = options(mem_events, run)
        event_w.options = {f"step {e.step}: sample {e.sample} (score {e.score:.3g})": i
                           for i, e in enumerate(flags.itertuples())} if len(flags) else {}
        event_w.value = 0 if len(flags) else None
        slots = options(lambda r: r.preview.slots, run)
        slot_w.options, slot_w.value = slots, slots[0] if slots else None

    def on_sample_run(run):
        ckpts = options(lambda r: r.checkpoints, run)
        sample_ckpt_w.options, sample_ckpt_w.value = ckpts, ckpts[-1] if ckpts else None

    run_w.param.watch(lambda e: on_run(e.new), "value")
    sample_run_w.param.watch(lambda e: on_sample_run(e.new), "value")
    on_run(run_w.value)
    on_sample_run(sample_run_w.value)

    def per_sample_view(run, metric, checkpoint):
        if run is None:
            return pn.pane.Alert("No per-sample index among these runs (write the index at per-sample granularity).",
                                 alert_type="warning")
        dmap = hv.DynamicMap(pn.bind(sample_image, run, metric, checkpoint))
        return pn.pane.HoloViews(datashaded(dmap, run.bands), linked_axes=False)

    def event_view(run, i):
        if i is None:
            return pn.pane.Markdown("")
        pngs = event_images(run, mem_events(run).iloc[i].to_dict())
        if not pngs:
            return pn.pane.Alert("No PNG for this event (run `govlab audit-memorization RUN`).", alert_type="info")
        return pn.Row(*[pn.Column(f"**{k}**", pn.pane.PNG(str(p), width=220)) for k, p in pngs.items()])

    def preview_view(run, slot, factor):
        try:
            before, after = run.preview(slot, factor)
        except GovlabError as e:
            return pn.pane.Alert(str(e), alert_type="warning")
        return pn.Column(f"**before** (slot `{slot}` x 1)", image_pane(before),
                         f"**after** (slot `{slot}` x {factor})", image_pane(after))

    def side_by_side(left, right, metric, checkpoint):
        if left is None or right is None or checkpoint is None:
            return pn.pane.Alert("Side by side needs two runs with an index (e.g. routed and unrouted).",
                                 alert_type="warning")
        try:
            clim = side_by_side_clim([left, right], metric, checkpoint)
        except GovlabError as e:
            return pn.pane.Alert(str(e), alert_type="warning")
        return pn.Row(*[shown(influence_heatmap, r, metric, nearest(r.checkpoints, checkpoint), clim)
                        for r in (left, right)])

    def card(title, *objects, cls):
        return pn.Card(*objects, title=title, collapsible=False, css_classes=[cls], sizing_mode="stretch_width")

    main = [
        *[pn.pane.Alert(e, alert_type="danger") for e in errors],
        card("Influence share: source x band", pn.bind(shown, influence_heatmap, run_w, metric_w, checkpoint_w),
             cls="view-influence"),
        card("One source over training: band x checkpoint", source_w,
             pn.bind(shown, timeline_heatmap, run_w, metric_w, source_w), cls="view-timeline"),
        card("Per-sample influence (Datashader)", pn.Row(sample_run_w, sample_ckpt_w),
             pn.bind(per_sample_view, sample_run_w, metric_w, sample_ckpt_w), cls="view-samples"),
        card("Memorization events", pn.bind(shown, memorization_plot, run_w), event_w,
             pn.bind(event_view, run_w, event_w), cls="view-memorization"),
        card("Lineage distances", pn.bind(shown, lineage_heatmap, run_w), cls="view-lineage"),
        card("Attenuation preview", pn.Row(slot_w, factor_w), pn.bind(preview_view, run_w, slot_w, factor_w),
             cls="view-attenuation"),
        card("Side by side", pn.Row(left_w, right_w), pn.bind(side_by_side, left_w, right_w, metric_w, checkpoint_w),
             cls="view-compare"),
    ]
    if not runs:
        main = [pn.pane.Alert(e, alert_type="danger") for e in errors or ["No run given: "
                                                                            "`govlab explore RUN [RUN ...]`."]]

    return pn.template.BootstrapTemplate(title=TITLE, sidebar=[run_w, metric_w, checkpoint_w], main=main)
