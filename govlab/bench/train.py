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
    """What a minimal hand-written diffusers training step does, for comparison."""
    idx = torch.randint(0, len(images), (batch_size,), generator=rng)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=rng)
    t = torch.randint(0, 1000, (batch_size,), generator=rng)
    noisy = model.noise_scheduler.add_noise(x0, noise, t)
    pred = model.unet(noisy, t, encoder_hidden_states=model.text(tokens[idx])).sample
    loss = F.mse_loss(pred, noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def timings(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each callable per round, run alternately so drift hits all of them alike."""
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
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


def bench_train(*, quick: bool = False) -> dict:
    """Seconds per step of govlab's loop (no hooks) and of a plain loop, same model and batch."""
    cfg = load_config("demo")
    cfg = from_dict({"train": {"batch_size": 32 if quick else 64}}, base=cfg)
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
            "image_size": cfg.model.image_size, "quick": quick}
