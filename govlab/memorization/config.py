"""The ``memorization`` section of a run config."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("off", "monitor")
DETECTORS = ("noise", "regeneration")
INTERVENTIONS = ("none", "attenuate", "regularize", "drop", "deduplicate")
REGULARIZERS = ("caption", "embedding")
WATCH_MODES = ("all", "rotating")
# score range of each detector: noise-magnitude is a norm, regeneration is 1 - min(1, l2 ratio)
SCORE_RANGE = {"noise": (0.0, math.inf), "regeneration": (0.0, 1.0)}
# where a calibrated threshold may land: a regeneration score above 2/3 (l2 ratio below 1/3) is the
# literature's extraction criterion and always flags; below 1/3 (ratio above 2/3) never does
CALIBRATED_RANGE = {"noise": (0.0, math.inf), "regeneration": (1 / 3, 2 / 3)}
# default k of a calibrated threshold (median + k MAD): the noise-magnitude score of one check is
# noisy; k = 6 flagged 1 to 3 of the 8 planted images of the memorization preset, k = 3 all (docs/memorization.md)
CALIBRATE_K = {"noise": 3.0, "regeneration": 6.0}


@dataclass(frozen=True)
class MemorizationConfig:
    """The in-flight memorization monitor (``mode: monitor``); off by default.

    Every ``every`` steps from step ``start`` on, the monitor scores the captions of the watched
    samples (``watch``: ``all``, ``rotating`` = ``watch_size`` rows per check in a fixed shuffled
    cycle, or a list of dataset rows / file names) with ``detector``, flags samples scoring above
    ``threshold`` (``null``: calibrated at each check as median + k x MAD of the latest score of
    every caption seen so far, k = ``calibrate_k`` or the detector's ``CALIBRATE_K``, kept within
    the detector's ``CALIBRATED_RANGE``) and applies ``intervention`` to every flagged sample and
    its copies (same caption; same image too for the regeneration detector) from then on:
    ``attenuate`` (loss weight x ``factor``), ``regularize`` (``caption``: each word replaced by a
    random vocabulary word with probability ``strength``; ``embedding``: Gaussian noise of std
    ``strength`` on its caption embedding), ``drop`` (excluded from later epochs), ``deduplicate``
    (one row of each flagged key and image kept, the rows repeating it excluded from later epochs),
    or ``none`` (monitor only: training is exactly that of an unmonitored run).
    """

    mode: str = "off"  # off | monitor
    detector: str = "noise"  # noise | regeneration
    watch: str | tuple = "rotating"  # all | rotating | [row or file_name, ...]
    watch_size: int = 64
    every: int = 100
    start: int = 100
    threshold: float | None = None
    calibrate_k: float | None = None  # None: CALIBRATE_K[detector]
    intervention: str = "drop"  # none | attenuate | regularize | drop | deduplicate (docs/memorization.md)
    factor: float = 0.0  # attenuate: loss weight of a flagged sample
    regularize: str = "caption"  # caption | embedding
    strength: float = 0.5
    noises: int = 2  # noise-magnitude: noise draws (shared by all captions)
    timesteps: tuple[int, ...] = (800,)  # noise-magnitude: the early sampling timesteps scored
    seeds: int = 4  # regeneration: generations per caption
    steps: int = 8  # regeneration: sampler steps
    seed: int = 0

    def __post_init__(self):
        for name, value, allowed in (("mode", self.mode, MODES), ("detector", self.detector, DETECTORS),
                                     ("intervention", self.intervention, INTERVENTIONS),
                                     ("regularize", self.regularize, REGULARIZERS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if isinstance(self.watch, str) and self.watch not in WATCH_MODES:
            raise ValueError(f"watch must be all, rotating or a list of samples, got {self.watch!r}")
        if not isinstance(self.watch, (str, tuple)) or (isinstance(self.watch, tuple) and not self.watch):
            raise ValueError(f"watch must be all, rotating or a non-empty list of samples, got {self.watch!r}")
        for name in ("watch_size", "every", "noises", "seeds", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.start < 0 or not (self.calibrate_k is None or self.calibrate_k > 0) or self.factor < 0 \
                or self.strength < 0:
            raise ValueError("start, factor and strength must be >= 0 and calibrate_k > 0")
        if not self.timesteps or not all(0 <= t < 1000 for t in self.timesteps):
            raise ValueError(f"timesteps must be a non-empty list in 0..999, got {self.timesteps!r}")
        lo, hi = SCORE_RANGE[self.detector]
        if self.threshold is not None and not lo < self.threshold < hi:
            raise ValueError(f"threshold {self.threshold} is outside the {self.detector} score range "
                             f"({lo}, {hi})")
