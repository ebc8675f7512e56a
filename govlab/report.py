"""Run reports: sample grids (PNG) and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from govlab.io import atomic_path, write_text


def image_grid(images: torch.Tensor, ncol: int, scale: int = 4) -> Image.Image:
    """uint8 (N, 3, H, W) -> one PIL image with ``ncol`` columns, upscaled for viewing."""
    n, _, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, 3), 255, np.uint8)
    for i, img in enumerate(images.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = img
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)


def save_png(image: Image.Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_sample_grids(images: torch.Tensor, probes: list[dict], out: Path) -> list[Path]:
    """One grid per source of the probe prompts: ``samples/<source>.png``."""
    paths = []
    for source in sorted({p["source_id"] for p in probes}):
        idx = [i for i, p in enumerate(probes) if p["source_id"] == source]
        path = out / "samples" / f"{source}.png"
        save_png(image_grid(images[idx], ncol=min(8, len(idx))), path)
        paths.append(path)
    return paths


def _table(values: dict) -> list[str]:
    """A metric table; a ``NAME_ci`` interval is printed beside ``NAME``."""
    def cell(k, v):
        ci = values.get(f"{k}_ci")
        return f"{v} (95% CI {ci[0]} to {ci[1]})" if ci else f"{v}"
    return ["| metric | value |", "| --- | --- |",
            *[f"| {k} | {cell(k, v)} |" for k, v in values.items()
              if not isinstance(v, dict) and not k.endswith("_ci")]]


def write_report(out: Path, *, cfg, scores: dict, evaluator_acc: dict | None, train_seconds: float,
                 n_records: int, grids: list[Path], scored_against: str = "world", figures: dict | None = None,
                 failed: dict | None = None, probes: list[dict] = (), normalisation: str | None = None,
                 loss_png: bool = False) -> Path:
    """report.md: what was trained, how long it took, what it was scored against and how it scores,
    and what could not be made (and why)."""
    figures, failed = figures or {}, failed or {}
    lines = [
        f"# govlab run `{cfg.name}`", "",
        f"- data: {cfg.data or 'the embedded world'}",
        f"- records: {n_records}; steps: {cfg.train.steps}; batch: {cfg.train.batch_size}; "
        f"image size: {cfg.model.image_size}",
        *([f"- images: {normalisation}"] if normalisation else []),
        f"- training time (this session): {train_seconds:.1f} s",
        f"- config hash: `{cfg.hash()}`", "",
    ]
    if failed:
        lines += ["## Not made", "", "Training finished and its weights are saved; these parts of the "
                  "evaluation failed:", "", *[f"- {k}: {v}" for k, v in failed.items()], ""]
    if scored_against == "world":
        lines += ["## Scores against ground truth", "",
                  "Scored against the world's ground truth with its evaluators.", ""]
        if scores:
            lines += [*_table(scores), "",
                      "Style accuracy by artist: " + json.dumps(scores.get("style_acc_by_artist", {})), "",
                      "Evaluator accuracy on held-out world images: " + json.dumps(evaluator_acc), ""]
    else:
        lines += ["## Scores on the folder's own data", "",
                  "This folder is not the world (its records lack the world's ground truth), so the "
                  "evaluators' style, shape, watermark and identity scores were not run. Measured on the "
                  "folder's own images instead: for captions sampled from each source's records, the "
                  "nearest distinct training image of each generation (pixel l2 / sqrt(dim), pixels in "
                  "[-1, 1]): whether it comes from the prompted source (chance: a uniformly drawn distinct "
                  "training image), and how far it is. `govlab audit-memorization RUN` counts training "
                  "images the model reproduces.", ""]
        if scores:
            lines += [*_table(scores), ""]
            by = scores.get("nearest_source_acc_by_source")
            if by:
                lines += ["Nearest-source accuracy by source: " + json.dumps(by), ""]
            if scores.get("n_sources") == 1:
                lines += ["One source: every generation's nearest training image is that source's, so "
                          "`nearest_source_acc` does not apply (None).", ""]
    if figures:
        lines += ["## Training", "", *_table(figures), ""]
        if "loss_first" in figures:
            lines += [f"Loss: mean over the first and the last {figures.get('loss_window_steps')} steps "
                      "(95% bootstrap intervals); every step in `loss.json`.", ""]
        if figures.get("index_grad_share"):
            lines += ["Share of the squared gradient norm by source (provenance index, all bands): "
                      + json.dumps(figures["index_grad_share"]), ""]
        if loss_png:
            lines += ["![loss](loss.png)", ""]
    lines += ["## Samples", "", *[f"![{p.stem}](samples/{p.name})" for p in grids], ""]
    if scored_against != "world" and probes:
        lines += ["Captions sampled from each source's records (row order of each grid):", ""]
        for source in sorted({p["source_id"] for p in probes}):
            lines += [f"- `{source}`: " + "; ".join(f"{p['caption']!r}" for p in probes if p["source_id"] == source)]
        lines += [""]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
