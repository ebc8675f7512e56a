"""Removal of one artist judged as the unlearning literature judges it: against retraining, and ESD.

UnlearnCanvas (Zhang et al., NeurIPS 2024) scores an unlearning method by its unlearning accuracy
(UA), in-domain retain accuracy (IRA) and cross-domain retain accuracy (CRA). Here, for the removed
artist (``artist_0`` by default), from the evaluator's verdicts on generated images:

- ``ua``: 1 - the artist's style share among generations from prompts naming it;
- ``share_unnamed``: its style share among generations from prompts naming no artist (the artist
  prompts' attributes, "a red circle top left", without "by artist N");
- ``share_other_prompts``: its style share among generations from prompts naming another artist;
- ``ira``: the other artists' style accuracy on their own prompts;
- ``cra``: shape accuracy over every prompt above.

Each with a 95% bootstrap interval over generations (over training seeds and generations where
several seeds are trained). Variants: ``slot`` (routed model, the artist's slot zeroed),
``retrain`` (routed, trained without the artist: the oracle), ``unrouted_slot`` (same expanded
model trained with plain gradients, slot zeroed) and ``esd`` (ESD-x, Gandikota et al. 2023, on the
unrouted model: the post-hoc method a user without routing would pick). Trainings are kept in
``workdir`` (default: the govlab cache) and reused.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from govlab.config import RunConfig, from_dict, load_config
from govlab.data.cache import cache_dir
from govlab.data.world import ARTISTS, WORLD_VERSION, caption_for
from govlab.errors import GovlabError
from govlab.eval.classifiers import HEADS, load_evaluator
from govlab.eval.scores import probe_prompts
from govlab.eval.stats import CONFIDENCE, RESAMPLES, mean_ci, with_interval
from govlab.io import write_json, write_text
from govlab.models.diffusion import TextToImage, to_float
from govlab.routing.slots import scale_slot
from govlab.studies.localization import configs, seed_suffix, train_one

FIGURES = ("ua", "share_unnamed", "share_other_prompts", "ira", "cra")
VARIANTS = ("slot", "retrain", "unrouted_slot", "esd")
LABELS = {"slot": "(a) routed, slot zeroed", "retrain": "(b) retrained without the artist (oracle)",
          "unrouted_slot": "(c) unrouted, slot zeroed", "esd": "(d) ESD-x on the unrouted model",
          "confined_slot": "(e) confined routing, slot zeroed"}
# the design tried when the default cannot forget on prompts naming no artist: the removable artist's
# samples change only its own slot (routing.confined_sources)
DESIGNS = {"caption_slots": "default: caption slots, artist samples also train the shared layers",
           "confined": "confined: the artist's samples change only its slot"}


def study_config(quick: bool) -> RunConfig:
    """The trainings' config: smoke-sized model and world, 480 steps at batch 32 (``quick``: a few
    minutes each on 2 shared cores), or the ``routed`` preset (demo-sized, 800 steps at batch 64); on
    world version 2 by default (``v2_routing``)."""
    if quick:
        cfg = from_dict({"name": "removal-quick", "routing": {"mode": "routed"},
                         "train": {"steps": 480, "batch_size": 32, "warmup_steps": 20, "checkpoint_every": 240},
                         "eval": {"per_prompt": 8, "steps": 8}}, base=load_config("smoke"))
    else:
        cfg = from_dict({"name": "removal", "world": {"version": WORLD_VERSION}}, base=load_config("routed"))
    return v2_routing(cfg)


def v2_routing(cfg: RunConfig) -> RunConfig:
    """On world version 2 the watermark is on every kind of source and no caption names it, so no
    caption adapter can tell when to act: identity stays sequestered, watermarked samples route as
    their other categories do."""
    if cfg.world.version == 1:
        return cfg
    policy = {k: v for k, v in cfg.routing.policy.items() if k != "watermark"}
    return replace(cfg, routing=replace(cfg.routing, policy=policy,
                                        sequestered=tuple(c for c in cfg.routing.sequestered if c != "watermark")))


def unnamed_caption(probe: dict) -> str:
    """The probe's caption naming no source: its shape, colour and position alone."""
    caption = caption_for({**probe, "kind": "artist"})
    return caption.rsplit(", by ", 1)[0]


def removal_prompts(artist: str, artists: list[str], per_prompt: int, seed: int = 0) -> list[dict]:
    """Probe prompts of every artist x shape (``per_prompt`` each) tagged ``set``: ``named`` (naming
    ``artist``), ``others`` (naming another artist), and one ``unnamed`` prompt per artist prompt
    (the same attributes, no source named)."""
    out = []
    for p in probe_prompts(artists, per_prompt, seed):
        if p["kind"] != "artist":
            continue
        out.append({**p, "set": "named" if p["source_id"] == artist else "others"})
        out.append({**p, "set": "unnamed", "source_id": None, "caption": unnamed_caption(p)})
    return out


@torch.no_grad()
def verdicts(model: TextToImage, prompts: list[dict], artist: str, *, steps: int, guidance: float,
             seed: int, evaluator=None) -> dict[str, np.ndarray]:
    """Generate one image per prompt and return the 0/1 verdict per image behind each figure
    (``ua``: 1 where the image is *not* in the artist's style)."""
    evaluator = evaluator or load_evaluator(model.cfg.image_size, progress=False)[0]
    images = model.generate([p["caption"] for p in prompts], seed=seed, steps=steps, guidance=guidance)
    pred = evaluator.predict(images)
    names = getattr(evaluator, "head_names", HEADS)
    src = np.array(names["source"])[pred["source"].numpy()]
    shape = np.array(names["shape"])[pred["shape"].numpy()]
    sets = np.array([p["set"] for p in prompts])
    want = np.array([p["source_id"] or "" for p in prompts])
    want_shape = np.array([p["shape"] for p in prompts])
    mine = src == artist
    return {"ua": (~mine[sets == "named"]).astype(float), "share_unnamed": mine[sets == "unnamed"].astype(float),
            "share_other_prompts": mine[sets == "others"].astype(float),
            "ira": (src == want)[sets == "others"].astype(float), "cra": (shape == want_shape).astype(float)}


def interval(groups: list[np.ndarray], *, seed: int = 0) -> tuple[float, list[float] | None]:
    """Mean and 95% interval: percentile bootstrap over generations (one group), or hierarchical over
    training seeds, then generations within each drawn seed (several groups)."""
    if len(groups) == 1:
        return mean_ci(groups[0], seed=seed)
    allv = np.concatenate(groups)
    rng = np.random.default_rng(seed)
    stats = np.empty(RESAMPLES)
    for i in range(RESAMPLES):
        picked = rng.integers(len(groups), size=len(groups))
        stats[i] = np.mean(np.concatenate([rng.choice(groups[k], size=len(groups[k])) for k in picked]))
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return round(float(allv.mean()), 4), [round(float(lo), 4), round(float(hi), 4)]


def figures(per_seed: list[dict[str, np.ndarray]], *, names=FIGURES, seed: int = 0) -> dict:
    """The figures ``names`` (default the five) from per-seed 0/1 verdicts, each with ``<figure>_ci``
    and ``<figure>_n`` (generations, all seeds)."""
    out = {}
    for f in names:
        groups = [v[f] for v in per_seed]
        out[f], out[f"{f}_ci"] = interval(groups, seed=seed)
        out[f"{f}_n"] = int(sum(len(g) for g in groups))
    return out


def esd(model: TextToImage, prompts: list[str], *, iterations: int = 200, lr: float = 1e-3, eta: float = 1.0,
        batch_size: int = 32, pool: int = 64, steps: int = 8, guidance: float = 3.0, seed: int = 0,
        progress: bool = False) -> TextToImage:
    """ESD-x (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models"), in place: fine-tune the
    cross-attention layers (``attn2``, through which the caption enters the UNet) so that
    ``eps(x_t, c) = eps*(x_t, null) - eta * (eps*(x_t, c) - eps*(x_t, null))`` under a frozen copy
    ``eps*``, for captions ``c`` naming the concept. ``x_t``: the frozen model's own generations
    for ``c`` (``pool`` of them, drawn once) noised to a random timestep, which stands in for the
    paper's partial sampling; everything else (the caption encoder, its slots, the rest of the
    UNet) stays as it is."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    named = [(n, p) for n, p in model.named_parameters() if ".attn2." in n]
    if not named:
        raise GovlabError("esd: the model has no cross-attention (attn2) layers to fine-tune")
    model.requires_grad_(False)
    params = [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    chosen = [prompts[i] for i in torch.randint(len(prompts), (pool,), generator=g).tolist()]
    x0 = to_float(frozen.generate(chosen, seed=seed, steps=steps, guidance=guidance)).to(model.device)
    tokens = model.tokenizer(chosen).to(model.device)
    null = model.tokenizer([""]).to(model.device)
    opt = torch.optim.Adam(params, lr=lr)
    model.eval()
    for _ in tqdm(range(iterations), desc="esd", disable=not progress, leave=False):
        idx = torch.randint(pool, (batch_size,), generator=g)
        t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        noise = torch.randn(batch_size, *x0.shape[1:], generator=g).to(model.device)
        t = t.to(model.device)
        xt = model.noise_scheduler.add_noise(x0[idx], noise, t)
        with torch.no_grad():
            e_c = frozen.predict_noise(xt, t, frozen.text(tokens[idx]))
            e_0 = frozen.predict_noise(xt, t, frozen.text(null.expand(batch_size, -1)))
            target = e_0 - eta * (e_c - e_0)
        loss = F.mse_loss(model.predict_noise(xt, t, model.text(tokens[idx])), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.requires_grad_(True)
    return model


def workdir_for(cfg: RunConfig) -> Path:
    return cache_dir("studies", "removal", cfg.hash())


def confined(cfg: RunConfig, artist: str) -> RunConfig:
    """The routed config with ``artist``'s samples confined to its own slot."""
    c = replace(cfg, routing=replace(cfg.routing, mode="routed", confined_sources=(artist,)))
    return replace(c, name=f"{cfg.name}-confined")


def removal(cfg: RunConfig | None = None, *, quick: bool = True, artist: str = "artist_0", seeds: int = 1,
            per_prompt: int | None = None, workdir: str | Path | None = None, designs: bool = True,
            esd_iterations: int | None = None, esd_lr: float = 1e-3, esd_eta: float = 1.0,
            progress: bool = False) -> dict:
    """Train (or reuse) the routed model, the retraining without ``artist`` and the unrouted model
    per training seed, remove ``artist`` four ways and score the five figures with intervals.
    ``designs``: also the confined design (one more training per seed) for the trade-off table."""
    cfg = v2_routing(cfg or study_config(quick))
    artists = [a.source_id for a in ARTISTS[: cfg.world.n_artists]]
    if artist not in artists:
        raise GovlabError(f"removal: unknown artist {artist!r} (artists: {', '.join(artists)})")
    if seeds < 1:
        raise GovlabError(f"removal: seeds must be >= 1, got {seeds}")
    workdir = Path(workdir) if workdir else workdir_for(cfg)
    e = cfg.eval
    per_prompt = per_prompt or e.per_prompt
    prompts = removal_prompts(artist, artists, per_prompt, seed=cfg.train.seed)
    concept = [p["caption"] for p in prompts if p["set"] == "named"]  # what ESD erases
    evaluator = load_evaluator(cfg.model.image_size, version=cfg.world.version, progress=progress)[0]
    esd_iterations = esd_iterations or (200 if quick else 400)
    per: dict[str, list] = {k: [] for k in (*VARIANTS, "routed", "unrouted", "confined", "confined_slot")}
    esd_seconds, slot_seconds = [], []

    def score(model):
        return verdicts(model, prompts, artist, steps=e.steps, guidance=e.guidance, seed=cfg.train.seed,
                        evaluator=evaluator)

    for s in tqdm(range(seeds), desc="removal seeds", disable=not progress, leave=False):
        runs = configs(cfg, s)
        paths = {name: train_one(c, workdir / f"{name}{seed_suffix(s)}", exclude=artist if name == "retrain" else None,
                                 progress=progress) for name, c in runs.items()}
        routed = TextToImage.load(paths["routed"])
        per["routed"].append(score(routed))
        t0 = time.perf_counter()
        scale_slot(routed, artist, 0.0)
        slot_seconds.append(time.perf_counter() - t0)
        per["slot"].append(score(routed))
        per["retrain"].append(score(TextToImage.load(paths["retrain"])))
        unrouted = TextToImage.load(paths["unrouted"])
        per["unrouted"].append(score(unrouted))
        zeroed = TextToImage.load(paths["unrouted"])
        scale_slot(zeroed, artist, 0.0)
        per["unrouted_slot"].append(score(zeroed))
        t0 = time.perf_counter()
        esd(unrouted, concept, iterations=esd_iterations, lr=esd_lr, eta=esd_eta, steps=e.steps,
            guidance=e.guidance, seed=cfg.train.seed + s, progress=progress)
        esd_seconds.append(time.perf_counter() - t0)
        per["esd"].append(score(unrouted))
        if designs:
            c = confined(runs["routed"], artist)
            model = TextToImage.load(train_one(c, workdir / f"confined{seed_suffix(s)}", progress=progress))
            per["confined"].append(score(model))
            scale_slot(model, artist, 0.0)
            per["confined_slot"].append(score(model))

    variants = {k: figures(per[k]) for k in VARIANTS}
    before = {k: figures(per[k]) for k in ("routed", "unrouted", "confined") if per[k]}
    result = {
        "artist": artist, "quick": quick, "seeds": seeds, "per_prompt": per_prompt, "config": cfg.name,
        "config_hash": cfg.hash(), "train_steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
        "generations_per_variant": len(prompts) * seeds, "chance_style": round(1 / len(artists), 4),
        "variants": variants, "before": before,
        "esd_seconds": round(float(np.mean(esd_seconds)), 3),
        "slot_seconds": float(f"{np.mean(slot_seconds):.3g}"),
        "esd": {"base": "unrouted", "params": "attn2 (cross-attention)", "iterations": esd_iterations,
                "lr": esd_lr, "eta": esd_eta},
        "verdict": verdict(variants["slot"], variants["retrain"]),
    }
    result["slot_cost_fraction_of_esd"] = float(f"{result['slot_seconds'] / max(result['esd_seconds'], 1e-9):.3g}")
    if designs:
        result["confined_slot"] = figures(per["confined_slot"])
        result["confined_verdict"] = verdict(result["confined_slot"], variants["retrain"])
        result["tradeoff"] = tradeoff(result)
    return result


def verdict(a: dict, b: dict) -> dict:
    """Per figure: ``a``'s value, ``b``'s interval, whether the value lies inside it (``within``:
    the judgement) and whether the two intervals overlap; ``all_within`` over the five."""
    out = {}
    for f in FIGURES:
        lo, hi = b[f"{f}_ci"] or [b[f], b[f]]
        alo, ahi = a[f"{f}_ci"] or [a[f], a[f]]
        out[f] = {"slot": a[f], "retrain": b[f], "retrain_ci": [lo, hi], "within": bool(lo <= a[f] <= hi),
                  "intervals_overlap": bool(alo <= hi and lo <= ahi)}
    out["all_within"] = all(out[f]["within"] for f in FIGURES)
    return out


def tradeoff(result: dict) -> list[dict]:
    """Forget/retain per design: the artist's style on its own prompts before removal (what the
    design gives the artist), and after removal its share on prompts naming no artist (forget), IRA
    and CRA (retain); the oracle and ESD beside them."""
    rows = []
    for design, before, after in (("caption_slots", "routed", result["variants"]["slot"]),
                                  ("confined", "confined", result.get("confined_slot"))):
        if after is None or before not in result["before"]:
            continue
        b = result["before"][before]
        rows.append({"design": design, "artist_style_before": round(1 - b["ua"], 4),
                     "artist_style_before_ci": _flip(b["ua_ci"]),
                     **{f: after[f] for f in ("ua", "share_unnamed", "ira", "cra")},
                     **{f"{f}_ci": after[f"{f}_ci"] for f in ("ua", "share_unnamed", "ira", "cra")}})
    for name in ("retrain", "esd"):
        v = result["variants"][name]
        rows.append({"design": name, "artist_style_before": None, "artist_style_before_ci": None,
                     **{f: v[f] for f in ("ua", "share_unnamed", "ira", "cra")},
                     **{f"{f}_ci": v[f"{f}_ci"] for f in ("ua", "share_unnamed", "ira", "cra")}})
    return rows


def _flip(ci):
    return None if ci is None else [round(1 - ci[1], 4), round(1 - ci[0], 4)]


def table(result: dict) -> str:
    """The five figures per variant as a Markdown table (value [95% interval])."""
    lines = ["| variant | UA | share, unnamed prompts | share, other artists' prompts | IRA | CRA |",
             "| --- | --- | --- | --- | --- | --- |"]
    rows = [(LABELS[k], result["variants"][k]) for k in VARIANTS]
    if "confined_slot" in result:
        rows.append((LABELS["confined_slot"], result["confined_slot"]))
    for label, v in rows:
        lines.append(f"| {label} | " + " | ".join(with_interval(v[f], v[f"{f}_ci"]) for f in FIGURES) + " |")
    return "\n".join(lines)


def tradeoff_table(result: dict) -> str:
    lines = ["| design | artist style before removal | UA | share, unnamed prompts | IRA | CRA |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result.get("tradeoff", []):
        before = ("-" if r["artist_style_before"] is None
                  else with_interval(r["artist_style_before"], r["artist_style_before_ci"]))
        lines.append(f"| {r['design']} | {before} | " + " | ".join(with_interval(r[f], r[f"{f}_ci"]) for f in
                                                                  ("ua", "share_unnamed", "ira", "cra")) + " |")
    return "\n".join(lines)


def verdict_lines(v: dict, name: str) -> list[str]:
    """One Markdown bullet per figure: ``name``'s value against the oracle's interval."""
    out = []
    for f in FIGURES:
        x = v[f]
        lo, hi = x["retrain_ci"]
        word = "**within**" if x["within"] else "**NOT within**"
        out.append(f"- `{f}`: {name} {x['slot']:.3f}, oracle {x['retrain']:.3f} [{lo:.3f}, {hi:.3f}]: {word}")
    return out


def page(result: dict, *, plot_file: str | None = None, command: str | None = None) -> str:
    """A Markdown page of a result: its settings, the five figures per variant, the designs'
    forget/retain table, each design's verdict against the oracle's interval, the cost, and the plot
    (``plot_file``, relative to the page) when given. Every figure is read from ``result``."""
    seeds = result["seeds"]
    size = "quick (smoke-sized)" if result["quick"] else "full (demo-sized)"
    lines = [f"# Removing {result['artist']}: {size}, {seeds} training seed{'s' if seeds > 1 else ''}", ""]
    if command:
        lines += [f"Made by `{command}` (`--out FILE --plot PNG --page MD` write the result, its plot and this "
                  "page; `--from FILE --plot PNG --page MD` redraws them from a result).", ""]
    lines += [f"Preset `{result['config']}` (config hash `{result['config_hash']}`), {result['train_steps']} steps at "
              f"batch {result['batch_size']}; {result['per_prompt']} generations per prompt, "
              f"{result['generations_per_variant']} per variant over all seeds. Each figure with its 95% "
              "bootstrap interval (over training seeds, then generations within each, where several seeds "
              f"ran). Chance for style is {result['chance_style']}. What the figures and variants are: "
              "[removal.md](removal.md).", "", table(result), ""]
    before = result.get("before", {})
    if before:
        lines.append("Before removal, the artist's style on its own prompts: " + "; ".join(
            f"{k} {with_interval(1 - v['ua'], _flip(v['ua_ci']))}" for k, v in before.items()) + ".")
        lines.append("")
    if result.get("tradeoff"):
        lines += ["## Designs: forget against retain", "", tradeoff_table(result), ""]
    if plot_file:
        lines += [f"![forget against retain]({plot_file})", ""]
    lines += ["## Against the oracle's interval", "", "(a), the default design:", "",
              *verdict_lines(result["verdict"], "slot"), "",
              f"All five within: **{result['verdict']['all_within']}**.", ""]
    if "confined_verdict" in result:
        lines += ["(e), the confined design:", "", *verdict_lines(result["confined_verdict"], "confined"), "",
                  f"All five within: **{result['confined_verdict']['all_within']}**.", ""]
    lines += [f"Cost: zeroing the slot took {result['slot_seconds']} s, ESD {result['esd_seconds']} s "
              f"(`slot_cost_fraction_of_esd` {result['slot_cost_fraction_of_esd']}).", ""]
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """Forget (the artist's share on prompts naming no artist, lower is better) against retain (IRA)
    per variant and design, with 95% intervals, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from govlab.io import atomic_path

    points = [(LABELS[k], result["variants"][k]) for k in VARIANTS]
    if "confined_slot" in result:
        points.append((LABELS["confined_slot"], result["confined_slot"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (ykey, ylabel) in zip(axes, (("ira", "IRA: other artists' style accuracy"), ("cra", "CRA: shape accuracy"))):
        for label, v in points:
            x, y = v["share_unnamed"], v[ykey]
            xe = np.abs(np.array([v["share_unnamed_ci"]]).T - x) if v["share_unnamed_ci"] else None
            ye = np.abs(np.array([v[f"{ykey}_ci"]]).T - y) if v[f"{ykey}_ci"] else None
            ax.errorbar([x], [y], xerr=xe, yerr=ye, fmt="o", capsize=3, label=label)
        ax.set_xlabel(f"{result['artist']}'s share, prompts naming no artist (lower: forgotten)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Removing {result['artist']}: forget vs retain (95% intervals)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m govlab.studies.removal [--quick|--full] [--seeds S] [--out FILE] [--plot PNG]``: the
    removal study; prints the result as JSON and writes it to FILE (and the plot) when asked.
    ``--from FILE``: print the tables of a result written before (and plot it), running nothing."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m govlab.studies.removal")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke-sized trainings (the default)")
    mode.add_argument("--full", action="store_true", help="demo-sized trainings, several seeds")
    p.add_argument("--artist", default="artist_0")
    p.add_argument("--seeds", type=int, default=None, help="training seeds (default: 1 quick, 3 full)")
    p.add_argument("--per-prompt", type=int, default=None)
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument("--plot", default=None, help="write the forget/retain plot (PNG) here")
    p.add_argument("--page", default=None, help="write a Markdown page of the result here (tables, verdicts, the plot)")
    p.add_argument("--from", dest="source", default=None,
                   help="a result JSON written before (--out, or govlab bench removal --json): tables and plot only")
    args = p.parse_args(argv)
    if args.source:
        try:
            result = json.loads(Path(args.source).read_text())
            print(table(result) + "\n\n" + tradeoff_table(result))
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"{args.source}: not a removal result ({e})")
        if args.plot:
            plot(result, args.plot)
        if args.page:
            _page_or_exit(p, result, args)
        return
    seeds = args.seeds if args.seeds is not None else (3 if args.full else 1)
    if seeds < 1:
        p.error(f"--seeds must be >= 1, got {seeds}")
    try:
        result = removal(quick=not args.full, artist=args.artist, seeds=seeds, per_prompt=args.per_prompt,
                         progress=True)
    except GovlabError as e:
        p.error(str(e))
    if args.out:
        write_json(Path(args.out), result)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result))
    if args.page:
        _page_or_exit(p, result, args)


def _page_or_exit(parser, result: dict, args) -> None:
    try:
        write_page(result, args.page, args.plot)
    except OSError as e:
        parser.error(f"--page {args.page}: cannot write ({e.strerror or e})")


def write_page(result: dict, path: str, plot_path: str | None) -> None:
    """``page`` to ``path`` (temp name, then rename), the plot linked relative to it, with the
    command that trains and scores the same result."""
    import os

    path = Path(path)
    rel = os.path.relpath(plot_path, path.parent) if plot_path else None
    command = (f"python -m govlab.studies.removal {'--quick' if result['quick'] else '--full'} "
               f"--seeds {result['seeds']} --artist {result['artist']} --per-prompt {result['per_prompt']}")
    write_text(path, page(result, plot_file=rel, command=command))


if __name__ == "__main__":
    main()
