"""Attenuate one source's slot in a trained run and report the effect against ground truth."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path

from govlab.config import from_dict, read_yaml
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.eval.own_data import score_data
from govlab.io import write_json, write_text
from govlab.models.diffusion import TextToImage
from govlab.provenance.manifest import write_manifest
from govlab.report import save_sample_grids
from govlab.routing.slots import scale_slot, slot_names
from govlab.train import check_replaceable, clear_run


def _others(by_artist: dict, source: str):
    vals = [v for k, v in by_artist.items() if k != source and v is not None]
    return round(sum(vals) / len(vals), 4) if vals else None


def effect(scores: dict, source: str) -> dict:
    """The figures an attenuation report compares: the source's style accuracy, the others', etc."""
    if "nearest_source_acc" in scores:  # a run on its own data (govlab.eval.own_data)
        by = scores.get("nearest_source_acc_by_source") or {}
        return {"nearest_source_acc_source": by.get(source), "nearest_source_acc_others": _others(by, source),
                "nearest_train_distance": scores.get("nearest_train_distance"),
                "chance_nearest_source": scores.get("chance_nearest_source")}
    by = scores.get("style_acc_by_artist", {})
    out = {"style_acc_source": by.get(source), "style_acc_others": _others(by, source),
           "shape_acc": scores.get("shape_acc"), "watermark_rate": scores.get("watermark_rate"),
           "identity_rate": scores.get("identity_rate"), "chance_style": scores.get("chance_style")}
    # 95% intervals over the generations, where the scores carry them (scores.json of older runs do not)
    cis = {"style_acc_source_ci": (scores.get("style_acc_by_artist_ci") or {}).get(source),
           "style_acc_others_ci": (scores.get("style_acc_others_ci_by_artist") or {}).get(source),
           **{f"{k}_ci": scores.get(f"{k}_ci") for k in ("shape_acc", "watermark_rate", "identity_rate")}}
    return out | {k: v for k, v in cis.items() if v is not None}


def attenuate_run(run: str | Path, source: str, factor: float, out: str | Path, *, progress: bool = False) -> dict:
    """Scale ``source``'s slot by ``factor`` (0 removes it) and write a new run directory ``out`` with
    the model, the config, scores, ``attenuation.json`` and a report of the effect."""
    run, out = Path(run), Path(out)
    if not (run / "config.yaml").is_file():
        raise GovlabError(f"{run}: not a govlab run directory (no config.yaml)")
    if not math.isfinite(factor) or factor < 0:
        raise GovlabError(f"--factor must be a finite number >= 0, got {factor}")
    if out.resolve() == run.resolve():
        raise GovlabError("--out must be a new run directory, not the run being attenuated")
    check_replaceable(out)  # before the minutes of scoring
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    model = TextToImage.load(run / "model.safetensors")
    slots = slot_names(model)
    if not slots:
        raise GovlabError(f"{run}: this model has no slots (train it with routing.mode: routed)")
    if source not in slots:
        raise GovlabError(f"{run}: no slot for source {source!r} (slots: {', '.join(slots)})")
    dataset = run_dataset(cfg, progress=progress)
    if (run / "scores.json").is_file():
        before = json.loads((run / "scores.json").read_text())["scores"]
    else:
        before = score_data(model, cfg, dataset)[0]
    layers = scale_slot(model, source, factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside ``out`` and renamed into place once sealed: never a half-written run at ``out``,
    # and a previous run there is kept until the new one is complete
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        shutil.copyfile(run / "config.yaml", tmp / "config.yaml")
        if (run / "routing.json").is_file():
            shutil.copyfile(run / "routing.json", tmp / "routing.json")
        model.save(tmp / "model.safetensors")
        after, images, probes = score_data(model, cfg, dataset)
        grids = save_sample_grids(images, probes, tmp)
        write_json(tmp / "scores.json", {"scores": after})
        result = {"run": str(out), "from": str(run), "source": source, "factor": factor, "layers": layers,
                  "before": effect(before, source), "after": effect(after, source)}
        write_json(tmp / "attenuation.json", result)
        write_report(tmp, result, grids)
        write_manifest(tmp)  # last: the sha256 of every artifact
        clear_run(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def write_report(out: Path, result: dict, grids: list[Path]) -> Path:
    b, a = result["before"], result["after"]

    def cell(d, k):  # the figure, and its 95% interval over the generations where it has one
        return f"{d.get(k)} {d[k + '_ci']}" if d.get(k + "_ci") else f"{d.get(k)}"

    rows = [f"| {k} | {cell(b, k)} | {cell(a, k)} |" for k in b if not k.endswith("_ci")]
    lines = [
        f"# Attenuation of `{result['source']}` (factor {result['factor']})", "",
        f"From run `{result['from']}`: the slot of `{result['source']}` was scaled by {result['factor']} in "
        f"{result['layers']} layers (0 removes it); nothing else changed.", "",
        "| metric | before | after |", "| --- | --- | --- |", *rows, "",
        "Beside a figure, its 95% bootstrap interval over the generations.", "",
        (f"`style_acc_source` is the style accuracy of `{result['source']}`'s prompts (chance "
         f"{b['chance_style']}); `style_acc_others` the mean over the other artists." if "style_acc_source" in b else
         f"`nearest_source_acc_source`: the share of generations from `{result['source']}`'s own captions whose "
         f"nearest training image is `{result['source']}`'s (chance {b['chance_nearest_source']}); "
         "`nearest_source_acc_others` the mean over the other sources (the run's own data, not the world)."), "",
        "## Samples after", "", *[f"![{p.stem}](samples/{p.name})" for p in grids], "",
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
