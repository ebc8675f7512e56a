"""``govlab bench index``: cost of the provenance writer, size of the index, speed of its queries."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from govlab.bench.train import on_device, paired_ratio, timings
from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.provenance.config import ProvenanceConfig
from govlab.provenance.index import ProvenanceIndex
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


def indexed_pair(cfg, dataset, out: str, routing: bool) -> dict:
    """Step functions of two trainers of the same model and batches, without and with the index
    writer (both with the routing hooks when ``routing``)."""
    def trainer(name, run_cfg, writers):
        data, hooks = attach(run_cfg, dataset) if routing else (dataset, [])
        return Trainer(run_cfg, data, f"{out}/{name}", hooks=[*hooks, *writers], progress=False)

    writer = ProvenanceWriter(ProvenanceConfig(enabled=True), dataset.sources)
    plain = trainer("plain", cfg, [])
    indexed = trainer("indexed", from_dict({"provenance": {"enabled": True}}, base=cfg), [writer])
    indexed.model.load_state_dict(plain.model.state_dict())
    writer.on_start(indexed)
    return {"plain": lambda: plain.train_step(plain.make_context()),
            "indexed": lambda: indexed.train_step(indexed.make_context())}


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
    """Step with the index writer over step without (same process, interleaved rounds, paired
    ratio), routing off (also profiled on the CPU: ``profile_pair``) and on (per-source slots beside the
    caption encoder, or beside the UNet's cross-attention projections); index bytes for 1k and 100k
    records; query milliseconds. On the ``smoke`` preset with ``quick``, else ``demo``, or
    ``preset``."""
    preset = preset or ("smoke" if quick else "demo")
    cfg = on_device(load_config(preset), device)
    dataset = run_dataset(cfg, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
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
        q = []
        for _ in range(20):
            t0 = time.perf_counter()
            index = ProvenanceIndex.open(out / "100k", check_model=False)
            index.bands_of(dataset.sources[0])
            index.sources_of(index.ds["band"].values[0])
            q.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"overhead_ratio": round(paired_ratio(times, "indexed", "plain"), 4),
            **{f"overhead_ratio_{k}": round(paired_ratio(t, "indexed", "plain"), 4) for k, t in routed.items()},
            "step_s": round(med["plain"], 4), "indexed_step_s": round(med["indexed"], 4),
            **profiled, "bytes_1k": b1k, "bytes_100k": b100k, "query_ms": round(1000 * statistics.median(q), 2),
            "sources": len(dataset.sources), "batch_size": cfg.train.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "granularity": "cohort",
            "preset": preset, "device": cfg.train.device, "quick": quick}
