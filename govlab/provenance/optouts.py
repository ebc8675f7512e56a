"""The opt-out registry (``optouts.jsonl``): consulted at ingestion, during and after training.

Each line is ``{"source_id": str, "since": int, "scope": "training" | "all"}`` (``scope`` may be
left out: ``training``). ``since`` is the training step from which the source may no longer change
the model: 0 rejects its records at ingestion (logged to events.jsonl); a later step zeroes its
samples' loss weight from that step on (its share of every gradient is then exactly 0) and drops its
records from the next epoch.
``scope: all`` also attenuates the source's routing slot to 0 after training (recorded); a run
whose model gives the source no slot refuses it (unless ``since`` is 0: the source then never
trained).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.hooks import Hook
from govlab.io import read_text, write_text

OPTOUTS = "optouts.jsonl"
SCOPES = ("training", "all")
FIELDS = ("source_id", "since", "scope")  # scope is optional (default training)


@dataclass(frozen=True)
class OptOut:
    source_id: str
    since: int
    scope: str = "training"


def read_registry(path: str | Path) -> str:
    """The text of a registry (UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: opt-out registry not found")
    return read_text(path)


def read_optouts(path: str | Path, sources: list[str]) -> list[OptOut]:
    """Read, parse and validate a registry; errors name the file, line and field."""
    return parse_optouts(read_registry(path), path, sources)


def parse_optouts(text: str, path: str | Path, sources: list[str]) -> list[OptOut]:
    """Parse and validate the text of the registry ``path``; errors name the file, line and field."""
    out, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GovlabError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise GovlabError(f"{where}: expected a JSON object")
        missing, unknown = [f for f in FIELDS[:2] if f not in rec], sorted(set(rec) - set(FIELDS))
        if missing or unknown:
            problem = f"missing field {missing[0]!r}" if missing else f"unknown field {unknown[0]!r}"
            raise GovlabError(f"{where}: {problem} (each line holds {', '.join(FIELDS)})")
        src, since, scope = rec["source_id"], rec["since"], rec.get("scope", "training")
        if not isinstance(src, str):
            raise GovlabError(f"{where}: field 'source_id' must be a string, got {src!r}")
        if src not in sources:
            raise GovlabError(f"{where}: opt-out for unknown source {src!r} (sources: {', '.join(sources)})")
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise GovlabError(f"{where}: field 'since' must be a training step >= 0, got {since!r}")
        if scope not in SCOPES:
            raise GovlabError(f"{where}: field 'scope' must be one of {', '.join(SCOPES)}, got {scope!r}")
        if src in seen:
            raise GovlabError(f"{where}: source {src!r} opts out twice")
        seen.add(src)
        out.append(OptOut(src, since, scope))
    return out


def _said(o: OptOut | None) -> str:
    return "no opt-out" if o is None else f"an opt-out since step {o.since}"


def ingest(dataset: Dataset, optouts: list[OptOut]) -> tuple[Dataset, list[dict]]:
    """Drop the records of sources opted out from step 0; returns the rejections."""
    gone = {o.source_id for o in optouts if o.since == 0}
    keep = [i for i, r in enumerate(dataset.records) if r["source_id"] not in gone]
    rejected = [{"file": r["file_name"], "source_id": r["source_id"], "reason": "opt-out (optouts.jsonl, since 0)"}
                for r in dataset.records if r["source_id"] in gone]
    return (dataset.subset(keep) if rejected else dataset), rejected


def check_slots(optouts: list[OptOut], slotted: set[str], mode: str, path: str | Path) -> None:
    """Refuse an opt-out with ``scope: all`` that acts after step 0 on a source the run's model
    gives no slot (``slotted``: the sources with one; ``mode``: routing.mode): the slot it asks to
    zero after training would not exist, so what the source learnt before ``since`` would stay."""
    for o in optouts:
        if o.scope == "all" and o.since > 0 and o.source_id not in slotted:
            raise GovlabError(
                f"{path}: source {o.source_id!r} opts out with scope 'all', which zeroes its routing slot "
                f"after training, but this run gives it no slot (routing.mode: {mode}; sources with slots: "
                f"{', '.join(sorted(slotted)) or 'none'}); train it with a slot or use scope 'training'")


class OptOutHook(Hook):
    """Honours the registry during training and after it (see the module docstring); ``text`` is
    the registry as read from ``path``, copied into the run (``optouts.jsonl``) so that the run can
    attest it.

    A resumed run may take an edited registry only where the edit acts from the checkpoint on: an
    opt-out that took effect before the checkpoint (``since`` below its step, in the registry the
    run was trained under or in the new one) must keep its ``since``, else the resume is refused
    (the index's proof of zero influence from ``since`` on would not hold). Its ``scope`` may
    change: it acts only after training.
    """

    def __init__(self, optouts: list[OptOut], rejected: list[dict], text: str, path: str | Path):
        self.optouts, self.rejected, self.text, self.path = list(optouts), list(rejected), text, path
        self.steps_done = 0

    def on_start(self, trainer) -> None:
        write_text(trainer.out / OPTOUTS, self.text)
        if trainer.step == 0:
            for r in self.rejected:
                trainer.events.write("ingestion_rejected", step=0, **r)

    def before_forward(self, ctx) -> None:
        for o in self.optouts:
            if o.since == 0 or ctx.step < o.since:
                continue
            if ctx.step == o.since:
                rows = [i for i, r in enumerate(ctx.trainer.dataset.records) if r["source_id"] == o.source_id]
                ctx.trainer.sampler.exclude(rows)
                ctx.trainer.events.write("opt_out", step=ctx.step, source_id=o.source_id, scope=o.scope,
                                         records=len(rows))
            mask = [r["source_id"] == o.source_id for r in ctx.records]
            if any(mask):
                ctx.weights = ctx.weights.masked_fill(ctx.weights.new_tensor(mask, dtype=bool), 0.0)

    def after_step(self, ctx) -> None:
        self.steps_done = ctx.step + 1

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done,
                "registry": [[o.source_id, o.since, o.scope] for o in self.optouts]}

    def load_state_dict(self, state: dict) -> None:
        step = self.steps_done = state["steps_done"]
        then = {src: OptOut(src, since, scope) for src, since, scope in state["registry"]}
        now = {o.source_id: o for o in self.optouts}
        for src in sorted(set(then) | set(now)):
            old, new = then.get(src), now.get(src)
            past = any(o is not None and o.since < step for o in (old, new))
            if past and (old is None or new is None or old.since != new.since):
                raise GovlabError(
                    f"{self.path}: source {src!r} has {_said(new)}, but the run was trained up to its "
                    f"checkpoint at step {step} with {_said(old)}; an opt-out added or changed on resume "
                    f"must act from step {step} on (since >= {step}), or train afresh")

    def on_end(self, trainer) -> None:
        from govlab.routing.slots import scale_slot, slot_names

        slots = slot_names(trainer.model)
        for o in self.optouts:
            if o.scope == "all" and o.source_id in slots:
                layers = scale_slot(trainer.model, o.source_id, 0.0)
                trainer.events.write("opt_out_attenuated", step=trainer.step, source_id=o.source_id,
                                     factor=0.0, layers=layers)
        if any(o.scope == "all" and o.source_id in slots for o in self.optouts):
            trainer.model.save(trainer.out / "model.safetensors")
