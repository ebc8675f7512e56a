"""Ground truth by retraining: the same training loop on the dataset filtered to a subset of sources,
each run cached under the cache dir by (config hash, kept sources). A list of retrainings is a sweep
(``govlab.sweep``): serial, or on Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

from govlab.config import RunConfig
from govlab.data.cache import build_once, cache_dir
from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.io import sha256_json
from govlab.models.diffusion import TextToImage
from govlab.routing.hook import attach
from govlab.sweep import Job, Sweep
from govlab.train import Trainer, build_model


def retrain_key(cfg: RunConfig, sources: list[str]) -> str:
    return sha256_json({"config": cfg.hash(), "sources": sorted(sources)})[:16]


def retrain_dir(cfg: RunConfig, sources: list[str]) -> Path:
    """Where the run trained on ``sources`` lives (its ``model.safetensors`` once finished)."""
    return cache_dir("attribution", "retrain") / retrain_key(cfg, sources)


def retrain(cfg: RunConfig, dataset: Dataset, sources: list[str]) -> Path:
    """Train ``cfg`` on the records of ``sources`` only, or reuse the cached run; returns its directory.

    The model starts from the same initial weights and caption vocabulary as a run on the whole
    dataset, so runs differ only by their data."""
    unknown = sorted(set(sources) - set(dataset.sources))
    if unknown:
        raise GovlabError(f"retrain: unknown source {unknown[0]!r} (known: {', '.join(dataset.sources)})")
    out = retrain_dir(cfg, sources)

    def build():
        shutil.rmtree(out, ignore_errors=True)
        keep = [i for i, r in enumerate(dataset.records) if r["source_id"] in set(sources)]
        data, hooks = attach(cfg, dataset.subset(keep))
        Trainer(cfg, data, out, hooks=hooks, model=build_model(cfg, dataset), progress=False).fit()

    build_once(out, (out / "model.safetensors").is_file, build)
    return out


def retrain_job(cfg: RunConfig, dataset: Dataset, sources: list[str]) -> Job:
    """The retraining on ``sources`` as a sweep job (its result: the run directory)."""
    out = retrain_dir(cfg, sources)
    return Job(retrain, (cfg, dataset, sorted(sources)),
               {"retrain": cfg.name, "config": cfg.hash(), "sources": sorted(sources)},
               cached=(out / "model.safetensors").is_file)


def retrain_all(cfg: RunConfig, dataset: Dataset, subsets: list[list[str]], *, desc: str = "retrain",
                progress: bool = True, sweep: Sweep | None = None) -> list[TextToImage]:
    """The model trained on each subset: cached runs are loaded, the others trained by ``sweep``
    (default ``Sweep()``: on local Ray where it is installed, with every core)."""
    runs = (sweep or Sweep()).run([retrain_job(cfg, dataset, s) for s in subsets], desc=desc, progress=progress)
    return [TextToImage.load(run / "model.safetensors") for run in runs]
