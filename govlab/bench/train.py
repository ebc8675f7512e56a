"""``govlab bench train``: the govlab loop against a minimal plain diffusers-style loop."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from torch.nn import functional as F

from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.train import Trainer


def plain_step(model, opt, images, tokens, rng, batch_size):
    """What a minimal hand-written diffusers training step does, for comparison (the batch drawn on
    the CPU, as govlab's loop does, and moved to the model's device)."""
    idx = torch.randint(0, len(images), (batch_size,), generator=rng).to(images.device)
    noise = torch.randn(batch_size, *images.shape[1:], generator=rng).to(images.device)
    t = torch.randint(0, 1000, (batch_size,), generator=rng).to(images.device)
    x0 = images[idx]
    noisy = model.noise_scheduler.add_noise(x0, noise, t)
    pred = model.unet(noisy, t, encoder_hidden_states=model.text(tokens[idx])).sample
    loss = F.mse_loss(pred, noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def sync() -> None:
    """Wait for the work queued on every GPU (nothing to wait for on a CPU)."""
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        torch.cuda.synchronize(i)


def timings(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each callable per round, run alternately so drift hits all of them alike."""
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            sync()  # work queued on a GPU is charged to the call that queued it
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return times


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, run alternately (see ``timings``)."""
    return {k: statistics.median(v) for k, v in timings(fns, repeats, warmup).items()}


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num``'s time over ``den``'s time in the same round: a slowdown of the
    whole machine during one round cancels out instead of landing on one side."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def on_device(cfg, device: str | None):
    """``cfg`` training on ``device`` (``cpu``, ``cuda``, ``cuda:N``; None: the config's own)."""
    return cfg if device is None else from_dict({"train": {"device": device}}, base=cfg)


def bench_train(*, quick: bool = False, device: str | None = None, preset: str | None = None) -> dict:
    """Seconds per step of govlab's loop (no hooks) and of a plain loop, same model and batch, on
    the ``demo`` preset (batch 32 with ``quick``, else 64) or ``preset`` as it is."""
    cfg = load_config(preset or "demo")
    if preset is None:
        cfg = from_dict({"train": {"batch_size": 32 if quick else 64}}, base=cfg)
    cfg = on_device(cfg, device)
    dataset = run_dataset(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, dataset, tmp, progress=False)
        model = trainer.model
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        rng = torch.Generator().manual_seed(0)
        times = timings({
            "govlab": lambda: trainer.train_step(trainer.make_context()),
            "plain": lambda: plain_step(model, opt, trainer.images, trainer.tokens, rng, cfg.train.batch_size),
        }, repeats=16 if quick else 40)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": round(med["govlab"], 4), "plain_step_s": round(med["plain"], 4),
            "ratio": round(paired_ratio(times, "govlab", "plain"), 4), "batch_size": cfg.train.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "unet_parameters": sum(p.numel() for p in model.unet.parameters()), "image_size": cfg.model.image_size, "preset": preset or "demo", "device": cfg.train.device, "quick": quick}
