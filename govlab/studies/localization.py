"""The localization experiment of notebooks/02_routing: remove one artist three ways and compare.

(a) zero the artist's slot in a routed model; (b) retrain (routed) without the artist: the ground
truth; (c) zero the same slot in an unrouted model (same expanded architecture, plain gradients).
Also: drop the watermark and identity bands of the routed and the unrouted model. Trained models
are kept in ``workdir`` and reused when their config and data filter match, so a long run can be
built one training at a time.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from govlab.config import RunConfig, load_config
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.eval.scores import score_model
from govlab.eval.stats import with_interval
from govlab.io import write_json, write_text
from govlab.models.diffusion import TextToImage
from govlab.routing.hook import attach
from govlab.routing.slots import scale_slot
from govlab.studies.attenuate import effect
from govlab.train import CHECKPOINT, Trainer, clear_run

TRAININGS = ("routed", "retrain", "unrouted")


def seed_suffix(seed: int) -> str:
    """What names a training of seed offset ``seed`` (none for the first)."""
    return f"-s{seed}" if seed else ""


def configs(cfg: RunConfig, seed: int = 0) -> dict[str, RunConfig]:
    """The three trainings: routed, routed without the artist (same config), unrouted; ``seed`` > 0
    shifts the training seed (names suffixed ``-s<seed>``)."""
    suffix = seed_suffix(seed)
    cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + seed))
    routed = replace(cfg, routing=replace(cfg.routing, mode="routed"))
    return {"routed": replace(routed, name=f"{cfg.name}-routed{suffix}"),
            "retrain": replace(routed, name=f"{cfg.name}-retrain{suffix}"),
            "unrouted": replace(cfg, name=f"{cfg.name}-unrouted{suffix}",
                                routing=replace(cfg.routing, mode="unrouted"))}


def train_one(cfg: RunConfig, out: str | Path, *, exclude: str | None = None, exclude_category: str | None = None,
              until: int | None = None, progress: bool = False) -> Path:
    """Train (or reuse, or resume) one model into ``out``; ``exclude`` drops that source's records
    first, ``exclude_category`` the records of that category (``watermark``: every watermarked
    image); ``until`` stops early at a checkpoint (call again to continue)."""
    out = Path(out)
    spec = {"config_hash": cfg.hash(), "exclude": exclude} | ({"exclude_category": exclude_category}
                                                              if exclude_category else {})
    marker = out / "experiment.json"
    state = json.loads(marker.read_text()) if marker.is_file() else {}
    if state.get("spec") == spec and state.get("done") and (out / "model.safetensors").is_file():
        return out / "model.safetensors"
    resume = state.get("spec") == spec and (out / CHECKPOINT).is_file()
    if not resume:
        if not (out / "config.yaml").is_file():
            marker.unlink(missing_ok=True)  # a run that never started
        clear_run(out)
        out.mkdir(parents=True)
        write_json(marker, {"spec": spec, "done": False})
    data = run_dataset(cfg, progress=progress)
    if exclude is not None:
        data = data.subset([i for i, r in enumerate(data.records) if r["source_id"] != exclude])
    if exclude_category is not None:
        data = data.subset([i for i, r in enumerate(data.records) if exclude_category not in r["categories"]])
    data, hooks = attach(cfg, data)
    trainer = Trainer(cfg, data, out, hooks=hooks, progress=progress).fit(resume=resume, until=until)
    if trainer.step == cfg.train.steps:
        write_json(marker, {"spec": spec, "done": True})
    return out / "model.safetensors"


def train_all(cfg: RunConfig, workdir: str | Path, *, artist: str, names=TRAININGS, seed: int = 0,
              until: int | None = None, progress: bool = False) -> dict[str, Path]:
    """Train the models ``names`` (default all three; up to step ``until``) under ``workdir``."""
    out = {}
    for name, c in configs(cfg, seed).items():
        if name in names:
            out[name] = train_one(c, Path(workdir) / f"{name}{seed_suffix(seed)}",
                                  exclude=artist if name == "retrain" else None, until=until, progress=progress)
    return out


def localization(cfg: RunConfig, workdir: str | Path, *, artist: str = "artist_0", per_prompt: int | None = None,
                 seeds: int = 1, progress: bool = False) -> dict:
    """Train what is missing, then score every variant (``per_prompt`` generations per probe prompt,
    default the config's eval); returns rows and the goal checks. ``seeds`` > 1 also trains the
    routed model and the retraining with further training seeds and reports (a) - (b) per seed:
    the gap between two trainings is noise that one pair cannot tell from an effect."""
    paths = train_all(cfg, workdir, artist=artist, progress=progress)
    sources = run_dataset(cfg, progress=progress).sources
    e = cfg.eval

    def score(path, zero=()):
        model = TextToImage.load(path)
        for slot in zero:
            scale_slot(model, slot, 0.0)
        return effect(score_model(model, sources, per_prompt=per_prompt or e.per_prompt, steps=e.steps,
                                  guidance=e.guidance, seed=cfg.train.seed, version=cfg.world.version)[0], artist)

    variants = [
        ("routed", "routed", ()),
        ("(a) routed, slot zeroed", "routed", (artist,)),
        ("(b) retrained without artist", "retrain", ()),
        ("unrouted", "unrouted", ()),
        ("(c) unrouted, slot zeroed", "unrouted", (artist,)),
        ("routed, watermark band dropped", "routed", ("watermark",)),
        ("unrouted, watermark band dropped", "unrouted", ("watermark",)),
        ("routed, identity band dropped", "routed", ("identity",)),
        ("unrouted, identity band dropped", "unrouted", ("identity",)),
    ]
    # a band is dropped only where the config routes to it (on world version 2 the watermark has none:
    # govlab.studies.removal.v2_routing; its removal there is govlab.studies.watermark's)
    variants = [v for v in variants if all(z in (artist, *cfg.routing.sequestered) for z in v[2])]
    rows = [{"variant": label, **score(paths[model], zero)}
            for label, model, zero in tqdm(variants, desc="localization variants", disable=not progress, leave=False)]
    by = {r["variant"]: r for r in rows}
    a, b, c = by["(a) routed, slot zeroed"], by["(b) retrained without artist"], by["(c) unrouted, slot zeroed"]
    chance = a["chance_style"]
    summary = {
        "artist": artist, "chance_style": chance,
        "a_style_artist": a["style_acc_source"], "b_style_artist": b["style_acc_source"],
        "c_style_artist": c["style_acc_source"], "routed_style_artist": by["routed"]["style_acc_source"],
        "unrouted_style_artist": by["unrouted"]["style_acc_source"],
        "a_minus_b_others_points": round(100 * (a["style_acc_others"] - b["style_acc_others"]), 1),
        "c_minus_b_others_points": round(100 * (c["style_acc_others"] - b["style_acc_others"]), 1),
        "a_minus_b_shape_points": round(100 * (a["shape_acc"] - b["shape_acc"]), 1),
        "watermark_routed": by["routed"]["watermark_rate"], "identity_routed": by["routed"]["identity_rate"],
        "world_version": cfg.world.version,
    }
    for band in ("watermark", "identity"):
        for model in ("routed", "unrouted"):
            if f"{model}, {band} band dropped" in by:
                summary[f"{band}_{model}_dropped"] = by[f"{model}, {band} band dropped"][f"{band}_rate"]
    # the goal: (a) brings the artist to chance like (b), others within 2 points of (b); (c) does not
    summary["goal_a_at_chance"] = a["style_acc_source"] <= max(chance, b["style_acc_source"]) + 0.05
    summary["goal_a_others_within_2"] = abs(summary["a_minus_b_others_points"]) <= 2
    summary["goal_c_not_at_chance"] = c["style_acc_source"] > max(chance, b["style_acc_source"]) + 0.05
    if seeds > 1:
        pairs = [(a, b)]
        for seed in tqdm(range(1, seeds), desc="localization seeds", disable=not progress, leave=False):
            more = train_all(cfg, workdir, artist=artist, names=("routed", "retrain"), seed=seed, progress=progress)
            pairs.append((score(more["routed"], (artist,)), score(more["retrain"])))
        summary |= seed_summary(pairs)
    return {"rows": rows, "summary": summary}


COLUMNS = (("style_acc_source", "{artist} style"), ("style_acc_others", "other artists' style"),
           ("shape_acc", "shape"), ("watermark_rate", "watermark"), ("identity_rate", "identity"))


def table(result: dict) -> str:
    """The rows as a markdown table, each figure with its 95% interval over the generations."""
    artist = result["summary"]["artist"]

    def cell(row, key):
        return "-" if row.get(key) is None else with_interval(row[key], row.get(f"{key}_ci"))

    head = "| variant | " + " | ".join(label.format(artist=artist) for _, label in COLUMNS) + " |"
    rule = "| --- " * (len(COLUMNS) + 1) + "|"
    rows = [f"| {r['variant']} | " + " | ".join(cell(r, k) for k, _ in COLUMNS) + " |" for r in result["rows"]]
    return "\n".join([head, rule, *rows]) + "\n"


def seed_summary(pairs: list[tuple[dict, dict]]) -> dict:
    """(a) - (b) on the other artists' style, per training seed, with its mean, standard deviation
    and standard error; and how far two routed trainings differing only in seed land apart."""
    gaps = [100 * (a["style_acc_others"] - b["style_acc_others"]) for a, b in pairs]
    routed = [100 * a["style_acc_others"] for a, _ in pairs]
    sd = statistics.stdev(gaps)
    return {"seeds": len(pairs), "a_minus_b_others_points_by_seed": [round(g, 1) for g in gaps],
            "a_minus_b_others_points_mean": round(statistics.mean(gaps), 1),
            "a_minus_b_others_points_sd": round(sd, 1),
            "a_minus_b_others_points_se": round(sd / len(gaps) ** 0.5, 1),
            "a_style_artist_by_seed": [round(a["style_acc_source"], 3) for a, _ in pairs],
            "b_style_artist_by_seed": [round(b["style_acc_source"], 3) for _, b in pairs],
            "routed_others_points_sd_over_seeds": round(statistics.stdev(routed), 1),
            "goal_a_others_within_2_mean": abs(statistics.mean(gaps)) <= 2}


def main(argv: list[str] | None = None) -> None:
    """``python -m govlab.studies.localization WORKDIR [--preset P] [--config FILE] [--artist A]
    [--per-prompt N] [--seeds S]``: the localization experiment (three trainings under ``WORKDIR``,
    two more per extra seed, reused when present) on the preset, overridden by FILE (e.g. another
    ``routing.style_band``); writes ``WORKDIR/localization.json``, the table with its intervals as
    ``WORKDIR/localization.md``, and prints the summary as one JSON line."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m govlab.studies.localization")
    p.add_argument("workdir")
    p.add_argument("--preset", default="routed")
    p.add_argument("--config", default=None, help="a YAML config overriding the preset")
    p.add_argument("--artist", default="artist_0")
    p.add_argument("--per-prompt", type=int, default=None, help="generations per probe prompt (default: the preset's)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds of the routed model and the retraining")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    from govlab.studies.removal import v2_routing

    try:
        cfg = v2_routing(load_config(args.preset, args.config))  # the watermark unrouted on world version 2
    except GovlabError as e:
        p.error(str(e))
    result = localization(cfg, args.workdir, artist=args.artist, per_prompt=args.per_prompt,
                          seeds=args.seeds, progress=True)
    write_json(Path(args.workdir) / "localization.json", result)
    write_text(Path(args.workdir) / "localization.md", table(result))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
