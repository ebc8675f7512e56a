"""The training loss of a run, recorded by a hook: ``loss.json`` and the report's loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from govlab.eval.stats import mean_ci
from govlab.hooks import Hook
from govlab.io import write_json

LOSS_FILE = "loss.json"


class LossCurve(Hook):
    """Keeps the loss of every step (it resumes with the checkpoint) and writes ``loss.json`` at the end."""

    def __init__(self):
        self.losses: list[float] = []

    def after_step(self, ctx) -> None:
        self.losses.append(float(ctx.loss.detach()))

    def on_end(self, trainer) -> None:
        write_json(Path(trainer.out) / LOSS_FILE, {"step": list(range(1, len(self.losses) + 1)),
                                                   "loss": [round(v, 6) for v in self.losses]})

    def state_dict(self) -> dict:
        return {"losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [float(v) for v in state["losses"]]


def loss_figures(losses: list[float], *, seed: int = 0) -> dict:
    """Mean loss over the first and the last tenth of the steps (at least one step each), with 95%
    bootstrap intervals; None when nothing was recorded."""
    if not losses:
        return {"loss_first": None, "loss_last": None}
    k = max(1, len(losses) // 10)
    first, first_ci = mean_ci(losses[:k], seed=seed)
    last, last_ci = mean_ci(losses[-k:], seed=seed)
    return {"loss_first": first, "loss_first_ci": first_ci, "loss_last": last, "loss_last_ci": last_ci,
            "loss_window_steps": k}


def loss_plot(losses: list[float], *, width: int = 480, height: int = 160) -> Image.Image:
    """The loss per step (grey) and its running mean over a tenth of the steps (black), log scale."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    y = np.log10(np.clip(np.asarray(losses, float), 1e-8, None))
    if len(y) < 2:
        return img
    k = max(1, len(y) // 10)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    lo, hi = float(y.min()), float(y.max())
    span = hi - lo or 1.0
    pad = 8

    def points(v, offset):
        xs = pad + (np.arange(len(v)) + offset) / (len(y) - 1) * (width - 2 * pad)
        ys = pad + (hi - v) / span * (height - 2 * pad)
        return list(zip(xs.tolist(), ys.tolist()))

    draw.line(points(y, 0), fill=(190, 190, 190), width=1)
    if len(smooth) > 1:
        draw.line(points(smooth, k - 1), fill=(0, 0, 0), width=2)
    draw.text((pad, pad), f"loss {10 ** hi:.3g}", fill=(80, 80, 80))
    draw.text((pad, height - pad - 10), f"{10 ** lo:.3g}  (log scale; {len(y)} steps)", fill=(80, 80, 80))
    return img
