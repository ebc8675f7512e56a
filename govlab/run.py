"""A whole run: data, governed training, evaluation, report, in the run directory the README describes."""

from __future__ import annotations

from pathlib import Path

from govlab.config import RunConfig
from govlab.data.cache import run_dataset
from govlab.eval.classifiers import load_evaluator
from govlab.eval.scores import score_model
from govlab.compliance.credentials import sign_samples
from govlab.compliance.ingest import attach as attach_credentials
from govlab.hooks import Hook
from govlab.io import write_json
from govlab.memorization.monitor import attach as attach_monitor
from govlab.provenance.hook import attach as attach_provenance
from govlab.provenance.manifest import write_manifest
from govlab.report import save_sample_grids, write_report
from govlab.routing.hook import attach
from govlab.train import Trainer, clear_run, training_device


def train_run(cfg: RunConfig, out: str | Path, *, resume: bool = False, hooks: list[Hook] = (),
              progress: bool = True) -> dict:
    """Train, evaluate and report; returns a summary with the run directory and scores."""
    out = Path(out)
    training_device(cfg.train.device)  # a device torch cannot reach is refused before anything is written
    dataset = run_dataset(cfg, progress=progress)
    sources = dataset.sources  # scored on every source, also those rejected at ingestion
    dataset, credential_hooks = attach_credentials(dataset)  # C2PA/CAWG notAllowed images: rejected
    dataset, routing_hooks = attach(cfg, dataset)
    dataset, provenance_hooks = attach_provenance(cfg, dataset, sources)  # these may refuse: before clearing
    monitor_hooks = attach_monitor(cfg, dataset)
    trainer = Trainer(cfg, dataset, out, hooks=[*credential_hooks, *routing_hooks, *monitor_hooks, *provenance_hooks, *hooks],
                      progress=progress)  # writes nothing yet, and may refuse (batch size, routing bands)
    if not resume:
        clear_run(out)
    trainer.fit(resume=resume)
    evaluator, acc = load_evaluator(cfg.model.image_size, progress=progress)
    e = cfg.eval
    scores, images, probes = score_model(trainer.model, sources, per_prompt=e.per_prompt,
                                         steps=e.steps, guidance=e.guidance, seed=cfg.train.seed)
    grids = save_sample_grids(images, probes, out)
    sign_samples(out, grids, probes=probes, seed=cfg.train.seed, steps=e.steps, guidance=e.guidance)
    write_json(out / "scores.json", {"scores": scores, "evaluator_accuracy": acc})
    report = write_report(out, cfg=cfg, scores=scores, evaluator_acc=acc,
                          train_seconds=trainer.seconds, n_records=len(dataset), grids=grids)
    write_manifest(out)  # last: the sha256 of every artifact
    return {"run": str(out), "report": str(report), "steps": trainer.step,
            "train_seconds": round(trainer.seconds, 2), **{k: v for k, v in scores.items()
                                                           if not isinstance(v, dict)}}

