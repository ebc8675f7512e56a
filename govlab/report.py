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


def write_report(out: Path, *, cfg, scores: dict, evaluator_acc: dict, train_seconds: float,
                 n_records: int, grids: list[Path]) -> Path:
    """report.md: what was trained, how long it took, and how it scores against ground truth."""
    lines = [
        f"# govlab run `{cfg.name}`", "",
        f"- records: {n_records}; steps: {cfg.train.steps}; batch: {cfg.train.batch_size}; "
        f"image size: {cfg.model.image_size}",
        f"- training time (this session): {train_seconds:.1f} s",
        f"- config hash: `{cfg.hash()}`", "",
        "## Scores against ground truth", "",
        "| metric | value |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in scores.items() if not isinstance(v, dict)], "",
        "Style accuracy by artist: " + json.dumps(scores.get("style_acc_by_artist", {})), "",
        "Evaluator accuracy on held-out world images: " + json.dumps(evaluator_acc), "",
        "## Samples", "",
        *[f"![{p.stem}](samples/{p.name})" for p in grids], "",
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
