"""``govlab bench index``: cost of the provenance writer, size of the index, speed of its queries."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from govlab.bench.train import on_device, paired_ratio, timings
from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.provenance.config import ProvenanceConfig
from govlab.provenance.index import ProvenanceIndex, quantile95
from govlab.provenance.writer import FORMAT, INDEX, ProvenanceWriter, band_modules, band_of_params
from govlab.routing import attach
from govlab.train import Trainer, build_model


def index_bytes(n_records: int, band_of: dict, sources: list[str], checkpoints: int, out: Path) -> int:
    """Bytes of a cohort index over ``n_records`` records (random figures, real writer code path)."""
    records = [{"source_id": sources[i % len(sources)]} for i in range(n_records)]
    w = ProvenanceWriter(ProvenanceConfig(enabled=True), sources)
    w.setup(records, band_of, {"format": FORMAT, "granularity": "cohort",
                               "bands_json": json.dumps(band_modules(band_of))})
    w.out, w.hooks = out, []
    g = torch.Generator().manual_seed(0)
    for c in range(checkpoints):
        for k in ("grad_norm_sq", "update_share"):
            w.acc[k] += torch.rand(w.acc[k].shape, generator=g, dtype=torch.float64)
        w.acc["steps_seen"] += 1
        w.on_checkpoint(None, (c + 1) * 100)
    return (out / INDEX).stat().st_size


def indexed_pair(cfg, dataset, out: str, routing: bool, mode: str = "exact", block: int = 1) -> dict:
    """Step functions of two trainers of the same model and batches, without and with the index
    writer in ``mode`` (both with the routing hooks when ``routing``); each call runs ``block`` steps
    (a sampled writer's cost lies in its sampled steps: it is timed over many)."""
    def trainer(name, run_cfg, writers):
        data, hooks = attach(run_cfg, dataset) if routing else (dataset, [])
        return Trainer(run_cfg, data, f"{out}/{name}", hooks=[*hooks, *writers], progress=False)

    prov = {"enabled": True, "mode": mode}
    writer = ProvenanceWriter(ProvenanceConfig(**prov), dataset.sources)
    plain = trainer("plain", cfg, [])
    indexed = trainer("indexed", from_dict({"provenance": prov}, base=cfg), [writer])
    indexed.model.load_state_dict(plain.model.state_dict())
    writer.on_start(indexed)

    def steps(t):
        for _ in range(block):
            t.train_step(t.make_context())
    return {"plain": lambda: steps(plain), "indexed": lambda: steps(indexed)}


def sampled_vs_exact(cfg, dataset, out: str, steps: int, checkpoints: int = 4) -> dict:
    """One training (same seeds, same batches) indexed twice, by an exact and by a sampled writer
    (the config's ``sample_rate``): the relative error of the sampled per-source band totals of
    ``grad_norm_sq`` and ``update_share`` (summed over the run: sum of absolute errors over sum of
    absolute exact totals) and the fraction of cells (source x band x checkpoint interval, both
    figures) whose exact value lies inside the 95% interval of the stored standard error
    (``ProvenanceIndex``'s: Student's t over the interval's drawn steps)."""
    every = max(steps // checkpoints, 1)
    run_cfg = from_dict({"train": {"steps": steps, "checkpoint_every": every}}, base=cfg)
    index = {}
    for mode in tqdm(("exact", "sampled"), desc="bench index: sampled vs exact", leave=False):
        prov = {**asdict(cfg.provenance), "enabled": True, "mode": mode}
        writer = ProvenanceWriter(ProvenanceConfig(**prov), dataset.sources)
        trainer = Trainer(from_dict({"provenance": prov}, base=run_cfg), dataset, f"{out}/{mode}",
                          hooks=[writer], progress=False)
        writer.on_start(trainer)
        for step in range(steps):
            trainer.train_step(trainer.make_context())
            if (step + 1) % every == 0:
                writer.on_checkpoint(trainer, step + 1)
        index[mode] = writer.to_dataset()
    exact, est = index["exact"], index["sampled"]
    out_ = {"sample_rate": float(est.attrs["sample_rate"]), "estimate_steps": steps,
            "estimate_steps_sampled": int(est["steps_sampled"].sum())}
    inside = []
    for k in ("grad_norm_sq", "update_share"):
        x, e = exact[k].sum("checkpoint").values, est[k].sum("checkpoint").values
        rel = float(np.abs(e - x).sum() / np.abs(x).sum())
        out_["estimate_rel_err" if k == "grad_norm_sq" else "estimate_rel_err_update_share"] = round(rel, 4)
        q = xr.DataArray([quantile95(d) for d in est["steps_drawn"].values], dims="checkpoint")
        inside.append((np.abs(est[k] - exact[k]) <= q * est[f"{k}_se"]).values.ravel())
    out_["estimate_coverage"] = round(float(np.concatenate(inside).mean()), 4)
    out_["estimate_cells"] = int(sum(len(i) for i in inside))
    return out_


def profile_pair(pair: dict, steps: int) -> dict:
    """Where the indexed step's extra time goes, from ``torch.profiler`` (self CPU time per step,
    ``steps`` steps each): all of it, the part in ``aten::`` ops (the kernels and their dispatch),
    and the part the autograd engine spends in the hooks' Python between ops. The profiler slows
    small ops, so these are estimates; ``kernels_only_ratio`` is the ratio the step would have if
    the writer's Python cost nothing."""
    from torch.profiler import ProfilerActivity, profile

    ms = {}
    for name, step in pair.items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        ms[name] = {e.key: e.self_cpu_time_total / steps / 1000 for e in prof.key_averages()}
    plain, indexed = (sum(ms[k].values()) for k in ("plain", "indexed"))

    def extra(prefix):
        return sum(v - ms["plain"].get(k, 0.0) for k, v in ms["indexed"].items() if k.startswith(prefix))

    kernels = extra("aten::")
    return {"profile_plain_ms": round(plain, 2), "profile_indexed_ms": round(indexed, 2),
            "profile_extra_kernel_ms": round(kernels, 2),
            "profile_extra_hook_ms": round(extra("autograd::engine::evaluate_function"), 2),
            "kernels_only_ratio": round((plain + kernels) / plain, 4)}


def bench_index(*, quick: bool = False, device: str | None = None, preset: str | None = None) -> dict:
    """Step with the index writer over step without (same process, interleaved rounds): in the
    default mode, sampled (``overhead_ratio``, ``overhead_ratio_sampled``: blocks of 10 steps, the
    ratio of the summed times), and exact (``overhead_ratio_exact``: paired ratio of single steps),
    routing off (exact, also profiled on the CPU: ``profile_pair``) and on (exact; per-source slots
    beside the caption encoder, or beside the UNet's cross-attention projections); the sampled
    estimate's error against the exact figures of the same training (``sampled_vs_exact``: 96
    steps with ``quick``, else 400); index bytes for 1k and 100k records; query milliseconds. On
    the ``smoke`` preset with ``quick``, else ``demo``, or ``preset``."""
    preset = preset or ("smoke" if quick else "demo")
    cfg = on_device(load_config(preset), device)
    dataset = run_dataset(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        # the default mode (sampled): blocks of steps, the ratio of the summed times
        pair = indexed_pair(cfg, dataset, f"{tmp}/sampled", routing=False, mode="sampled", block=10)
        sampled = timings(pair, repeats=12 if quick else 20)
        pair = indexed_pair(cfg, dataset, f"{tmp}/off", routing=False)
        times = timings(pair, repeats=16 if quick else 40)
        # on a GPU the aten:: ops' self CPU time leaves out the kernels: profiled on the CPU only
        profiled = profile_pair(pair, steps=20 if quick else 8) if cfg.train.device == "cpu" else {}
        routed = {}
        for key, routing in (("routed", {"mode": "routed"}),  # slots beside the caption encoder
                             ("routed_unet_slots", {"mode": "routed", "style_band": "cross_attention"})):
            pair = indexed_pair(from_dict({"routing": routing}, base=cfg), dataset, f"{tmp}/{key}", routing=True)
            routed[key] = timings(pair, repeats=8 if quick else 12)
        model = build_model(cfg, dataset)
        band_of = band_of_params(model, cfg.routing)
        out = Path(tmp) / "sizes"
        b1k = index_bytes(1_000, band_of, dataset.sources, 8, out / "1k")
        b100k = index_bytes(100_000, band_of, dataset.sources, 8, out / "100k")
        estimate = sampled_vs_exact(cfg, dataset, f"{tmp}/estimate", steps=96 if quick else 400)
        q = []
        for _ in range(20):
            t0 = time.perf_counter()
            index = ProvenanceIndex.open(out / "100k", check_model=False)
            index.bands_of(dataset.sources[0])
            index.sources_of(index.ds["band"].values[0])
            q.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio_sampled = sum(sampled["indexed"]) / sum(sampled["plain"])
    return {"overhead_ratio": round(ratio_sampled, 4), "overhead_ratio_sampled": round(ratio_sampled, 4),
            "overhead_ratio_exact": round(paired_ratio(times, "indexed", "plain"), 4), **estimate,
            **{f"overhead_ratio_{k}": round(paired_ratio(t, "indexed", "plain"), 4) for k, t in routed.items()},
            "step_s": round(med["plain"], 4), "indexed_step_s": round(med["indexed"], 4),
            **profiled, "bytes_1k": b1k, "bytes_100k": b100k, "query_ms": round(1000 * statistics.median(q), 2),
            "sources": len(dataset.sources), "batch_size": cfg.train.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "granularity": "cohort",
            "preset": preset, "device": cfg.train.device, "quick": quick}
