"""The hook protocol of the training loop: where governance attaches to a plain diffusion step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class StepContext:
    """What a hook sees of one training step. Hooks may change ``tokens`` (before the forward)
    and ``weights`` (per-sample loss weights, before the backward)."""

    step: int
    indices: torch.Tensor  # dataset row of each sample in the batch
    records: list[dict]
    x0: torch.Tensor
    tokens: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    trainer: "object"
    per_sample_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


class Hook:
    """Base class: override the points you need. State saves and resumes with the checkpoint."""

    def on_build(self, trainer) -> "torch.optim.Optimizer | None":
        """Called once the model exists and before the optimizer is built: a hook may add modules to
        ``trainer.model`` and may return the optimizer to use instead of AdamW (routing does both)."""

    def on_start(self, trainer) -> None: ...
    def before_forward(self, ctx: StepContext) -> None: ...
    def before_backward(self, ctx: StepContext) -> None: ...
    def after_backward(self, ctx: StepContext) -> None: ...
    def after_step(self, ctx: StepContext) -> None: ...
    def on_checkpoint(self, trainer, step: int) -> None: ...
    def on_end(self, trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` on resume: called before the model and optimizer are restored
        (so a hook may refuse the resume first) and before ``on_start``."""


class EventLog:
    """Append-only ``events.jsonl`` of governance events (flags, interventions, rejections)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, kind: str, **fields) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": kind, **fields}, default=str) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop events logged after ``step`` (used on resume, so a replayed step logs once)."""
        from govlab.io import write_text

        kept = [e for e in self.read() if e.get("step", -1) <= step]
        write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
