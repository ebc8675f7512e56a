"""TracIn (Pruthi et al. 2020) through ``captum.influence.TracInCP`` on the per-example diffusion loss.

captum calls ``model(*batch[:-1])`` and ``loss_fn(out, batch[-1])``: the model is wrapped so that it
returns the predicted noise for ``(x0, tokens, noise, timesteps)`` and the batch carries the noise
again as the label. With fixed noises and timesteps per example the scores are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from captum.influence import TracInCP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from govlab.attribution.probe import Probe
from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage


class Denoiser(nn.Module):
    """``TextToImage`` as captum needs it: inputs -> a tensor (the predicted noise)."""

    def __init__(self, model: TextToImage, *, input_grad: bool = False):
        super().__init__()
        self.model, self.input_grad = model, input_grad

    def forward(self, x0, tokens, noise, timesteps):
        m = self.model
        noisy = m.noise_scheduler.add_noise(x0, noise, timesteps)
        if self.input_grad:  # captum's per-batch trick hooks each layer's input: conv_in's must require grad
            noisy = noisy.requires_grad_(True)
        return m.predict_noise(noisy, timesteps, m.text(tokens))


class PerSampleMSE(nn.Module):
    """Per-example epsilon MSE (the training loss); ``reduction`` is what captum checks."""

    def __init__(self, reduction: str):
        super().__init__()
        self.reduction = reduction

    def forward(self, pred, target):
        loss = (pred - target).pow(2).flatten(1).mean(1)
        return loss if self.reduction == "none" else loss.sum()


def _contiguous_grads(model: nn.Module) -> list:
    """Per-sample gradients of conv weights can come back channels_last on CPU, and captum ``.view``s
    them: make every parameter gradient contiguous."""
    return [p.register_hook(lambda g: g.contiguous()) for p in model.parameters() if p.requires_grad]


TIMESTEP_LAYER = "time_embedding.linear_1"  # its input is built from the integer timestep: no grad to hook


def sample_wise_layers(model: nn.Module) -> list[str]:
    """Layers captum's per-batch trick covers: Linear and Conv2d modules (not the functional slot banks,
    the caption encoder's embedding, nor the layer that takes the timestep)."""
    return [n for n, m in model.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) and not n.endswith(TIMESTEP_LAYER)]


def tracin_scores(model: TextToImage, checkpoints: list[str | Path], lr: float, train: Probe, test: Probe, *,
                  sample_wise: bool = True, batch_size: int = 32) -> torch.Tensor:
    """TracInCP scores, shape ``(len(test), len(train))``: the sum over checkpoints of
    ``lr * grad loss(train) . grad loss(test)``, averaged over each test image's draws and summed over
    each training image's draws; positive = the training image lowers the test image's loss.

    ``sample_wise=True`` uses captum's per-batch trick (much faster; Linear/Conv2d layers only, so not
    the routing slots, which are functional); ``False`` takes one backward per example over every
    parameter."""
    if not checkpoints:
        raise GovlabError("TracIn needs at least one checkpoint (the run keeps them in checkpoints/)")
    net = Denoiser(model, input_grad=sample_wise)
    hooks = _contiguous_grads(net)

    def load(net: Denoiser, path: str) -> float:
        net.model.load_state_dict(TextToImage.load(path).state_dict())
        return lr

    x0, tokens, noise, t = train.flat()
    loader = DataLoader(TensorDataset(x0, tokens, noise, t, noise), batch_size=batch_size, shuffle=False)
    reduction = "sum" if sample_wise else "none"
    tracin = TracInCP(net, loader, [str(c) for c in checkpoints], checkpoints_load_func=load,
                      layers=sample_wise_layers(net) if sample_wise else None,
                      loss_fn=PerSampleMSE(reduction), test_loss_fn=PerSampleMSE(reduction),
                      batch_size=batch_size, sample_wise_grads_per_batch=sample_wise)
    was_training, state = model.training, {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    try:
        tx0, ttok, tnoise, tt = test.flat()
        scores = tracin.influence((tx0, ttok, tnoise, tt, tnoise)).detach().double()
    finally:
        for h in hooks:
            h.remove()
        model.load_state_dict(state)
        model.train(was_training)
    return scores.view(len(test), test.k, len(train), train.k).mean(1).sum(-1)
