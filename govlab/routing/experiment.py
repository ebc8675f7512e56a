"""The localization experiment of notebooks/02_routing: remove one artist three ways and compare.

(a) zero the artist's slot in a routed model; (b) retrain (routed) without the artist: the ground
truth; (c) zero the same slot in an unrouted model (same expanded architecture, plain gradients).
Also: drop the watermark and identity bands of the routed and the unrouted model. Trained models
are kept in ``workdir`` and reused when their config and data filter match, so a long run can be
built one training at a time.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from govlab.config import RunConfig
from govlab.data.cache import run_dataset
from govlab.eval.scores import score_model
from govlab.io import write_json
from govlab.models.diffusion import TextToImage
from govlab.routing.attenuate import effect
from govlab.routing.hook import attach
from govlab.routing.slots import scale_slot
from govlab.train import Trainer, clear_run

TRAININGS = ("routed", "retrain", "unrouted")


def configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The three trainings: routed, routed without the artist (same config), unrouted."""
    routed = replace(cfg, routing=replace(cfg.routing, mode="routed"))
    return {"routed": replace(routed, name=f"{cfg.name}-routed"),
            "retrain": replace(routed, name=f"{cfg.name}-retrain"),
            "unrouted": replace(cfg, name=f"{cfg.name}-unrouted", routing=replace(cfg.routing, mode="unrouted"))}


def train_one(cfg: RunConfig, out: str | Path, *, exclude: str | None = None, until: int | None = None,
              progress: bool = False) -> Path:
    """Train (or reuse, or resume) one model into ``out``; ``exclude`` drops that source's records
    first; ``until`` stops early at a checkpoint (call again to continue)."""
    from govlab.train import CHECKPOINT

    out = Path(out)
    spec = {"config_hash": cfg.hash(), "exclude": exclude}
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
    data, hooks = attach(cfg, data)
    trainer = Trainer(cfg, data, out, hooks=hooks, progress=progress).fit(resume=resume, until=until)
    if trainer.step == cfg.train.steps:
        write_json(marker, {"spec": spec, "done": True})
    return out / "model.safetensors"


def train_all(cfg: RunConfig, workdir: str | Path, *, artist: str, only: str | None = None,
              until: int | None = None, progress: bool = False) -> dict[str, Path]:
    """Train the three models (or just ``only``, or up to step ``until``) under ``workdir``."""
    out = {}
    for name, c in configs(cfg).items():
        if only is None or only == name:
            out[name] = train_one(c, Path(workdir) / name, exclude=artist if name == "retrain" else None,
                                  until=until, progress=progress)
    return out


def localization(cfg: RunConfig, workdir: str | Path, *, artist: str = "artist_0", per_prompt: int | None = None,
                 progress: bool = False) -> dict:
    """Train what is missing, then score every variant (``per_prompt`` generations per probe prompt,
    default the config's eval); returns rows and the goal checks."""
    paths = train_all(cfg, workdir, artist=artist, progress=progress)
    sources = run_dataset(cfg, progress=progress).sources
    e = cfg.eval

    def score(path, zero=()):
        model = TextToImage.load(path)
        for slot in zero:
            scale_slot(model, slot, 0.0)
        return effect(score_model(model, sources, per_prompt=per_prompt or e.per_prompt, steps=e.steps,
                                  guidance=e.guidance, seed=cfg.train.seed)[0], artist)

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
    rows = [{"variant": label, **score(paths[model], zero)} for label, model, zero in variants]
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
        "watermark_routed": by["routed"]["watermark_rate"],
        "watermark_routed_dropped": by["routed, watermark band dropped"]["watermark_rate"],
        "watermark_unrouted_dropped": by["unrouted, watermark band dropped"]["watermark_rate"],
        "identity_routed": by["routed"]["identity_rate"],
        "identity_routed_dropped": by["routed, identity band dropped"]["identity_rate"],
        "identity_unrouted_dropped": by["unrouted, identity band dropped"]["identity_rate"],
    }
    # the goal: (a) brings the artist to chance like (b), others within 2 points of (b); (c) does not
    summary["goal_a_at_chance"] = a["style_acc_source"] <= max(chance, b["style_acc_source"]) + 0.05
    summary["goal_a_others_within_2"] = abs(summary["a_minus_b_others_points"]) <= 2
    summary["goal_c_not_at_chance"] = c["style_acc_source"] > max(chance, b["style_acc_source"]) + 0.05
    return {"rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    """``python -m govlab.routing.experiment WORKDIR [--preset P] [--artist A] [--per-prompt N]``: the
    localization experiment (three trainings under ``WORKDIR``, reused when present); writes
    ``WORKDIR/localization.json`` and prints the summary as one JSON line."""
    import argparse

    from govlab.config import load_config

    p = argparse.ArgumentParser(prog="python -m govlab.routing.experiment")
    p.add_argument("workdir")
    p.add_argument("--preset", default="routed")
    p.add_argument("--artist", default="artist_0")
    p.add_argument("--per-prompt", type=int, default=None, help="generations per probe prompt (default: the preset's)")
    args = p.parse_args(argv)
    result = localization(load_config(args.preset), args.workdir, artist=args.artist, per_prompt=args.per_prompt,
                          progress=True)
    write_json(Path(args.workdir) / "localization.json", result)
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
