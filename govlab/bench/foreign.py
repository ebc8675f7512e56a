"""``govlab bench foreign``: governance dropped into a diffusers + accelerate loop.

On tiny random-weight pipelines (``govlab.testing``: a latent UNet with DDPM, an SD3-style MMDiT
with rectified flow) and a tiny imagefolder of the world, it measures: the governed example's
changed lines against the plain one; routing against a per-sample reference on the foreign
denoiser; the index's per-source figures against one autograd backward per source; the governed
step's cost over a plain one (same process, interleaved); an interrupted and resumed governed run's
index.nc against an uninterrupted one; both memorization detectors scored on the latent models.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLAIN, GOVERNED = EXAMPLES / "train_text_to_image.py", EXAMPLES / "train_text_to_image_governed.py"
BACKBONES = ("unet", "sd3")


def changed_lines(plain: Path = PLAIN, governed: Path = GOVERNED) -> int:
    """Lines the governed script adds or changes (``diff -U0 plain governed | grep -c '^+[^+]'``)."""
    diff = difflib.unified_diff(plain.read_text().splitlines(), governed.read_text().splitlines(), n=0, lineterm="")
    return sum(1 for line in diff if line.startswith("+") and not line.startswith("++"))


def load(pipeline: Path):
    from diffusers import (AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(pipeline, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(pipeline, subfolder="vae")
    if (pipeline / "transformer").is_dir():
        den = SD3Transformer2DModel.from_pretrained(pipeline, subfolder="transformer")
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(pipeline, subfolder="scheduler")
    else:
        den = UNet2DConditionModel.from_pretrained(pipeline, subfolder="unet")
        sched = DDPMScheduler.from_pretrained(pipeline, subfolder="scheduler")
    return den, text, tok, vae, sched


def batch_inputs(den, text, tok, records, rows, seed=0):
    """Latent-shaped inputs, timesteps and conditioning of ``rows`` (a fixed draw)."""
    from govlab.api import DiffusersDenoiser

    d = DiffusersDenoiser(den, text, tok, None)
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    x = torch.randn(b, *d.shape, generator=g)
    target = torch.randn(b, *d.shape, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    cond = d.encode([records[r]["caption"] for r in rows])
    return d, x, t, cond, target


def per_sample(d, x, t, cond, target):
    return F.mse_loss(d.predict(x, t, cond), target, reduction="none").flatten(1).mean(1)


def _rows(cond, perm):
    return tuple(c[perm] for c in cond) if isinstance(cond, tuple) else cond[perm]


def routing_exact(pipeline: Path, data, rows) -> float:
    """Max relative error of routed gradients against each sample's own gradient summed into the
    bands it may change (a separate forward and backward per sample, routing off)."""
    from govlab.api import Governance, GovernanceConfig

    den, text, tok, vae, sched = load(pipeline)
    gov = Governance(den, data, tempfile.mkdtemp(), config=GovernanceConfig(provenance=None, memorization=None))
    batch = gov.begin({"row": torch.tensor(rows)})
    order = batch["row"].tolist()
    d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, order)
    params = dict(gov.model.named_parameters())
    gov.loss(per_sample(d, x, t, cond, target)).backward()
    routed = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
    gov.router.clear()
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for i, r in enumerate(order):
        gov.model.zero_grad(set_to_none=True)
        if gov.slots is not None:  # the sample's own slots on, as in the routed batch
            gov.slots.set([gov.records[r]])
        (per_sample(d, x[i:i + 1], t[i:i + 1], _rows(cond, slice(i, i + 1)), target[i:i + 1]) / len(order)).backward()
        allowed = gov.router.allowed(gov.records[r]["categories"], gov.records[r]["source_id"]) | (
            set() if any(c in gov.cfg.routing.sequestered for c in gov.records[r]["categories"]) else {"trunk"})
        for n, p in params.items():
            if p.grad is not None and gov.router.band_of[n] in allowed:
                ref[n] += p.grad
    scale = max(float(v.abs().max()) for v in ref.values())
    return max(float((routed[n] - ref[n]).abs().max()) for n in params) / scale


def index_exact(pipeline: Path, data, rows, routed: bool = True) -> float:
    """Max relative error of the index's per-source ``grad_norm_sq`` after one step (routed or not)
    against one autograd backward per source of that source's part of the (routed) loss, at the
    parameters the step's own backward saw."""
    from govlab.api import Governance, GovernanceConfig

    den, text, tok, vae, sched = load(pipeline)
    cfg = GovernanceConfig(memorization=None) if routed else GovernanceConfig(memorization=None, routing=None)
    gov = Governance(den, data, tempfile.mkdtemp(), config=cfg)
    opt = gov.optimizer(lr=1e-4)
    batch = gov.begin({"row": torch.tensor(rows)})
    order = batch["row"].tolist()
    d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, order)
    before = [p.detach().clone() for p in gov.model.parameters()]
    gov.loss(per_sample(d, x, t, cond, target)).backward()
    opt.step()
    got = gov.writer.acc["grad_norm_sq"].clone()
    with torch.no_grad():  # the reference gradients are those of the step: at the parameters before it
        for p, b in zip(gov.model.parameters(), before):
            p.copy_(b)
    w = gov.writer
    names = dict((id(p), n) for n, p in gov.model.named_parameters())
    want = torch.zeros_like(got)
    sources = [gov.records[r]["source_id"] for r in order]
    for s in sorted(set(sources)):
        idx = [i for i, v in enumerate(sources) if v == s]
        gov.model.zero_grad(set_to_none=True)
        if gov.router is not None:
            gov.router.route(table=gov.table[torch.tensor(order)])
        if gov.slots is not None:
            gov.slots.set([gov.records[r] for r in order])
        loss = per_sample(d, x, t, cond, target)
        (loss[idx].sum() / len(order)).backward()
        if gov.router is not None:
            gov.router.clear()
        g = w.names.index(s)
        for p in w.params:
            if p.grad is not None:
                band = gov.router.band_of[names[id(p)]] if gov.router is not None else "trunk"
                want[g, w.bands.index(band)] += float(p.grad.double().pow(2).sum())
    return float((got - want).abs().max() / want.abs().max())


def slot_removal(pipeline: Path, data, rows, steps: int = 3) -> dict:
    """Per-source slots on the text encoder's output: after a few governed steps (a large learning
    rate, so the slots move), one source's slot is zeroed (``Governance.scale_slot``); the
    denoiser's outputs of that source's samples change, every other sample's stay bit for bit."""
    from govlab.api import Governance, GovernanceConfig

    den, text, tok, vae, sched = load(pipeline)
    gov = Governance(den, data, tempfile.mkdtemp(), config=GovernanceConfig(provenance=None, memorization=None))
    opt = gov.optimizer(lr=3e-2)
    for step in range(steps):
        batch = gov.begin({"row": torch.tensor(rows)})
        d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, batch["row"].tolist(), seed=step)
        gov.loss(per_sample(d, x, t, cond, target)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    records = [gov.records[r] for r in rows]
    d, x, t, cond, _ = batch_inputs(den, text, tok, gov.records, rows, seed=99)

    def outputs():
        gov.slots.set(records)
        with torch.no_grad():
            out = d.predict(x, t, cond)
        gov.slots.clear()
        return out

    before = outputs()
    with gov.slots.using():  # no slot on: the model every source shares
        plain = d.predict(x, t, cond).detach()
    source = next(r["source_id"] for r in records if r["source_id"] in gov.router.slot_sources)
    layers = gov.scale_slot(source, 0.0)
    after = outputs()
    own = torch.tensor([r["source_id"] == source for r in records])
    diff = (after - before).flatten(1).abs().amax(1)
    return {"slot_rank": gov.cfg.routing.slot_rank, "slots": len(gov.router.slot_sources), "source": source,
            "layers": layers, "own_changed": float(diff[own].min()), "others_changed": float(diff[~own].max()),
            "own_back_to_shared": float((after[own] - plain[own]).abs().max()),
            "ok": bool(diff[own].min() > 0 and diff[~own].max() == 0)}


def overhead(pipeline: Path, data, rows, reps: int = 6) -> float:
    """Median governed step time over the plain step (routing + exact index), interleaved."""
    from govlab.api import Governance, GovernanceConfig

    den, text, tok, vae, sched = load(pipeline)
    plain_den = copy.deepcopy(den)
    gov = Governance(den, data, tempfile.mkdtemp(), config=GovernanceConfig(memorization=None))
    gopt = gov.optimizer(lr=1e-4)
    popt = torch.optim.AdamW(plain_den.parameters(), lr=1e-4)
    _, x, t, cond, target = batch_inputs(den, text, tok, gov.records, rows)
    from govlab.api import DiffusersDenoiser

    dp, dg = DiffusersDenoiser(plain_den, text, tok, None), DiffusersDenoiser(den, text, tok, None)

    def plain():
        F.mse_loss(dp.predict(x, t, cond), target, reduction="none").mean().backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    def governed():
        b = gov.begin({"row": torch.tensor(rows)})
        perm = torch.argsort(torch.argsort(torch.tensor(rows)))  # any order: same cost
        del perm
        gov.loss(per_sample(dg, x, t, cond, target)).backward()
        gopt.step()
        gopt.zero_grad(set_to_none=True)
        return b

    times = {"plain": [], "governed": []}
    for i in range(reps + 1):
        for name, fn in (("plain", plain), ("governed", governed)):
            t0 = time.perf_counter()
            fn()
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return med["governed"] / med["plain"]


def overhead_by_mode(pipeline: Path, data, rows, rounds: int = 3, reps: int = 8) -> dict:
    """Governed step over a plain step on the foreign denoiser (same process, interleaved, ``rounds``
    rounds of ``reps`` steps each): routing alone (``routing``), routing + exact index (``exact``:
    medians) and routing + sampled index at its default rate after its exact first steps
    (``sampled``: ratio of summed times, its cost lying in its drawn steps). Each key lists the
    rounds' ratios."""
    import statistics

    from govlab.api import DiffusersDenoiser, Governance, GovernanceConfig
    from govlab.provenance.config import ProvenanceConfig

    den, text, tok, _, _ = load(pipeline)
    plain_den = copy.deepcopy(den)
    popt = torch.optim.AdamW(plain_den.parameters(), lr=1e-4)
    _, x, t, cond, target = batch_inputs(den, text, tok, [{"caption": r["caption"]} for r in data], rows)
    dp = DiffusersDenoiser(plain_den, text, tok, None)

    def plain():
        F.mse_loss(dp.predict(x, t, cond), target, reduction="none").mean().backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    steps = {"plain": plain}
    for name, prov in (("routing", None), ("exact", ProvenanceConfig(enabled=True, mode="exact")),
                       ("sampled", ProvenanceConfig(enabled=True, mode="sampled"))):
        d = copy.deepcopy(den)
        gov = Governance(d, data, tempfile.mkdtemp(), config=GovernanceConfig(memorization=None, provenance=prov))
        opt, dd = gov.optimizer(lr=1e-4), DiffusersDenoiser(d, text, tok, None)

        def step(gov=gov, opt=opt, dd=dd):
            gov.begin({"row": torch.tensor(rows)})
            gov.loss(per_sample(dd, x, t, cond, target)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[name] = step
        if prov is not None and prov.mode == "sampled":
            for _ in range(prov.exact_first):  # past the exact first steps
                step()
    for step in steps.values():
        step()
    out = {k: [] for k in steps if k != "plain"}
    for _ in range(rounds):
        times = {k: [] for k in steps}
        for _ in range(reps):
            for k, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t0)
        for k in out:
            ratio = (sum(times[k]) / sum(times["plain"]) if k == "sampled"
                     else statistics.median(times[k]) / statistics.median(times["plain"]))
            out[k].append(round(ratio, 3))
    return out


def run_script(script: Path, pipeline: Path, data: Path, out: Path, steps: int, every: int, resume: bool = False):
    cmd = [sys.executable, str(script), "--pretrained_model_name_or_path", str(pipeline), "--train_data_dir",
           str(data), "--output_dir", str(out), "--max_train_steps", str(steps), "--checkpointing_steps", str(every)]
    if resume:
        cmd += ["--resume_from_checkpoint", "latest"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{script.name} failed:\n{r.stderr[-3000:]}")


def resume_equal(pipeline: Path, data: Path, work: Path, steps: int = 4, every: int = 2) -> bool:
    """An uninterrupted governed run against one stopped at a checkpoint and resumed: equal index.nc."""
    import xarray as xr

    run_script(GOVERNED, pipeline, data, work / "full", steps, every)
    run_script(GOVERNED, pipeline, data, work / "cut", every, every)
    run_script(GOVERNED, pipeline, data, work / "cut", steps, every, resume=True)
    with xr.open_dataset(work / "full" / "index.nc") as a, xr.open_dataset(work / "cut" / "index.nc") as b:
        return bool(a.identical(b) or (a.checkpoint.values.tolist() == b.checkpoint.values.tolist()
                                       and all(a[k].equals(b[k]) for k in a.data_vars)))


def detectors_ok(pipeline: Path, data, rows) -> bool:
    """Both detectors score the latent model: finite noise magnitudes, regeneration scores in [0, 1]."""
    from govlab.api import DiffusersDenoiser, dataset_images, dataset_records
    from govlab.memorization.detectors import noise_magnitude, pixel_features, regeneration_scores, unique_images

    den, text, tok, vae, sched = load(pipeline)
    records = dataset_records(data)
    d = DiffusersDenoiser(den, text, tok, sched, vae)
    captions = [records[r]["caption"] for r in rows]
    noise = noise_magnitude(d, captions, noises=1)
    uniq, image_of = unique_images(dataset_images(data, vae.config.sample_size))
    regen = regeneration_scores(d, captions, image_of[rows], pixel_features(uniq), seeds=1, steps=2)
    return bool(torch.isfinite(noise).all() and (noise > 0).all() and torch.isfinite(regen).all()
                and ((regen >= 0) & (regen <= 1)).all())


def run(quick: bool = True, work: Path | None = None) -> dict:
    from datasets import load_dataset

    from govlab.testing import build_tiny_pipeline, write_tiny_imagefolder

    torch.manual_seed(0)
    work = Path(work or tempfile.mkdtemp(prefix="govlab-foreign-"))
    data_dir = work / "data"
    if not (data_dir / "metadata.jsonl").is_file():
        write_tiny_imagefolder(data_dir, 16)
    data = load_dataset("imagefolder", data_dir=str(data_dir), split="train")
    rows = list(range(8))
    out = {"changed_lines": changed_lines(), "backbones": list(BACKBONES), "quick": quick}
    routing, index, index_unrouted, ratio, resume, det, slots = [], [], [], [], [], [], []
    for b in BACKBONES:
        pipe = work / b
        if not (pipe / "model_index.json").is_file():
            build_tiny_pipeline(pipe, b)
        routing.append(routing_exact(pipe, data, rows))
        slots.append(slot_removal(pipe, data, rows))
        index.append(index_exact(pipe, data, rows))
        index_unrouted.append(index_exact(pipe, data, rows, routed=False))
        ratio.append(overhead(pipe, data, rows, reps=4 if quick else 12))
        resume.append(resume_equal(pipe, data_dir, work / f"resume-{b}"))
        det.append(detectors_ok(pipe, data, rows[:4]))
    out.update(routing_exact_max_rel_err=max(routing), index_exact_max_rel_err=max(index),
               index_exact_unrouted_max_rel_err=max(index_unrouted),
               index_overhead_ratio=round(max(ratio), 3),
               index_overhead_ratio_by_backbone=dict(zip(BACKBONES, [round(r, 3) for r in ratio])),
               resume_index_equal=all(resume), monitor_detectors_ok=all(det),
               slot_rank=slots[0]["slot_rank"], slot_removal_ok=all(s["ok"] for s in slots),
               slot_removal_by_backbone=dict(zip(BACKBONES, slots)))
    assert all(map(math.isfinite, routing + index))
    return out


def bench_foreign(quick: bool = False) -> dict:
    """``govlab bench foreign [--quick] --json``: the figures of the module docstring."""
    return run(quick=quick)
