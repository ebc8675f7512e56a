"""TracIn and D-TRAK on a trained run, registered as methods of ``govlab attribute`` (beside
the structural method of ``govlab.attribution.structural``, with its signature)."""

from __future__ import annotations

from pathlib import Path

from govlab.attribution.aggregate import per_source, ranking
from govlab.attribution.dtrak import dtrak_scores
from govlab.attribution.probe import prompt_probe, train_probe
from govlab.attribution.structural import METHODS
from govlab.attribution.tracin import tracin_scores
from govlab.errors import GovlabError
from govlab.train import CHECKPOINT_DIR


def _load(run: Path):
    from govlab.config import from_dict, read_yaml
    from govlab.data.cache import run_dataset
    from govlab.models.diffusion import TextToImage
    from govlab.routing.hook import attach

    run = Path(run)
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    if cfg.model.backbone != "unet" or cfg.model.latent:
        kind = f"{cfg.model.backbone}{' on VAE latents' if cfg.model.latent else ''}"
        raise GovlabError(f"{run / 'config.yaml'}: TracIn and D-TRAK score the pixel-space UNet's noise-prediction "
                          f"loss; this run's model is {kind} (model.backbone, model.latent); use --method "
                          "structural (the provenance index), which any backbone has")
    checkpoints = sorted((run / CHECKPOINT_DIR).glob("step_*.safetensors"))
    if not checkpoints:
        raise GovlabError(f"{run / CHECKPOINT_DIR}: no checkpoint weights (step_*.safetensors); "
                          "retrain the run with this govlab version")
    dataset, _ = attach(cfg, run_dataset(cfg, progress=False))
    return cfg, dataset, TextToImage.load(run / "model.safetensors"), checkpoints


def tracin(run: str | Path, prompt: str, *, n: int = 4, steps: int = 8, seed: int = 0) -> list[dict]:
    """captum TracInCP over the run's checkpoints and every trained parameter, summed per source; ranked
    best first."""
    cfg, dataset, model, checkpoints = _load(Path(run))
    test = prompt_probe(model, prompt, n_images=n, k=4, seed=seed, steps=steps)
    scores = tracin_scores(model, checkpoints, cfg.train.lr, train_probe(model, dataset, seed=seed), test,
                           sample_wise=False)  # every trained parameter, the slot banks included
    return ranking(per_source(scores.mean(0), dataset.records))


def dtrak(run: str | Path, prompt: str, *, n: int = 4, steps: int = 8, seed: int = 0) -> list[dict]:
    """D-TRAK (dattri's TRAK with the squared-output feature) over the run's checkpoints, per source."""
    _, dataset, model, checkpoints = _load(Path(run))
    test = prompt_probe(model, prompt, n_images=n, k=4, seed=seed, steps=steps)
    scores = dtrak_scores(model, checkpoints, train_probe(model, dataset, k=4, seed=seed), test, seed=seed,
                          proj_dim=min(512, len(dataset) // 2))  # below the training rows: well-posed
    return ranking(per_source(scores.mean(0), dataset.records))


METHODS.update({"tracin": tracin, "dtrak": dtrak})
