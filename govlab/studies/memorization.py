"""The experiment of notebooks/03_memorization: one training per intervention, audited against the
planted duplicates, with the detector's scores over training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from statistics import fmean

from govlab.config import RunConfig, from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.hooks import EventLog
from govlab.io import write_json
from govlab.memorization.audit import is_planted
from govlab.memorization.config import INTERVENTIONS
from govlab.memorization.detectors import detection_auc
from govlab.memorization.monitor import read_monitor
from govlab.run import train_run
from govlab.studies.audit import audit_run


def configs(cfg: RunConfig, interventions=INTERVENTIONS) -> dict[str, RunConfig]:
    """One monitored config per intervention (``none``: monitor only, training as unmonitored)."""
    return {i: replace(cfg, name=f"{cfg.name}-{i}",
                       memorization=replace(cfg.memorization, mode="monitor", intervention=i))
            for i in interventions}


def score_curves(run: str | Path, records: list[dict], recent: int = 3) -> list[dict]:
    """Per monitor check: mean score of planted duplicates and of the others (one value per
    distinct caption, latest score so far), the threshold, the detector's AUC (``auc``) and its AUC
    when each caption's score is the mean of its last ``recent`` scores (``auc_recent``; a caption
    is scored at the checks that watch one of its rows)."""
    if recent < 1:
        raise ValueError(f"recent must be >= 1, got {recent}")
    scores: dict[str, list[float]] = {}
    planted_caption = {r["caption"]: is_planted(r) for r in records}
    out = []
    for h in read_monitor(run)["history"]:
        check = {records[r]["caption"]: s for r, s in h["scores"].items()}  # copies: one score a check
        for c, s in check.items():
            scores.setdefault(c, []).append(s)
        captions = list(scores)
        latest = [scores[c][-1] for c in captions]
        label = [planted_caption[c] for c in captions]
        planted = [s for s, p in zip(latest, label) if p]
        others = [s for s, p in zip(latest, label) if not p]
        out.append({"step": h["step"], "threshold": h["threshold"],
                    "planted": sum(planted) / len(planted) if planted else None,
                    "others": sum(others) / len(others) if others else None,
                    "auc": detection_auc(latest, label),
                    "auc_recent": detection_auc([fmean(scores[c][-recent:]) for c in captions], label)})
    return out


def first_flags(run: str | Path, records: list[dict]) -> dict:
    """Step of the first flag on a planted duplicate and on any other sample, and flag counts."""
    flags = [e for e in EventLog(Path(run) / "events.jsonl").read() if e["event"] == "memorization_flag"]
    planted = [e for e in flags if is_planted(records[e["sample"]])]
    others = [e for e in flags if not is_planted(records[e["sample"]])]
    return {"first_flag_planted": min((e["step"] for e in planted), default=None),
            "first_flag_others": min((e["step"] for e in others), default=None),
            "flagged_planted": len(planted), "flagged_others": len(others),
            "planted_rows": sum(1 for r in records if is_planted(r))}


def run_experiment(cfg: RunConfig, workdir: str | Path, *, interventions=INTERVENTIONS, n: int = 4,
                   sample: int | None = None, progress: bool = False) -> dict:
    """Train and audit (``sample`` captions, default all) one run per intervention under ``workdir``;
    writes ``experiment.json``."""
    workdir = Path(workdir)
    records = run_dataset(cfg, progress=progress).records
    results = {}
    for name, c in configs(cfg, interventions).items():
        run = workdir / name
        summary = train_run(c, run, progress=progress)
        audit = audit_run(run, n=n, sample=sample, progress=progress)
        curves = score_curves(run, records)
        results[name] = {
            "run": str(run), "style_acc": summary["style_acc"], "shape_acc": summary["shape_acc"],
            "train_seconds": summary["train_seconds"],
            **{k: v for k, v in audit.items() if k.startswith("extraction_rate")},
            "auc_end": curves[-1]["auc"] if curves else None, "curves": curves,
            **first_flags(run, records)}
    write_json(workdir / "experiment.json", results)
    return results


def read_experiment(workdir: str | Path) -> dict:
    return json.loads((Path(workdir) / "experiment.json").read_text())


def main(argv: list[str] | None = None) -> None:
    """``python -m govlab.studies.memorization OUT [--detector D] [--config FILE] [INTERVENTION ...]``:
    the ``memorization`` preset (overlaid with ``FILE``), one training and audit per intervention,
    each under ``OUT/NAME`` (its own ``experiment.json``), one JSON line per intervention (without
    the curves) on stdout."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m govlab.studies.memorization")
    p.add_argument("out")
    p.add_argument("--detector", default="regeneration", choices=("noise", "regeneration"))
    p.add_argument("--config", help="a YAML file overlaid on the preset, e.g. world: {caption_detail: 1}")
    p.add_argument("interventions", nargs="*", help=f"any of {', '.join(INTERVENTIONS)} (default: all)")
    args = p.parse_intermixed_args(argv)  # options may come between the positionals
    unknown = [i for i in args.interventions if i not in INTERVENTIONS]
    if unknown:  # checked here: argparse's choices reject an empty list on Python 3.11
        p.error(f"unknown intervention {unknown[0]!r} (choose from {', '.join(INTERVENTIONS)})")
    try:  # a missing or invalid --config file: one line, before anything is written
        cfg = from_dict({"memorization": {"detector": args.detector}}, base=load_config("memorization", args.config))
    except GovlabError as e:
        p.error(str(e))
    for name in args.interventions or INTERVENTIONS:
        res = run_experiment(cfg, Path(args.out) / name, interventions=(name,), progress=True)[name]
        print(json.dumps({"intervention": name, **{k: v for k, v in res.items() if k != "curves"}}), flush=True)


if __name__ == "__main__":
    main()
