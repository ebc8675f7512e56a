"""The extraction audit of a trained run: loads the run, its model and data, scores with
``govlab.memorization.audit`` and writes ``RUN/memorization/audit.json`` and its grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from govlab.config import from_dict, read_yaml
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.eval.classifiers import load_evaluator
from govlab.eval.own_data import WORLD, scored_against
from govlab.io import write_json
from govlab.memorization.audit import audit, has_groups, noise_magnitude_check
from govlab.models.diffusion import TextToImage
from govlab.provenance.manifest import require_intact, write_manifest
from govlab.report import image_grid, save_png

AUDIT_DIR = "memorization"
OUTPUTS = (f"{AUDIT_DIR}/audit.json", f"{AUDIT_DIR}/audit_grid.png", f"{AUDIT_DIR}/extracted.png")


def audit_run(run: str | Path, *, sample: int | None = None, n: int = 4, steps: int | None = None,
              seed: int = 0, progress: bool = True) -> dict:
    """Audit a trained run; writes ``RUN/memorization/audit.json`` and ``audit_grid.png`` and re-seals
    the run's manifest, refusing a sealed run whose files no longer match it (as ``attest`` does)."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise GovlabError(f"{run}: not a govlab run directory (no config.yaml)")
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    if cfg.data and not (Path(cfg.data) / "metadata.jsonl").is_file():
        raise GovlabError(f"{run}: the audit needs the training data, but the run's data folder "
                          f"{cfg.data} (config.yaml 'data') is not accessible")
    if sample is not None and sample < 1:
        raise GovlabError(f"--sample must be >= 1, got {sample}")
    if steps is not None and steps < 1:
        raise GovlabError(f"--steps must be >= 1, got {steps}")
    if n < 1:
        raise GovlabError(f"-n must be >= 1, got {n}")
    sealed = require_intact(run, OUTPUTS, "auditing")
    model = TextToImage.load(run / "model.safetensors")
    dataset = run_dataset(cfg, progress=progress)
    against = scored_against(cfg, dataset)
    rows = None
    if sample is not None:
        rng = np.random.default_rng(seed)
        firsts = list({r["caption"]: i for i, r in reversed(list(enumerate(dataset.records)))}.values())
        rows = sorted(rng.choice(firsts, size=min(sample, len(firsts)), replace=False).tolist())
    # the world encoder's feature space means something on the world only
    evaluator = (load_evaluator(cfg.model.image_size, version=cfg.world.version, progress=progress)[0]
                 if against == WORLD else None)
    result, pairs = audit(model, dataset, rows=rows, n=n, steps=cfg.eval.steps if steps is None else steps,
                          guidance=cfg.eval.guidance, seed=seed, evaluator=evaluator, progress=progress)
    captions = [it["caption"] for it in result["items"]]
    n_planted = sum(it["planted"] for it in result["items"])
    if has_groups(dataset.records) and 0 < n_planted < len(captions):
        m = cfg.memorization
        result.update(noise_magnitude_check(model, dataset, captions, timesteps=m.timesteps, noises=m.noises,
                                            guidance=cfg.eval.guidance, seed=seed,
                                            reproduced=[it["pixel"] for it in result["items"]]))
    path, grid, extracted = (run / f for f in OUTPUTS)
    save_png(image_grid(pairs, ncol=16), grid)
    shown = [p for it in result["reproduced"] for p in (2 * it["grid_pair"], 2 * it["grid_pair"] + 1)]
    if shown:  # each extracted training image (left) beside the generation that reproduces it
        save_png(image_grid(pairs[shown], ncol=min(16, len(shown))), extracted)
    else:
        extracted.unlink(missing_ok=True)  # from an earlier audit
    result = {"run": str(run), "scored_against": against, **result, "grid": str(grid),
              "extracted_grid": str(extracted) if shown else None, "json": str(path)}
    if against != WORLD:
        result["not_measured"] = ("feature space: the world encoder's features describe the world's "
                                  "images only" + ("" if has_groups(dataset.records) else
                                                   "; planted rates: no record names a duplicate_group"))
    write_json(path, result)
    if sealed:
        write_manifest(run)
    return result
