"""The hook protocol of the training loop: where governance attaches to a plain diffusion step."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from govlab.errors import GovlabError
from govlab.io import read_text, write_text


@dataclass
class StepContext:
    """What a hook sees of one training step. Hooks may change ``tokens`` (before the forward)
    and ``weights`` (per-sample loss weights, before the backward); only ``arrange`` may reorder
    the batch."""

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

    def permute(self, perm: torch.Tensor) -> None:
        """Reorder the batch (every per-sample field together); for ``Hook.arrange``."""
        for name in ("indices", "x0", "tokens", "noise", "timesteps", "weights"):
            setattr(self, name, getattr(self, name)[perm])
        self.records = [self.records[i] for i in perm.tolist()]


class Hook:
    """Base class: override the points you need. State saves and resumes with the checkpoint."""

    def on_build(self, trainer) -> "torch.optim.Optimizer | None":
        """Called once the model exists and before the optimizer is built: a hook may add modules to
        ``trainer.model`` and may return the optimizer to use instead of AdamW (routing does both)."""

    def on_start(self, trainer) -> None: ...

    def arrange(self, ctx: StepContext) -> None:
        """Called before any hook's ``before_forward``: the one point where a hook may reorder the
        batch (every per-sample field together), so that the other hooks see one order."""

    def before_forward(self, ctx: StepContext) -> None: ...

    def reduces_gradients(self, ctx: StepContext) -> bool:
        """Under several ranks: whether this hook averages the step's gradients across ranks itself
        (the provenance index on the steps it computes shares), in place of DDP's all-reduce."""
        return False

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
        from govlab.distributed import is_main

        if not is_main():  # under several ranks, rank 0 keeps the log
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": kind, **fields}, default=str) + "\n")

    def read(self, *, torn_tail_ok: bool = False) -> list[dict]:
        """The events; a damaged line is an error naming it, except, with ``torn_tail_ok``, a last
        line without its newline (an append a crash cut off), which is left out."""
        if not self.path.is_file():
            return []
        text = read_text(self.path)
        lines = text.splitlines()
        events = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as e:
                if torn_tail_ok and lineno == len(lines) and not text.endswith("\n"):
                    break
                raise GovlabError(f"{self.path} line {lineno}: not valid JSON ({e.msg}); the file is "
                                  "damaged (a crash while writing?)") from None
        return events

    def truncate_after(self, step: int) -> None:
        """Drop events logged after ``step`` (used on resume, so a replayed step logs once). An
        append cut off by a crash is dropped too: it came after the last checkpoint."""
        from govlab.distributed import is_main

        if not is_main():
            return
        kept = [e for e in self.read(torn_tail_ok=True) if e.get("step", -1) <= step]
        write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
