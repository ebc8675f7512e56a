"""Synthetic provenance indexes in the index schema (docs/provenance-index.md, Schema): a test and benchmark FIXTURE.

These are not training output. They let the explorer's tests and ``govlab bench explore`` run
without training, at any size (10^7 per-sample cells). ``routed=True`` concentrates each artist's
update in its own slot band, as depth-selective routing does; ``routed=False`` spreads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from govlab import __version__
from govlab.io import atomic_path
from govlab.provenance.writer import FORMAT

BANDS = ("outer", "middle", "cross_attention", "trunk")
SOURCES = ("artist_0", "artist_1", "artist_2", "artist_3", "stockco", "webcrawl")


def synthetic_index(*, sources=SOURCES, samples: int = 0, checkpoints=(100, 200, 300, 400),
                    routed: bool = True, mem_samples: int = 0, seed: int = 0,
                    dtype=np.float32) -> xr.Dataset:
    """A schema-conformant index; per-sample granularity when ``samples`` > 0 (each sample of a
    source, given as a ``source_id(sample)`` coordinate as the writer gives it), cohort granularity
    otherwise."""
    if samples and mem_samples and mem_samples != samples:
        raise ValueError("mem_samples must equal samples at per-sample granularity")
    rng = np.random.default_rng(seed)
    sources = list(sources)
    slots = [f"slot:{s}" for s in sources if s.startswith("artist")] if routed else []
    bands = [*BANDS, *slots]
    n_c, n_b = len(checkpoints), len(bands)
    if samples:
        unit, src = "sample", np.arange(samples) % len(sources)
    else:
        unit, src = "source", np.arange(len(sources))
    n = len(src)
    # each unit's weight per band: a trunk baseline, plus its own slot when routed
    weight = np.full((n, n_b), 0.3, dtype)
    for i, s in enumerate(sources):
        if f"slot:{s}" in bands:
            weight[src == i, bands.index(f"slot:{s}")] = 4.0
            weight[src == i, bands.index("cross_attention")] = 0.05
    drift = np.linspace(1.0, 0.4, n_c, dtype=dtype)  # updates shrink as training converges
    grad = np.empty((n, n_b, n_c), dtype)
    for c in range(n_c):  # one checkpoint at a time keeps peak memory at one slab
        grad[:, :, c] = weight * drift[c] * rng.gamma(2.0, 1.0, size=(n, n_b)).astype(dtype)
    for b, band in enumerate(bands):
        if band.startswith("slot:"):
            grad[src != sources.index(band[5:]), b, :] = 0.0  # routing: a slot sees only its source
    total = grad.sum(axis=0, keepdims=True)
    share = np.divide(grad, total, out=np.zeros_like(grad), where=total > 0)
    steps = rng.integers(1, 20, size=(n, n_c)).cumsum(axis=1)
    data = {"grad_norm_sq": ((unit, "band", "checkpoint"), grad),
            "update_share": ((unit, "band", "checkpoint"), share),
            "steps_seen": ((unit, "checkpoint"), steps)}
    coords = {"band": bands, "checkpoint": list(checkpoints)}
    if samples:  # as the writer lays out a per-sample index
        coords.update(sample=np.arange(samples), source_id=("sample", np.asarray(sources, dtype=object)[src]),
                      source=np.asarray(sources, dtype=object))
        data["source_steps_seen"] = (("source", "checkpoint"), steps[:len(sources)])
    else:
        coords["source"] = sources
    if mem_samples:
        mem = rng.gamma(2.0, 0.5, size=(mem_samples, n_c)).astype(dtype)
        mem[: max(1, mem_samples // 20)] *= np.linspace(1, 6, n_c, dtype=dtype)  # a few duplicates rise
        data["mem_score"] = (("sample", "checkpoint"), mem)
        coords.setdefault("sample", np.arange(mem_samples))
    attrs = {"format": FORMAT, "govlab_version": __version__, "granularity": "sample" if samples else "cohort",
             "accumulation": "interval", "mode": "exact", "bands_json": json.dumps({b: [b] for b in bands}),
             "sources_json": json.dumps(sources),
             "routing_policy_json": json.dumps({"mode": "routed" if routed else "unrouted"}),
             "model_hash": "synthetic", "config_hash": "synthetic",
             "note": "synthetic fixture (govlab.explore.synthetic), not training output"}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def write_index(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as netCDF atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)
    return path


# world version 1: its watermark and identity captions hold the words that switch on the
# sequestered caption adapters of the default routing policy
TINY = {"name": "explore-fixture", "world": {"version": 1},
        "model": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4},
        "routing": {"mode": "routed", "slot_rank": 2, "sequester_rank": 2},
        "train": {"steps": 30, "batch_size": 12, "checkpoint_every": 30, "warmup_steps": 1, "lr": 0.02}}


def fixture_run(out: str | Path, *, routed: bool = True, samples: int = 0, model: bool = False,
                seed: int = 0) -> Path:
    """A run directory for the explorer's tests, bench and screenshots: a synthetic index, and with
    ``model=True`` a tiny routed model (30 steps of the smoke world, seconds on a CPU), memorization
    events with their PNGs (training image, the model's generation for its caption) and a lineage
    result. A fixture: the index and the events are made up, not measured."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model:
        _tiny_model_run(out)
    write_index(synthetic_index(routed=routed, samples=samples, mem_samples=0 if samples else 40, seed=seed),
                out / "index.nc")
    return out


def _tiny_model_run(out: Path) -> None:
    from govlab.config import from_dict, load_config
    from govlab.data.cache import run_dataset
    from govlab.io import write_json
    from govlab.report import image_grid, save_png
    from govlab.routing import attach
    from govlab.train import Trainer

    cfg = from_dict(TINY, base=load_config("smoke"))
    dataset = run_dataset(cfg, progress=False)
    data, hooks = attach(cfg, dataset)
    trainer = Trainer(cfg, data, out, hooks=hooks, progress=False).fit()
    first = {}  # the first copy of each planted duplicate
    for i, r in enumerate(dataset.records):
        if r["duplicate_group"] >= 0:
            first.setdefault(r["duplicate_group"], i)
    rows = list(first.values())[:3]
    gens = trainer.model.generate([dataset.records[i]["caption"] for i in rows], steps=8)
    events = []
    for k, (row, gen) in enumerate(zip(rows, gens)):
        image, generation = f"memorization/flag_{row}_train.png", f"memorization/flag_{row}_gen.png"
        save_png(image_grid(dataset.images[row:row + 1], ncol=1), out / image)
        save_png(image_grid(gen[None], ncol=1), out / generation)
        events.append({"event": "mem_flag", "step": 10 * (k + 1), "sample": row, "score": 2.0 + k,
                       "threshold": 1.5, "action": "attenuate", "image": image, "generation": generation})
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rng = np.random.default_rng(0)
    bases = ["base_a", "base_b", "base_c"]
    votes = [{"prompt": f"a red circle center, by artist {i}",
              "distances": {b: float(rng.uniform(0.2, 1.0)) * (0.3 if b == "base_b" else 1.0) for b in bases},
              "threshold": 0.4, "vote": "base_b"} for i in range(4)]
    write_json(out / "lineage.json", {"target": str(out), "pool": "pool", "k": 8, "decision": "fine-tuned",
                                      "base": "base_b", "method": "gaussian", "tau": -1.64, "votes": votes,
                                      "threshold": 0.4})
