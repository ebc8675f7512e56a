"""A whole run: data, governed training, evaluation, report, in the run directory the README describes.

What a run is scored against depends on its data: the embedded world (or a folder holding the world's
ground truth) gets the evaluators' scores; any other folder is measured on its own images
(``govlab.eval.own_data``). Either way, a failure after training keeps the run: the weights, the
checkpoint, a report saying what could not be made and why, and the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from govlab import distributed
from govlab.config import RunConfig
from govlab.data.cache import run_dataset
from govlab.data.dataset import check_trainable
from govlab.errors import GovlabError
from govlab.eval.loss import LossCurve, loss_figures, loss_plot
from govlab.eval.own_data import OWN_DATA, WORLD, score_data, scored_against
from govlab.compliance.credentials import sign_samples
from govlab.compliance.ingest import attach as attach_credentials
from govlab.hooks import Hook
from govlab.io import write_json, write_text
from govlab.memorization.monitor import attach as attach_monitor
from govlab.provenance.hook import attach as attach_provenance
from govlab.provenance.manifest import write_manifest
from govlab.report import save_png, save_sample_grids, write_report
from govlab.routing.hook import attach
from govlab.train import CHECKPOINT, Trainer, clear_run, training_device


def _saved_hooks(out: Path) -> int | None:
    """How many hook states the run's checkpoint holds (its metadata only), or None."""
    try:
        with safe_open(str(out / CHECKPOINT), "pt") as f:
            skeleton = json.loads((f.metadata() or {})["govlab_state"])
        return len(dict(skeleton["__dict__"])["hooks"])
    except Exception:  # no or no readable checkpoint: ``fit`` names the problem
        return None


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0]


def index_figures(out: Path) -> dict:
    """Each source's share of the squared gradient norm the provenance index recorded (all bands)."""
    from govlab.provenance.index import ProvenanceIndex

    s = ProvenanceIndex.open(out).summary()
    totals = {src: sum(bands.values()) for src, bands in s["grad_norm_sq"].items()}
    grand = sum(totals.values())
    return {"index_checkpoints": len(s["checkpoints"]),
            "index_grad_share": {src: round(v / grand, 4) if grand else 0.0 for src, v in totals.items()}}


def train_run(cfg: RunConfig, out: str | Path, *, resume: bool = False, hooks: list[Hook] = (),
              progress: bool = True) -> dict:
    """Train, evaluate and report; returns a summary with the run directory and scores. An error after
    training leaves a complete, sealed run and is raised as one GovlabError naming what failed."""
    out = Path(out)
    training_device(cfg.train.device)  # a device torch cannot reach is refused before anything is written
    # under torchrun: join the ranks; a rank count that does not divide the batch is refused here
    world = distributed.init_from_env(cfg.train.device)
    distributed.check_batch(cfg.train.batch_size, world)
    dataset = run_dataset(cfg, progress=progress)
    check_trainable(dataset)
    against = scored_against(cfg, dataset)
    everything = dataset  # scored on every source, also those rejected at ingestion
    sources = dataset.sources
    dataset, credential_hooks = attach_credentials(dataset)  # C2PA/CAWG notAllowed images: rejected
    dataset, routing_hooks = attach(cfg, dataset)
    dataset, provenance_hooks = attach_provenance(cfg, dataset, sources)  # these may refuse: before clearing
    monitor_hooks = attach_monitor(cfg, dataset)
    governance = [*credential_hooks, *routing_hooks, *monitor_hooks, *provenance_hooks, *hooks]
    loss = LossCurve()
    # a run checkpointed before the loss was recorded resumes without it
    recorder = [] if resume and _saved_hooks(out) == len(governance) else [loss]
    trainer = Trainer(cfg, dataset, out, hooks=[*governance, *recorder],
                      progress=progress)  # writes nothing yet, and may refuse (batch size, routing bands)
    if not resume and world.main:
        clear_run(out)
    distributed.barrier()
    trainer.fit(resume=resume)
    if not world.main:  # rank 0 evaluates, reports and seals the run
        return {"run": str(out), "rank": world.rank, "world_size": world.size, "steps": trainer.step}

    failed: dict[str, str] = {}  # what could not be made -> why
    scores, acc, grids, probes = {}, None, [], []
    e = cfg.eval
    try:
        if against == WORLD:
            from govlab.eval.classifiers import load_evaluator

            _, acc = load_evaluator(cfg.model.image_size, version=cfg.world.version, progress=progress)
        scores, images, probes = score_data(trainer.model, cfg, everything, sources=sources)
        grids = save_sample_grids(images, probes, out)
        sign_samples(out, grids, probes=probes, seed=cfg.train.seed, steps=e.steps, guidance=e.guidance)
    except Exception as err:
        failed["scores and samples"] = _why(err)
    figures = loss_figures(loss.losses, seed=cfg.train.seed) if recorder else {}
    try:
        if recorder and len(loss.losses) > 1:
            save_png(loss_plot(loss.losses), out / "loss.png")
    except Exception as err:
        failed["loss curve"] = _why(err)
    if cfg.provenance.enabled:
        try:
            figures |= index_figures(out)
        except Exception as err:
            failed["index figures"] = _why(err)
    normalisation = everything.normalisation.get("text")
    try:
        write_json(out / "scores.json", {"scored_against": against, "scores": scores, "evaluator_accuracy": acc,
                                         "figures": figures, "not_scored": failed,
                                         "image_normalisation": everything.normalisation})
        report = write_report(out, cfg=cfg, scores=scores, evaluator_acc=acc, train_seconds=trainer.seconds,
                              n_records=len(dataset), grids=grids, scored_against=against, figures=figures,
                              failed=failed, probes=probes, normalisation=normalisation,
                              loss_png=(out / "loss.png").is_file())
    except Exception as err:  # the report itself failed: a plain one that says so
        failed["report"] = _why(err)
        report = out / "report.md"
        write_text(report, f"# govlab run `{cfg.name}`\n\nTrained {trainer.step} steps; the weights are "
                   "`model.safetensors`. Not made:\n\n" + "".join(f"- {k}: {v}\n" for k, v in failed.items()))
    write_manifest(out)  # last: the sha256 of every artifact
    if failed:
        why = next(iter(failed.values()))
        raise GovlabError(f"{out}: trained {trainer.step} steps and saved (weights, checkpoint, report.md, "
                          f"manifest.json), but {', '.join(failed)} could not be made ({why}); report.md "
                          "says what and why")
    result = {"run": str(out), "report": str(report), "steps": trainer.step,
              "train_seconds": round(trainer.seconds, 2), "scored_against": against}
    if against == OWN_DATA:
        result |= {"records": len(dataset), "sources": sources, "image_normalisation": normalisation}
    return {**result, **{k: v for k, v in scores.items() if not isinstance(v, dict)},
            **figures}
