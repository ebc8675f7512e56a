"""``govlab bench distributed``: governed training on 2 gloo ranks against 1 rank.

At the same global batch and seed (the smoke model, routing + provenance index + memorization
monitor on) it trains the run once on one process and once on two ranks (``torch.multiprocessing``
on a free local port, gloo on the CPU), and compares the final weights, every figure of index.nc
and the monitor's flags; then it stops a 2-rank run at a checkpoint, resumes it on 1 rank and
compares that with the uninterrupted run. ``step_ratio``: the 2-rank wall time per global step over
the 1-rank one, the median of rounds run alternately (on this machine's cores; no goal).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from govlab.config import RunConfig, from_dict, load_config
from govlab.errors import GovlabError

# routing, the index (sampled: its first steps and about a third of the others reduce their shares,
# DDP reduces the rest) and the monitor flagging and attenuating
# (identity sequestered in a caption adapter; world 2 puts its watermark on every kind of source)
GOVERNED = {"routing": {"mode": "routed", "slot_rank": 2, "sequester_rank": 2, "sequestered": ["identity"],
                        "policy": {"style": ["slot"], "semantics": ["outer", "middle", "cross_attention"],
                                   "composition": ["outer", "middle", "cross_attention"],
                                   "identity": ["identity"], "watermark": ["outer", "middle", "cross_attention"]}},
            "provenance": {"enabled": True, "mode": "sampled", "exact_first": 2, "sample_rate": 0.3},
            "memorization": {"mode": "monitor", "detector": "noise", "every": 2, "start": 2, "watch_size": 24,
                             "intervention": "attenuate", "factor": 0.0, "calibrate_k": 1.0}}


def bench_config(steps: int = 8, every: int = 4, overrides: dict | None = None) -> RunConfig:
    """The smoke preset, governed, ``steps`` steps with a checkpoint every ``every``."""
    base = from_dict({**GOVERNED, "train": {"steps": steps, "checkpoint_every": every, "warmup_steps": 2,
                                            "threads": 1}}, base=load_config("smoke"))
    return from_dict(overrides, base=base) if overrides else base


def train_governed(cfg: RunConfig, out, *, resume: bool = False, until: int | None = None) -> dict:
    """Training alone, with the governance hooks a run attaches (``govlab.run.train_run`` without
    the evaluation); under several ranks when the process group is up."""
    from govlab import distributed
    from govlab.compliance.ingest import attach as attach_credentials
    from govlab.data.cache import run_dataset
    from govlab.eval.loss import LossCurve
    from govlab.memorization.monitor import attach as attach_monitor
    from govlab.provenance.hook import attach as attach_provenance
    from govlab.routing.hook import attach
    from govlab.train import Trainer, clear_run

    out = Path(out)
    world = distributed.init_from_env(cfg.train.device)
    distributed.check_batch(cfg.train.batch_size, world)
    dataset = run_dataset(cfg, progress=False)
    sources = dataset.sources
    dataset, credentials = attach_credentials(dataset)
    dataset, routing = attach(cfg, dataset)
    dataset, provenance = attach_provenance(cfg, dataset, sources)
    hooks = [*credentials, *routing, *attach_monitor(cfg, dataset), *provenance, LossCurve()]
    trainer = Trainer(cfg, dataset, out, hooks=hooks, progress=False)
    if not resume and world.main:
        clear_run(out)
    distributed.barrier()
    trainer.fit(resume=resume, until=until)
    return {"steps": trainer.step, "seconds": trainer.seconds, "world_size": world.size}


# fork: the ranks start in a second, with the parent's imports (spawn re-imports torch and diffusers
# in every rank); GOVLAB_DIST_START=spawn where forking is unsafe
START = os.environ.get("GOVLAB_DIST_START", "fork")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, size: int, port: int, cfgs: list[dict], out: str, resume: bool, until, report: str):
    """One rank: the process group from the environment torchrun would set, then training."""
    from govlab.config import from_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), TQDM_DISABLE="1")
    torch.set_num_threads(1)
    result = {"rank": rank}
    try:
        result |= train_governed(from_dict(cfgs[rank]), out, resume=resume, until=until)
    except GovlabError as e:
        result["error"] = str(e)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    Path(report, f"rank{rank}.json").write_text(json.dumps(result))


def run_ranks(cfg: RunConfig | list[RunConfig], out, ranks: int, *, resume: bool = False,
              until: int | None = None) -> list[dict]:
    """Train on ``ranks`` gloo processes (spawned; one config, or one per rank); each rank's result.
    A GovlabError on any rank is raised here with its message."""
    from dataclasses import asdict

    cfgs = [asdict(c) for c in (cfg if isinstance(cfg, list) else [cfg] * ranks)]
    with tempfile.TemporaryDirectory() as report:
        mp.start_processes(_rank, args=(ranks, free_port(), cfgs, str(out), resume, until, report), nprocs=ranks,
                           start_method=START)
        results = [json.loads(Path(report, f"rank{r}.json").read_text()) for r in range(ranks)]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise GovlabError(errors[0])
    return results


def max_rel_diff(a: dict, b: dict, *, per_entry: bool = True) -> float:
    """The largest |a - b| relative to the reference's scale: per entry, max |a - b| / max |a| over
    the entries (an entry with a zero reference: max |a - b|); else max |a - b| over max |a| of all
    entries together. Shapes or NaN positions that differ: infinity."""
    worst, diff_all, scale_all = 0.0, 0.0, 0.0
    for k, x in a.items():
        x, y = np.asarray(x, dtype=np.float64), np.asarray(b[k], dtype=np.float64)
        if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
            return float("inf")
        if not x.size:
            continue
        diff, scale = np.abs(np.nan_to_num(x) - np.nan_to_num(y)).max(), np.abs(np.nan_to_num(x)).max()
        worst = max(worst, float(diff / scale) if scale > 0 else float(diff))
        diff_all, scale_all = max(diff_all, diff), max(scale_all, scale)
    if per_entry:
        return worst
    return float(diff_all / scale_all) if scale_all > 0 else float(diff_all)


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.numpy() for k, v in load_file(str(run / "model.safetensors")).items()}


def index_arrays(run: Path) -> dict:
    import xarray as xr

    with xr.open_dataset(run / "index.nc") as ds:
        return {k: ds[k].values for k in ds.data_vars}


def flags(run: Path) -> dict:
    from govlab.memorization.monitor import read_monitor

    return read_monitor(run)["flagged"]


def compare(a: Path, b: Path) -> dict:
    """Run ``b`` against the reference ``a``: weights (relative to the model's largest weight; per
    tensor too), every index figure (per figure), the monitor's flags."""
    fa, wa, wb = flags(a), weights(a), weights(b)
    return {"weights_max_rel_diff": max_rel_diff(wa, wb, per_entry=False),
            "weights_max_rel_diff_per_tensor": max_rel_diff(wa, wb),
            "index_max_rel_diff": max_rel_diff(index_arrays(a), index_arrays(b)),
            "flags_equal": fa == flags(b), "flags": len(fa)}


def run(quick: bool = True, work: Path | None = None) -> dict:
    steps, every = (8, 4) if quick else (30, 10)
    cfg = bench_config(steps, every)
    work = Path(work or tempfile.mkdtemp(prefix="govlab-distributed-"))
    from govlab.data.cache import run_dataset

    run_dataset(cfg, progress=False)  # the world built once, before the ranks share its cache
    one = train_governed(cfg, work / "one")
    two = run_ranks(cfg, work / "two", 2)
    result = {"ranks": 2, "backend": "gloo", "global_batch": cfg.train.batch_size, "steps": steps, "quick": quick,
              **compare(work / "one", work / "two")}
    run_ranks(cfg, work / "cut", 2, until=every)  # stopped at its first checkpoint under 2 ranks
    train_governed(cfg, work / "cut", resume=True)  # resumed under 1
    resumed = compare(work / "one", work / "cut")
    result["resume_weights_max_rel_diff"] = resumed["weights_max_rel_diff"]
    result["resume_index_max_rel_diff"] = resumed["index_max_rel_diff"]
    result["resume_other_world_size_ok"] = bool(resumed["weights_max_rel_diff"] <= 1e-5
                                                and resumed["index_max_rel_diff"] <= 1e-5 and resumed["flags_equal"])
    # seconds per global step of the training loops alone (each process's own clock; spawning and
    # imports excluded), 1 rank and 2 ranks alternately, the ratio paired per round
    rounds = [(one["seconds"], max(r["seconds"] for r in two))]
    for i in range(1 if quick else 2):
        a = train_governed(cfg, work / f"time-one-{i}")["seconds"]
        rounds.append((a, max(r["seconds"] for r in run_ranks(cfg, work / f"time-two-{i}", 2))))
    ratios = sorted(b / a for a, b in rounds)
    result["step_ratio"] = round(float(np.median(ratios)), 3)
    result["step_ratio_rounds"] = [round(r, 3) for r in ratios]
    result["one_rank_s_per_step"] = round(float(np.median([a for a, _ in rounds])) / steps, 3)
    result["two_rank_s_per_step"] = round(float(np.median([b for _, b in rounds])) / steps, 3)
    return result


def bench_distributed(quick: bool = False) -> dict:
    """``govlab bench distributed [--quick] --json``: the figures of the module docstring."""
    return run(quick=quick)
