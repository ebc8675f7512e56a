"""The in-flight memorization monitor: a training-loop hook that scores, flags and intervenes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from govlab import distributed
from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.hooks import Hook, StepContext
from govlab.io import write_json
from govlab.memorization.config import CALIBRATE_K, CALIBRATED_RANGE, MemorizationConfig
from govlab.memorization.detectors import noise_magnitude, pixel_features, regeneration_scores, unique_images

MONITOR_FILE = "memorization.json"
FIRST_WORD = 3  # token ids below this are <pad>, <unk>, <null>


def watch_rows(watch, records: list[dict]) -> list[int] | None:
    """Dataset rows of a watch list (rows or file names); None for ``all``/``rotating``."""
    if isinstance(watch, str):
        return None
    by_name = {r["file_name"]: i for i, r in enumerate(records) if "file_name" in r}
    rows, unknown = [], []
    for w in watch:
        if isinstance(w, int) and not isinstance(w, bool) and 0 <= w < len(records):
            rows.append(w)
        elif isinstance(w, str) and w in by_name:
            rows.append(by_name[w])
        else:
            unknown.append(w)
    if unknown:
        raise GovlabError(f"memorization.watch names unknown samples {unknown[:5]} (give dataset rows "
                          f"0..{len(records) - 1} or file names of the dataset)")
    return sorted(set(rows))


def calibrate(scores: list[float], k: float) -> float:
    """median + k * MAD (scaled to a normal's standard deviation) of ``scores``."""
    s = torch.tensor(scores, dtype=torch.float64)
    med = s.median()
    return float(med + k * 1.4826 * (s - med).abs().median())


class MemorizationMonitor(Hook):
    """Scores watched samples every ``cfg.every`` steps, flags those above the threshold, applies the
    intervention to flagged samples and logs each flag and intervention to events.jsonl.

    ``latest_scores`` maps dataset row -> latest score; ``flagged`` maps row -> step first flagged.

    It works on explicit inputs: the training records (``caption``, ``source_id``) and their uint8
    images (a govlab ``Dataset`` gives both), and, through ``bind``, the model as a detector
    ``Denoiser``, an event log and a sampler with ``exclude`` (for ``drop``/``deduplicate``).
    govlab's own trainer binds them in ``on_start``; ``govlab.Governance`` in a foreign loop.
    """

    def __init__(self, cfg: MemorizationConfig, dataset: Dataset | None = None, *, records: list[dict] | None = None,
                 images: torch.Tensor | None = None, guidance: float = 3.0):
        self.cfg, self.guidance = cfg, guidance
        if dataset is not None:
            records, images = dataset.records, dataset.images
        if records is None or images is None or len(images) != len(records):
            raise GovlabError("memorization monitor: needs the training records and one image per record")
        self.records = records
        self.watch = watch_rows(cfg.watch, records)
        self.order = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        uniq, self.image_of = unique_images(images)
        self.train_features = pixel_features(uniq) if cfg.detector == "regeneration" else None
        # rows sharing this key get one score: the caption (noise), or caption and image (regeneration)
        self.keys = [(r["caption"], int(self.image_of[i]) if cfg.detector == "regeneration" else -1)
                     for i, r in enumerate(records)]
        self.rows_of: dict[tuple, list[int]] = {}
        for i, k in enumerate(self.keys):
            self.rows_of.setdefault(k, []).append(i)
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.latest_scores: dict[int, float] = {}
        self.flagged: dict[int, int] = {}
        self.threshold = cfg.threshold
        self.history: list[dict] = []
        self.cursor = 0
        self.applied: dict[str, set[int]] = {}
        self._active: list[int] = []
        self._noise_mask: torch.Tensor | None = None
        self._handle = None
        self.denoiser = self.tokens = self.events = self.sampler = self.out = None

    def bind(self, denoiser, *, events, out, sampler=None, tokens: torch.Tensor | None = None,
             text_module: torch.nn.Module | None = None) -> None:
        """Wire the monitor to a loop: ``denoiser`` (a detectors ``Denoiser``) is scored, ``events``
        (an ``EventLog``) takes flags and interventions, ``out`` gets memorization.json, ``sampler``
        (``exclude(rows)``, ``excluded``) takes drops; ``tokens``: every record's caption as the
        model's token ids (else the captions are encoded as text); ``text_module``: where the
        embedding-noise regularizer hooks in."""
        if self.cfg.intervention in ("drop", "deduplicate") and sampler is None:
            raise GovlabError(f"memorization monitor: intervention {self.cfg.intervention!r} needs a sampler "
                              "that can exclude rows (govlab.ExcludingSampler)")
        self.denoiser, self.events, self.out, self.sampler, self.tokens = denoiser, events, Path(out), sampler, tokens
        if self.cfg.intervention == "regularize" and self.cfg.regularize == "embedding" and self._handle is None:
            if text_module is None:
                raise GovlabError("memorization monitor: regularize: embedding needs the text encoder module")
            self._handle = text_module.register_forward_hook(self._embedding_noise)

    @property
    def action(self) -> str:
        if self.cfg.intervention == "regularize":
            return f"regularize_{self.cfg.regularize}"
        return self.cfg.intervention

    # -- which samples, their scores -----------------------------------------------------------
    def next_rows(self) -> list[int]:
        if self.watch is not None:
            return self.watch
        if self.cfg.watch == "all":
            return list(range(len(self.records)))
        n = len(self.order)
        rows = [self.order[(self.cursor + i) % n] for i in range(min(self.cfg.watch_size, n))]
        self.cursor = (self.cursor + len(rows)) % n
        return rows

    def score(self, rows: list[int], step: int) -> dict[int, float]:
        """Detector score of each row (rows with the same key are scored once). The noise-magnitude
        detector draws its noises afresh at each check (seeded by ``step``). Under several ranks
        each rank scores every ``ranks``-th of the rows and the scores are gathered, so that every
        rank flags the same rows."""
        first: dict[tuple, int] = {}
        for r in rows:
            first.setdefault(self.keys[r], r)
        reps = list(first.values())
        w = distributed.world()
        if not w.active:
            return self._score(rows, reps, step)
        mine = self._score(reps[w.rank::w.size], reps[w.rank::w.size], step) if reps[w.rank::w.size] else {}
        by_rep = {r: v for part in distributed.gather_objects(mine) for r, v in part.items()}
        return {r: by_rep[first[self.keys[r]]] for r in rows}

    @property
    def not_reduced(self) -> list[str]:
        """What differs from a one-rank run under several ranks (named in the index attrs)."""
        if distributed.world().active and self.cfg.detector == "regeneration":
            return ["mem_score: the regeneration detector draws its generations' noise for the watched rows "
                    "a rank scores, so its scores depend on how the rows are split across ranks"]
        return []

    def _score(self, rows: list[int], reps: list[int], step: int) -> dict[int, float]:
        c = self.cfg
        if c.detector == "noise":
            prompts = self.tokens[reps] if self.tokens is not None else [self.records[r]["caption"] for r in reps]
            s = noise_magnitude(self.denoiser, prompts, noises=c.noises, timesteps=c.timesteps, seed=c.seed + step)
        else:
            s = regeneration_scores(self.denoiser, [self.records[r]["caption"] for r in reps],
                                    self.image_of[reps], self.train_features, seeds=c.seeds, steps=c.steps,
                                    guidance=self.guidance, seed=c.seed)
        by_key = {self.keys[r]: float(v) for r, v in zip(reps, s)}
        return {r: by_key[self.keys[r]] for r in rows}

    def current_threshold(self) -> float:
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        per_key = {self.keys[r]: s for r, s in self.latest_scores.items()}
        lo, hi = CALIBRATED_RANGE[self.cfg.detector]
        k = CALIBRATE_K[self.cfg.detector] if self.cfg.calibrate_k is None else self.cfg.calibrate_k
        return min(max(calibrate(list(per_key.values()), k), lo), hi)

    def check(self, step: int) -> list[int]:
        """Score the next watched rows, flag those above the threshold together with every copy (row
        with the same key, watched or not) and log; returns the newly flagged rows."""
        rows = self.next_rows()
        scores = self.score(rows, step)
        self.latest_scores.update(scores)
        self.threshold = self.current_threshold()
        above = [r for r in rows if scores[r] > self.threshold]
        copy_of = {r: r for r in above if r not in self.flagged}  # newly flagged row -> the row that flagged it
        for r in above:
            for c in self.rows_of[self.keys[r]]:
                if c not in self.flagged:
                    copy_of.setdefault(c, r)
        new = list(copy_of)
        dedupe = self.cfg.intervention == "deduplicate"
        excluded: set[int] = set()  # rows leaving the training stream at this check
        if self.cfg.intervention == "drop":
            excluded.update(new)
        elif dedupe:
            excluded.update(self.duplicates(new, self.sampler.excluded))
        events = self.events
        self.log_interventions(events, step)
        for c, r in copy_of.items():
            self.flagged[c] = step
            events.write("memorization_flag", step=step, sample=c, file=self.records[c]["file_name"],
                         score=round(scores[r], 6), threshold=round(self.threshold, 6), action=self.action,
                         detector=self.cfg.detector, **({} if c == r else {"copy_of": r}),
                         **({"excluded": c in excluded} if dedupe else {}))
        if excluded:
            self.sampler.exclude(sorted(excluded))
        self.history.append({"step": step, "threshold": self.threshold, "scores": scores})
        return new

    def duplicates(self, rows: list[int], excluded=frozenset()) -> list[int]:
        """All of ``rows`` but one of each (key, image): the lowest row not already ``excluded``
        (e.g. by an opt-out) is kept."""
        groups: dict[tuple, list[int]] = {}
        for r in rows:
            groups.setdefault((self.keys[r], int(self.image_of[r])), []).append(r)
        out = []
        for group in groups.values():
            keep = min((r for r in group if r not in excluded), default=None)
            out += [r for r in group if r != keep]
        return out

    def log_interventions(self, events, step: int) -> None:
        """One event per action: the samples it was applied to since the last check."""
        for action, applied in sorted(self.applied.items()):
            events.write("memorization_intervention", step=step, action=action, samples=sorted(applied),
                         count=len(applied))
        self.applied = {}

    # -- hook points ---------------------------------------------------------------------------
    def on_start(self, trainer) -> None:
        from govlab.memorization.detectors import GovlabDenoiser

        self.bind(GovlabDenoiser(trainer.model), events=trainer.events, out=trainer.out, sampler=trainer.sampler,
                  tokens=trainer.tokens, text_module=trainer.model.text)

    def before_forward(self, ctx: StepContext) -> None:
        self._active = [i for i, r in enumerate(ctx.indices.tolist()) if r in self.flagged]
        if not self._active or self.cfg.intervention in ("none", "drop", "deduplicate"):
            return
        self.applied.setdefault(self.action, set()).update(int(ctx.indices[i]) for i in self._active)
        if self.cfg.intervention == "regularize" and self.cfg.regularize == "caption":
            tok = ctx.tokens[self._active].cpu()  # drawn on the CPU: the same on any device
            swap = (tok >= FIRST_WORD) & (torch.rand(tok.shape, generator=self.rng) < self.cfg.strength)
            vocab = len(ctx.trainer.model.tokenizer.vocab)
            tok[swap] = torch.randint(FIRST_WORD, vocab, (int(swap.sum()),), generator=self.rng)
            ctx.tokens[self._active] = tok.to(ctx.tokens.device)
        elif self.cfg.intervention == "regularize":
            mask = torch.zeros(len(ctx.indices), dtype=torch.bool)
            mask[self._active] = True
            self._noise_mask = mask.to(ctx.tokens.device)

    def _embedding_noise(self, module, inputs, output):
        if self._noise_mask is None or len(self._noise_mask) != len(output):
            return None
        noise = torch.randn(output.shape, generator=self.rng).to(output.device) * self.cfg.strength
        return output + noise * self._noise_mask[:, None, None]

    def before_backward(self, ctx: StepContext) -> None:
        self._noise_mask = None
        if self._active and self.cfg.intervention == "attenuate":
            ctx.weights[self._active] = ctx.weights[self._active] * self.cfg.factor

    def after_step(self, ctx: StepContext) -> None:
        done = ctx.step + 1
        if done >= self.cfg.start and done % self.cfg.every == 0:
            self.check(ctx.step)

    def on_checkpoint(self, trainer, step: int) -> None:
        self.save(self.out / MONITOR_FILE)

    def on_end(self, trainer) -> None:
        self.finish(trainer.step)

    def finish(self, step: int) -> None:
        """End of training at ``step`` (steps done): the last interventions logged, the file written."""
        self.log_interventions(self.events, step - 1)
        self.save(self.out / MONITOR_FILE)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # -- state ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """memorization.json: config, threshold, flags, latest scores and the score history (rank 0's)."""
        if not distributed.is_main():
            return
        write_json(path, {"config": asdict(self.cfg), "threshold": self.threshold,
                          "flagged": {str(r): s for r, s in self.flagged.items()},
                          "latest_scores": {str(r): s for r, s in self.latest_scores.items()},
                          "history": [{**h, "scores": {str(r): s for r, s in h["scores"].items()}}
                                      for h in self.history]})

    def state_dict(self) -> dict:
        """The monitor's state; its per-row figures and its history as a few tensors (which do not
        grow the checkpoint's JSON header, capped by safetensors, with the rows or the checks)."""
        h = self.history
        return {"threshold": self.threshold, "cursor": self.cursor, "rng": self.rng.get_state(),
                "flagged": _pairs(self.flagged, torch.int64), "latest": _pairs(self.latest_scores, torch.float64),
                "history_step": torch.tensor([e["step"] for e in h], dtype=torch.int64),
                "history_threshold": torch.tensor([e["threshold"] for e in h], dtype=torch.float64),
                "history_len": torch.tensor([len(e["scores"]) for e in h], dtype=torch.int64),
                "history_rows": torch.tensor([r for e in h for r in e["scores"]], dtype=torch.int64),
                "history_scores": torch.tensor([v for e in h for v in e["scores"].values()], dtype=torch.float64),
                "applied": {a: torch.tensor(sorted(r), dtype=torch.int64) for a, r in self.applied.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.cursor = state["threshold"], state["cursor"]
        self.flagged = {int(r): int(s) for r, s in zip(*state["flagged"])}
        self.latest_scores = {int(r): float(s) for r, s in zip(*state["latest"])}
        lens = state["history_len"].tolist()
        rows, scores = state["history_rows"].split(lens), state["history_scores"].split(lens)
        self.history = [{"step": step, "threshold": t, "scores": dict(zip(r.tolist(), s.tolist()))}
                        for step, t, r, s in zip(state["history_step"].tolist(), state["history_threshold"].tolist(),
                                                 rows, scores)]
        self.rng.set_state(state["rng"])
        self.applied = {a: set(r.tolist()) for a, r in state["applied"].items()}


def _pairs(d: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    """A dict of row -> value as two tensors (rows, values), in the dict's order."""
    return [torch.tensor(list(d), dtype=torch.int64), torch.tensor(list(d.values()), dtype=dtype)]


def read_monitor(run: str | Path) -> dict:
    """A run's memorization.json with integer sample rows."""
    path = Path(run) / MONITOR_FILE
    if not path.is_file():
        raise GovlabError(f"{path}: not found (train with memorization.mode: monitor)")
    m = json.loads(path.read_text())
    m["flagged"] = {int(r): s for r, s in m["flagged"].items()}
    m["latest_scores"] = {int(r): s for r, s in m["latest_scores"].items()}
    for h in m["history"]:
        h["scores"] = {int(r): s for r, s in h["scores"].items()}
    return m


def check_world(cfg: MemorizationConfig) -> None:
    """``regularize`` draws its noise or token swaps per sample of one process's batch: refused under
    several ranks."""
    w = distributed.world()
    if w.active and cfg.mode == "monitor" and cfg.intervention == "regularize":
        raise GovlabError(f"memorization.intervention 'regularize' is not supported under {w.size} ranks (its "
                          "draws follow one process's batch); use none, attenuate, drop or deduplicate, or train "
                          "on one rank")


def attach(cfg, dataset: Dataset) -> list[Hook]:
    """The monitor hook of a run config (none when ``memorization.mode`` is off)."""
    if cfg.memorization.mode == "off":
        return []
    check_world(cfg.memorization)
    return [MemorizationMonitor(cfg.memorization, dataset, guidance=cfg.eval.guidance)]
