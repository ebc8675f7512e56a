"""One reader for what a run directory holds (the layout of docs/demo.md), each file checked on
first use with an error naming it: ``RunDir(path).config``, ``.scores``, ``.events``,
``.checkpoints``, ``.index``, ``.memorization``, ``.lineage``. Nothing here trains or imports the
studies; the explorer and the commands read runs through it."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from govlab.errors import GovlabError
from govlab.io import read_text

CONFIG = "config.yaml"
SCORES = "scores.json"
EVENTS = "events.jsonl"
MODEL = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
LINEAGE = "lineage.json"  # `govlab lineage --target RUN ... --json`, saved beside the run


class RunDir:
    """The files of one run directory; each part is read on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise GovlabError(f"{self.path}: run directory not found")
        if not (self.path / CONFIG).is_file() and not self.has_index:
            raise GovlabError(f"{self.path}: not a govlab run directory (no {CONFIG}, index.nc or index.parts/)")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @cached_property
    def config(self):
        """The run's resolved ``RunConfig`` (from ``config.yaml``)."""
        from govlab.config import from_dict, read_yaml

        return from_dict(read_yaml(self.path / CONFIG), where=str(self.path / CONFIG))

    @cached_property
    def scores(self) -> dict | None:
        """``scores.json`` (scores, figures, what was not scored), or None before scoring."""
        path = self.path / SCORES
        if not path.is_file():
            return None
        return _json_object(path)

    @cached_property
    def events(self) -> list[dict]:
        """The governance events of ``events.jsonl`` (none when the file is absent); an append cut
        off by a crash at the end is left out, any other damaged line is an error naming it."""
        from govlab.hooks import EventLog

        events = EventLog(self.path / EVENTS).read(torn_tail_ok=True)
        for i, e in enumerate(events, 1):
            if not isinstance(e, dict):
                raise GovlabError(f"{self.path / EVENTS}: event {i} is not a JSON object")
        return events

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(step, weights)`` of each ``checkpoints/step_NNNNNN.safetensors``, by step."""
        found = [(int(p.stem[5:]), p) for p in (self.path / CHECKPOINT_DIR).glob("step_*.safetensors")
                 if p.stem[5:].isdigit()]
        return sorted(found)

    @property
    def has_index(self) -> bool:
        from govlab.provenance.index import has_index

        return has_index(self.path)

    def read_index(self, *, lazy_bytes: int | None = None):
        """The provenance index (``index.nc``, or the per-sample ``index.parts/`` joined), checked
        against its schema (``govlab.provenance.index.check``); not matched to the model."""
        from govlab.provenance.index import read_index

        return read_index(self.path, lazy_bytes=lazy_bytes)

    @cached_property
    def memorization(self) -> dict | None:
        """The monitor's ``memorization.json`` (threshold, flags, score history), or None."""
        from govlab.memorization.monitor import MONITOR_FILE, read_monitor

        if not (self.path / MONITOR_FILE).is_file():
            return None
        try:
            return read_monitor(self.path)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise GovlabError(f"{self.path / MONITOR_FILE}: not a govlab memorization monitor file "
                              f"({type(e).__name__}: {e})") from None

    @cached_property
    def lineage(self) -> dict | None:
        """The object printed by ``govlab lineage --target RUN ... --json``, saved as ``lineage.json``."""
        path = self.path / LINEAGE
        if not path.is_file():
            return None
        result = _json_object(path)
        if not isinstance(result.get("votes"), list) or not result["votes"]:
            raise GovlabError(f"{path}: not a govlab lineage result (no per-prompt votes)")
        return result


def _json_object(path: Path) -> dict:
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise GovlabError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise GovlabError(f"{path}: expected a JSON object")
    return obj
