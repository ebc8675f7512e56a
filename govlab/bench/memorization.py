"""``govlab bench memorization``: cost of the monitor at its default cadence, and detection AUC."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace

import torch

from govlab.bench.train import on_device, sync
from govlab.config import load_config
from govlab.data.cache import run_dataset
from govlab.memorization.audit import is_planted
from govlab.memorization.detectors import detection_auc, noise_magnitude
from govlab.memorization.monitor import attach
from govlab.train import Trainer


def caption_auc(model, trainer, records: list[dict], **kw) -> float | None:
    """AUC of the noise-magnitude detector separating planted duplicates' captions from the others."""
    first = {}
    for i, r in enumerate(records):
        first.setdefault(r["caption"], i)
    rows = list(first.values())
    scores = noise_magnitude(model, trainer.tokens[rows], **kw)
    return detection_auc(scores.tolist(), [is_planted(records[i]) for i in rows])


def bench_memorization(*, quick: bool = False, device: str | None = None, preset: str | None = None,
                       every: int | None = None) -> dict:
    """Blocks of ``every`` steps (one monitor check each), monitored and plain alternately, same
    process, same batches (the monitor with intervention ``none`` leaves training unchanged);
    ``overhead_ratio`` = monitored seconds / plain seconds. Then the AUC of the detector on the
    trained model, on the ``memorization`` preset or ``preset``. ``every`` overrides the cadence (tests)."""
    preset = preset or "memorization"
    cfg = on_device(load_config(preset), device)
    mon = replace(cfg, memorization=replace(cfg.memorization, mode="monitor", intervention="none", start=0,
                                            every=every or cfg.memorization.every))
    dataset = run_dataset(cfg, progress=False)
    every, blocks = mon.memorization.every, 1 if quick else 6
    with tempfile.TemporaryDirectory() as tmp:
        plain = Trainer(cfg, dataset, f"{tmp}/p", progress=False)
        monitored = Trainer(mon, dataset, f"{tmp}/m", hooks=attach(mon, dataset), progress=False)
        for t in (plain, monitored):
            t.out.mkdir(parents=True)
            for h in t.hooks:
                h.on_start(t)
        seconds = {"plain": 0.0, "monitored": 0.0}
        for b in range(blocks + 1):  # the first block warms up
            for name, t in (("plain", plain), ("monitored", monitored)):
                sync()
                t0 = time.perf_counter()
                for _ in range(every):
                    t.train_step(t.make_context())
                sync()
                if b:
                    seconds[name] += time.perf_counter() - t0
        m = mon.memorization
        auc = caption_auc(monitored.model, monitored, dataset.records, noises=m.noises, timesteps=m.timesteps,
                          seed=m.seed)
        same = all(torch.equal(a, b) for a, b in zip(plain.model.parameters(), monitored.model.parameters()))
    steps = blocks * every
    return {"overhead_ratio": round(seconds["monitored"] / seconds["plain"], 4), "auc": auc,
            "monitored_step_s": round(seconds["monitored"] / steps, 4), "plain_step_s": round(seconds["plain"] / steps, 4),
            "every": every, "watch_size": m.watch_size, "detector": m.detector, "steps_trained": (blocks + 1) * every,
            "training_unchanged": same, "preset": preset, "device": cfg.train.device,
            "threads": torch.get_num_threads(), "quick": quick}
