"""The workshop's lessons: what each computes (plain functions returning figures and PNGs) and the
ipywidgets panels that drive them. The notebooks only import, call and display these.

Each ``*_panel(ws)`` returns a widget whose controls redraw its outputs; the same figures come
from the plain functions (``routing_view``, ``memorization_view``, ``source_bands``,
``run_optout``, ``measure``, ``check_verdict``), which the exercises and solutions call directly.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from govlab.errors import GovlabError
from govlab.workshop.folder import open_workshop

SHAPES = ("circle", "bar", "triangle", "cross")
SEEDS = 2  # generations per prompt in the grids


# -- shared helpers -------------------------------------------------------------------------------------
def _png(figure_or_image) -> bytes:
    """PNG bytes of a matplotlib figure (closed) or a PIL image."""
    buf = io.BytesIO()
    if hasattr(figure_or_image, "savefig"):
        import matplotlib.pyplot as plt

        figure_or_image.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure_or_image)
    else:
        figure_or_image.save(buf, format="png")
    return buf.getvalue()


def _grid(images: torch.Tensor, ncol: int) -> bytes:
    from govlab.report import image_grid

    return _png(image_grid(images, ncol=ncol, scale=6))


def _run_config(run: Path):
    from govlab.config import from_dict, read_yaml

    return from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))


@lru_cache(maxsize=None)
def _evaluator():
    from govlab.eval.classifiers import load_evaluator

    return load_evaluator(16, progress=False)[0]


def _load(path: Path):
    from govlab.models.diffusion import TextToImage

    return TextToImage.load(path)


def _caption(source: str, shape: str) -> str:
    from govlab.data.world import COLORS, POSITIONS_1, caption_for

    return caption_for({"kind": "artist", "source_id": source, "shape": shape, "count": 1,
                        "color": list(COLORS)[0], "position": list(POSITIONS_1)[0], "identity": None})


# -- lesson 1: routing ----------------------------------------------------------------------------------
def artists(ws: Path) -> list[str]:
    """The artists with a routing slot in the routed run."""
    from govlab.routing.slots import slot_names

    return [s for s in slot_names(_load(Path(ws) / "runs" / "routed" / "model.safetensors")) if s.startswith("artist")]


def _style_share(images: torch.Tensor, artist: str) -> float:
    from govlab.eval.classifiers import HEADS

    pred = _evaluator().predict(images)["source"]
    return round(float(np.mean([HEADS["source"][int(i)] == artist for i in pred])), 3)


def _update_shares(run: Path) -> "tuple[list[str], list[str], np.ndarray]":
    """Each source's share of each band's applied update over the whole run (a band's shares sum to 1)."""
    from govlab.provenance.index import ProvenanceIndex

    u = ProvenanceIndex.open(run).by_source()["update_share"].sum("checkpoint")
    total = u.sum("source")
    share = (u / total.where(total != 0, 1.0)).transpose("source", "band")
    return [str(s) for s in share["source"].values], [str(b) for b in share["band"].values], share.values


def _heatmaps(ws: Path, artist: str, factor: float) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, name in zip(axes, ("routed", "unrouted")):
        sources, bands, share = _update_shares(Path(ws) / "runs" / name)
        keep = [j for j, b in enumerate(bands) if not b.startswith("slot:") or b == f"slot:{artist}"]
        share = share[:, keep].copy()
        bands = [bands[j] for j in keep]
        if f"slot:{artist}" in bands:  # what scaling the slot leaves of the updates it holds
            share[:, bands.index(f"slot:{artist}")] *= factor
        im = ax.imshow(share, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(bands)), bands, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(sources)), sources, fontsize=8)
        ax.axhline(sources.index(artist) - 0.5, color="w", lw=1)
        ax.axhline(sources.index(artist) + 0.5, color="w", lw=1)
        ax.set_title(f"{name}: share of each band's update (slot:{artist} x {factor:g})", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8)
    return _png(fig)


def routing_view(ws: str | Path, artist: str = "artist_0", factor: float = 0.0, *, seed: int = 0) -> dict:
    """Generations of ``artist``'s prompts before and after scaling its slot by ``factor``, in the
    routed and the unrouted model; the share classified as the artist's style; the index heatmaps."""
    ws = open_workshop(ws)
    if not 0 <= factor <= 2:
        raise GovlabError(f"factor must be in 0..2, got {factor}")
    from govlab.routing.slots import scale_slot

    prompts = [_caption(artist, s) for s in SHAPES for _ in range(SEEDS)]
    rows, images = {}, []
    for name in ("routed", "unrouted"):
        for label, f in (("before", 1.0), ("after", factor)):
            model = _load(ws / "runs" / name / "model.safetensors")
            if f != 1.0:
                scale_slot(model, artist, f)
            x = model.generate(prompts, seed=seed, steps=8)
            rows[f"{name} {label}"] = _style_share(x, artist)
            images.append(x)
    return {"artist": artist, "factor": factor, "style_share": rows,
            "grid": _grid(torch.cat(images), ncol=len(prompts)),
            "rows": list(rows), "heatmap": _heatmaps(ws, artist, factor)}


def routing_panel(ws: str | Path | None = None):
    """Lesson 1: an artist and an attenuation factor; the generations and the index heatmaps follow."""
    import ipywidgets as W

    ws = open_workshop(ws)
    artist = W.Dropdown(options=artists(ws), value=artists(ws)[0], description="Artist")
    factor = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.25, description="Factor", continuous_update=False)
    grid, heat, text = W.Image(format="png"), W.Image(format="png"), W.HTML()

    def redraw(*_):
        text.value = "<i>generating...</i>"
        v = routing_view(ws, artist.value, factor.value)
        grid.value, heat.value = v["grid"], v["heatmap"]
        text.value = ("<b>Rows</b>: " + ", ".join(v["rows"]) + "<br><b>Share judged in "
                      f"{v['artist']}'s style</b>: " + ", ".join(f"{k} {s:.2f}" for k, s in v["style_share"].items()))

    artist.observe(redraw, "value")
    factor.observe(redraw, "value")
    redraw()
    return W.VBox([W.HBox([artist, factor]), text, grid, heat])


# -- lesson 2: memorization -----------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _mem_data(run: str):
    from govlab.data.cache import run_dataset

    return run_dataset(_run_config(Path(run)), progress=False)


def planted(ws: str | Path) -> list[str]:
    """Captions of the planted duplicates of the memorization runs."""
    from govlab.memorization.audit import is_planted

    data = _mem_data(str(open_workshop(ws) / "runs" / "memorization-none"))
    return list(dict.fromkeys(r["caption"] for r in data.records if is_planted(r)))


def checkpoint_steps(ws: str | Path, intervention: str = "none") -> list[int]:
    run = open_workshop(ws) / "runs" / f"memorization-{intervention}"
    return sorted(int(p.stem[5:]) for p in (run / "checkpoints").glob("step_*.safetensors"))


def memorization_view(ws: str | Path, caption: str, step: int, intervention: str = "none", *, n: int = 4) -> dict:
    """The planted image of ``caption``, ``n`` generations of its caption by the model at ``step``,
    their closest l2 distance to it over the distance to the next-nearest training image (below
    1/3: reproduced), the monitor's latest score of the caption at that step, its threshold and
    whether (and when) the monitor flagged it."""
    from govlab.hooks import EventLog
    from govlab.memorization.detectors import MEMORIZED_RATIO, own_ratio, pixel_features, unique_images
    from govlab.memorization.monitor import read_monitor

    ws = open_workshop(ws)
    if intervention not in ("none", "drop"):
        raise GovlabError(f"intervention must be none or drop, got {intervention!r}")
    run = ws / "runs" / f"memorization-{intervention}"
    steps = checkpoint_steps(ws, intervention)
    if step not in steps:
        raise GovlabError(f"no checkpoint at step {step} (steps: {', '.join(map(str, steps))})")
    data = _mem_data(str(run))
    rows = [i for i, r in enumerate(data.records) if r["caption"] == caption]
    if not rows:
        raise GovlabError(f"no training caption {caption!r}")
    uniq, image_of = unique_images(data.images)
    own = int(image_of[rows[0]])
    model = _load(run / "checkpoints" / f"step_{step:06d}.safetensors")
    gens = model.generate([caption] * n, seed=0, steps=8)
    ratio = own_ratio(pixel_features(gens), torch.full((n,), own), pixel_features(uniq))
    monitor = read_monitor(run)
    curve = [(h["step"], h["threshold"], h["scores"].get(rows[0])) for h in monitor["history"]]
    scored = [(s, t, v) for s, t, v in curve if v is not None and s <= step]
    flags = [e for e in EventLog(run / "events.jsonl").read()
             if e["event"] == "memorization_flag" and e.get("sample") in rows]
    first_flag = min((e["step"] for e in flags), default=None)
    best = float(ratio.min())
    return {"caption": caption, "step": step, "intervention": intervention,
            "best_ratio": round(best, 3), "reproduced": best < MEMORIZED_RATIO,
            "score": round(scored[-1][2], 3) if scored else None,
            "threshold": round(scored[-1][1], 3) if scored else None,
            "flagged_at": first_flag, "flagged_by_now": first_flag is not None and first_flag <= step,
            "grid": _grid(torch.cat([uniq[own:own + 1], gens]), ncol=n + 1),
            "curve": _score_curve(curve, step, caption)}


def _score_curve(curve, step: int, caption: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    pts = [(s, v) for s, _, v in curve if v is not None]
    if pts:
        ax.plot(*zip(*pts), "o-", label="detector score of this caption")
    ax.plot([s for s, _, _ in curve], [t for _, t, _ in curve], "--", color="gray", label="monitor threshold")
    ax.axvline(step, color="red", lw=1, label="this step")
    ax.set(xlabel="training step", ylabel="score (1 - l2 ratio)", ylim=(0, 1))
    ax.set_title(caption[:60], fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def memorization_panel(ws: str | Path | None = None):
    """Lesson 2: a planted image, a training step and the intervention; its generations follow."""
    import ipywidgets as W

    ws = open_workshop(ws)
    steps = checkpoint_steps(ws)
    caption = W.Dropdown(options=planted(ws), description="Planted", layout=W.Layout(width="60%"))
    step = W.SelectionSlider(options=steps, value=steps[0], description="Step", continuous_update=False)
    intervention = W.ToggleButtons(options=["none", "drop"], description="Intervention")
    grid, curve, text = W.Image(format="png"), W.Image(format="png"), W.HTML()

    def redraw(*_):
        v = memorization_view(ws, caption.value, step.value, intervention.value)
        grid.value, curve.value = v["grid"], v["curve"]
        flag = (f"flagged at step {v['flagged_at']}" if v["flagged_by_now"] else
                "not flagged yet" + (f" (flagged at step {v['flagged_at']})" if v["flagged_at"] else ""))
        text.value = (f"left: the training image; right: 4 generations at step {v['step']}<br>"
                      f"closest generation / next-nearest training image: <b>{v['best_ratio']}</b> "
                      f"({'reproduced' if v['reproduced'] else 'not reproduced'}: below 0.333 counts)<br>"
                      f"monitor score <b>{v['score']}</b>, threshold {v['threshold']}: <b>{flag}</b>")

    for w in (caption, step, intervention):
        w.observe(redraw, "value")
    redraw()
    return W.VBox([caption, W.HBox([step, intervention]), text, grid, curve])


# -- lesson 3: the rights holder's question ----------------------------------------------------------
def sources(ws: str | Path) -> list[str]:
    from govlab.provenance.index import ProvenanceIndex

    return ProvenanceIndex.open(open_workshop(ws) / "runs" / "routed").sources


def source_bands(ws: str | Path, source: str, run: str | Path | None = None) -> dict:
    """Which bands ``source`` changed in the routed run (or ``run``), over time: its share of each
    band's update per checkpoint interval, as a heatmap and a table."""
    import matplotlib.pyplot as plt

    from govlab.provenance.index import ProvenanceIndex

    run = Path(run) if run is not None else open_workshop(ws) / "runs" / "routed"
    answer = ProvenanceIndex.open(run).bands_of(source)
    bands = list(answer["bands"])
    share = np.array([answer["bands"][b]["share_over_time"] for b in bands])
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(bands) + 1.2))
    im = ax.imshow(share, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_yticks(range(len(bands)), bands, fontsize=8)
    ax.set_xticks(range(len(answer["checkpoints"])), [f"to {c}" for c in answer["checkpoints"]], fontsize=8)
    ax.set_title(f"{source}: share of each band's update per interval", fontsize=9)
    fig.colorbar(im, ax=ax)
    table = {b: {"update_share": round(v["update_share"], 6), "grad_norm_sq": round(v["grad_norm_sq"], 6)}
             for b, v in answer["bands"].items()}
    return {"source": source, "checkpoints": answer["checkpoints"], "table": table, "heatmap": _png(fig)}


def optout_default_since(ws: str | Path) -> int:
    """The middle checkpoint of the routed run: a step from which an opt-out leaves intervals on both sides."""
    cfg = _run_config(open_workshop(ws) / "runs" / "routed")
    return cfg.train.checkpoint_every * max(1, cfg.train.steps // cfg.train.checkpoint_every // 2)


def run_optout(ws: str | Path, source: str, since: int, scope: str = "all", *, progress: bool = False) -> dict:
    """Train the routed run again with ``source`` opting out from step ``since`` (``scope: all``
    also zeroes its slot after training), into ``DIR/work``; returns the index's proof of zero
    influence from ``since`` on, the bands heatmap and the attestation (markdown)."""
    from govlab.config import from_dict
    from govlab.provenance.attest import attest
    from govlab.provenance.index import ProvenanceIndex
    from govlab.run import train_run

    ws = open_workshop(ws)
    cfg = _run_config(ws / "runs" / "routed")
    if source not in sources(ws):
        raise GovlabError(f"no source {source!r} (sources: {', '.join(sources(ws))})")
    if not 0 <= since < cfg.train.steps:
        raise GovlabError(f"since must be a step in 0..{cfg.train.steps - 1}, got {since}")
    work = ws / "work" / f"optout-{source}-{since}-{scope}"
    work.mkdir(parents=True, exist_ok=True)
    registry = work / "optouts.jsonl"
    registry.write_text(json.dumps({"source_id": source, "since": since, "scope": scope}) + "\n")
    cfg = from_dict({"name": f"optout-{source}", "provenance": {"optouts": str(registry)}}, base=cfg)
    run = work / "run"
    train_run(cfg, run, progress=progress)
    attest(run)
    proof = ProvenanceIndex.open(run).zero_since(source, since)
    return {"run": str(run), "source": source, "since": since, "scope": scope, "proof": proof,
            "bands": source_bands(ws, source, run), "attestation": (run / "attestation.md").read_text()}


def rights_panel(ws: str | Path | None = None):
    """Lesson 3: a source's bands over time; an opt-out run and its attestation."""
    import ipywidgets as W
    from IPython.display import Markdown, display

    ws = open_workshop(ws)
    cfg = _run_config(ws / "runs" / "routed")
    source = W.Dropdown(options=sources(ws), value=sources(ws)[0], description="Source")
    heat, text = W.Image(format="png"), W.HTML()
    since = W.IntSlider(value=optout_default_since(ws), min=0, max=cfg.train.steps - cfg.train.checkpoint_every,
                        step=cfg.train.checkpoint_every, description="Since step")
    scope = W.ToggleButtons(options=["training", "all"], value="all", description="Scope")
    go = W.Button(description="Run the opt-out", button_style="warning")
    after, out = W.Image(format="png"), W.Output()

    def redraw(*_):
        v = source_bands(ws, source.value)
        heat.value = v["heatmap"]
        top = sorted(v["table"].items(), key=lambda kv: -kv[1]["update_share"])[:3]
        text.value = "largest total update share: " + ", ".join(f"{b} {t['update_share']:.3g}" for b, t in top)

    def opt_out(_):
        go.disabled, go.description = True, "training..."
        out.clear_output()
        try:
            r = run_optout(ws, source.value, since.value, scope.value)
            after.value = r["bands"]["heatmap"]
            with out:
                p = r["proof"]
                print(f"zero influence of {r['source']} from step {r['since']} on: {p['zero_influence']} "
                      f"(largest grad_norm_sq over checkpoints {p['checkpoints']}: {p['max_grad_norm_sq']})")
                display(Markdown(r["attestation"]))
        finally:
            go.disabled, go.description = False, "Run the opt-out"

    source.observe(redraw, "value")
    go.on_click(opt_out)
    redraw()
    return W.VBox([source, text, heat, W.HBox([since, scope]), go, after, out])


# -- lesson 4: lineage detective -------------------------------------------------------------------------
def suspects(ws: str | Path) -> list[str]:
    return sorted(p.name for p in (open_workshop(ws) / "lineage" / "suspects").iterdir() if p.is_dir())


def bases(ws: str | Path) -> list[str]:
    return sorted(p.name for p in (open_workshop(ws) / "lineage" / "pool").iterdir() if p.is_dir())


def candidate_prompts(n: int = 6) -> list[str]:
    from govlab.lineage.prompts import detailed_prompts

    return detailed_prompts(n, seed=0)


def measure(ws: str | Path, suspect: str, prompts: list[str], k: int = 24) -> dict:
    """The lineage test of ``suspect`` against the pool: mean JS distance to each base over the
    prompts, the NULL threshold (below it: a candidate parent), each prompt's vote and the verdict."""
    import matplotlib.pyplot as plt

    from govlab.lineage.api import lineage_from_features, probe

    ws = open_workshop(ws)
    if suspect not in suspects(ws):
        raise GovlabError(f"no suspect {suspect!r} (suspects: {', '.join(suspects(ws))})")
    if not prompts:
        raise GovlabError("choose at least one prompt")
    feats, pool, name = probe(ws / "lineage" / "suspects" / suspect, ws / "lineage" / "pool", list(prompts), k=k)
    result = lineage_from_features(feats, pool, name)
    distances = {b: float(np.mean([v.distances[b] for v in result.votes])) for b in pool}
    threshold = float(np.mean([v.threshold for v in result.votes]))
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.bar(list(distances), list(distances.values()), color="tab:blue")
    ax.axhline(threshold, color="red", ls="--", label="NULL threshold (mean over prompts)")
    ax.set(ylabel="JS distance to the suspect", title=f"{suspect}, k = {k}, {len(prompts)} prompt(s)")
    ax.legend(fontsize=7)
    return {"suspect": suspect, "k": k, "prompts": list(prompts), "distances": distances, "threshold": threshold,
            "votes": [v.vote or "NULL" for v in result.votes], "test_says": result.base or "NULL",
            "chart": _png(fig)}


def check_verdict(ws: str | Path, suspect: str, verdict: str) -> bool:
    """Whether ``verdict`` (a base's name, or ``NULL``) is the suspect's true origin."""
    ws = open_workshop(ws)
    answers = json.loads((ws / "answers" / "lineage.json").read_text())
    if suspect not in answers:
        raise GovlabError(f"no suspect {suspect!r} (suspects: {', '.join(sorted(answers))})")
    return (answers[suspect] or "NULL") == verdict


def lineage_panel(ws: str | Path | None = None):
    """Lesson 4: a suspect, prompts and k; the distances and the threshold; a verdict to submit."""
    import ipywidgets as W

    ws = open_workshop(ws)
    suspect = W.Dropdown(options=suspects(ws), description="Suspect")
    options = candidate_prompts()
    prompts = W.SelectMultiple(options=options, value=options[:2], description="Prompts",
                               layout=W.Layout(width="90%", height="120px"))
    k = W.IntSlider(value=24, min=12, max=60, step=12, description="k")
    go, chart, text = W.Button(description="Measure"), W.Image(format="png"), W.HTML()
    verdict = W.Dropdown(options=[*bases(ws), "NULL"], description="Verdict")
    submit, answer = W.Button(description="Submit verdict", button_style="success"), W.HTML()

    def run(*_):
        go.disabled = True
        try:
            v = measure(ws, suspect.value, list(prompts.value), k.value)
            chart.value = v["chart"]
            text.value = (f"votes per prompt: {', '.join(v['votes'])}; the test says <b>{v['test_says']}</b><br>"
                          + ", ".join(f"{b} {d:.3f}" for b, d in v["distances"].items())
                          + f"; threshold {v['threshold']:.3f}")
        finally:
            go.disabled = False

    def check(_):
        ok = check_verdict(ws, suspect.value, verdict.value)
        answer.value = (f"<b style='color:green'>{suspect.value}: {verdict.value} is right.</b>" if ok else
                        f"<b style='color:firebrick'>{suspect.value}: not {verdict.value}.</b> More prompts or a larger k?")

    go.on_click(run)
    submit.on_click(check)
    run()
    return W.VBox([suspect, prompts, k, go, text, chart, W.HBox([verdict, submit]), answer])
