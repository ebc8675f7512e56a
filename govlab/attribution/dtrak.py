"""D-TRAK (Zheng et al. 2023) through dattri's ``TRAKAttributor``: TRAK with the gradient of
``mean(eps_theta^2)`` (not the training loss) as the feature of both training and test images,
averaged over K fixed (noise, timestep) draws, randomly projected, ensembled over checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from dattri.algorithm import TRAKAttributor
from dattri.task import AttributionTask
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from govlab.attribution.probe import Probe
from govlab.attribution.tracin import Denoiser
from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage


def _loader(probe: Probe, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(probe.x0, probe.tokens, probe.noise, probe.timesteps),
                      batch_size=batch_size, shuffle=False)


def dtrak_scores(model: TextToImage, checkpoints: list[str | Path], train: Probe, test: Probe, *,
                 proj_dim: int = 512, seed: int = 0, regularization: float = 0.0,
                 batch_size: int = 16) -> torch.Tensor:
    """D-TRAK scores, shape ``(len(test), len(train))``; each example's feature averages its K draws
    (D-TRAK's timesteps per example). Per checkpoint, with ``X`` the projected training features
    (gradients over every trained parameter, divided by sqrt(#parameters) as dattri does) and ``x``
    a test feature: ``x (X^T X + regularization I)^-1 X^T``, averaged over checkpoints. ``proj_dim``
    must be below the number of training rows unless ``regularization`` > 0 (else X^T X is singular)."""
    if not checkpoints:
        raise GovlabError("D-TRAK needs at least one checkpoint (the run keeps them in checkpoints/)")
    if proj_dim >= len(train) and regularization <= 0:
        raise GovlabError(f"D-TRAK: proj_dim={proj_dim} is not below the {len(train)} training rows and "
                          "regularization is 0, so the projected kernel X^T X is singular; use a smaller "
                          "proj_dim or a positive regularization")
    net = Denoiser(model)

    def square(params, data):  # D-TRAK's output function, one example: its K draws as a batch
        x0, tokens, noise, t = data
        k = noise.shape[0]
        pred = functional_call(net, params, (x0.expand(k, *x0.shape), tokens.expand(k, *tokens.shape), noise, t))
        return pred.pow(2).mean()

    def load(net, path):
        net.model.load_state_dict(TextToImage.load(path).state_dict())
        return net

    was_training, state = model.training, {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    try:
        task = AttributionTask(loss_func=square, model=net, checkpoints=[str(c) for c in checkpoints],
                               checkpoints_load_func=load)
        attributor = TRAKAttributor(task=task, correct_probability_func=lambda params, data: torch.zeros(()),
                                    projector_kwargs={"proj_dim": proj_dim, "proj_seed": seed, "device": "cpu"},
                                    regularization=regularization, device="cpu")
        attributor.cache(_loader(train, batch_size))
        scores = attributor.attribute(_loader(test, batch_size))  # (n_train, n_test)
    finally:
        model.load_state_dict(state)
        model.train(was_training)
    return scores.detach().double().T
