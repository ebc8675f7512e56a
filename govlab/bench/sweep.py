"""``govlab bench sweep``: a small LDS sweep (retrainings on random half-subsets of the sources) run
serially in this process and on Ray with 2 workers, each into a fresh cache: the same weights, and
the wall-clock of each."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from govlab.attribution.lds import half_subsets
from govlab.attribution.retrain import retrain_job
from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.sweep import Sweep, ray_available

WORKERS = 2


def bench_config(quick: bool):
    """The tiny routed model of ``govlab bench attribution --quick`` (quick: 40 steps instead of 200)."""
    return from_dict({"name": "sweep-quick" if quick else "sweep",
                      "routing": {"mode": "routed", "slot_rank": 2},
                      "model": {"channels": [8, 16, 16], "text_dim": 16, "head_dim": 8, "norm_groups": 4},
                      "train": {"steps": 40 if quick else 200, "checkpoint_every": 20 if quick else 100}},
                     base=load_config("smoke"))


def _weights(paths: list[Path]) -> list[dict]:
    return [load_file(str(p / "model.safetensors")) for p in paths]


def bench_sweep(*, quick: bool = False, workers: int | None = None, address: str | None = None) -> dict:
    """Retrain ``n_jobs`` LDS half-subsets serially (one torch thread, this process) and then with the
    sweep runner on Ray (``workers`` local CPUs, default 2, or the cluster at ``address``), each into
    a fresh cache directory. ``results_equal``: every retrained weight tensor is bitwise the same.
    ``ray_s`` is the sweep once Ray is up; ``ray_start_s`` the start (or connection) itself."""
    if not ray_available():
        raise GovlabError("bench sweep needs Ray (pip install ray)")
    ray_sweep = Sweep(workers=workers or WORKERS, address=address)
    if ray_sweep.serial:
        raise GovlabError("bench sweep compares a serial run with Ray: --workers must be >= 2")
    if address is not None:  # an unreachable cluster: refused before anything is computed or written
        ray_sweep.connect()
    cfg = bench_config(quick)
    dataset = run_dataset(cfg, progress=False)
    subsets = half_subsets(dataset.sources, 4 if quick else 8, seed=0)
    before = os.environ.get("GOVLAB_CACHE")
    try:
        with tempfile.TemporaryDirectory(prefix="govlab-sweep-") as tmp:
            runs, seconds = {}, {}
            for name, sweep in (("serial", Sweep(workers=1)), ("ray", ray_sweep)):
                os.environ["GOVLAB_CACHE"] = str(Path(tmp) / name)
                if name == "ray":
                    t0 = time.perf_counter()
                    sweep.connect()
                    seconds["ray_start"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                runs[name] = sweep.run([retrain_job(cfg, dataset, s) for s in subsets], desc=name, progress=False)
                seconds[name] = time.perf_counter() - t0
            equal = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                        for a, b in zip(_weights(runs["serial"]), _weights(runs["ray"])))
            same_dirs = [p.name for p in runs["serial"]] == [p.name for p in runs["ray"]]
    finally:
        if before is None:
            os.environ.pop("GOVLAB_CACHE", None)
        else:
            os.environ["GOVLAB_CACHE"] = before
    import ray

    return {"results_equal": bool(equal and same_dirs), "jobs": len(subsets), "steps": cfg.train.steps,
            "workers": int(ray.cluster_resources().get("CPU", 0)), "address": address,
            "serial_s": round(seconds["serial"], 2), "ray_s": round(seconds["ray"], 2),
            "ray_start_s": round(seconds["ray_start"], 2),
            "speedup": round(seconds["serial"] / seconds["ray"], 2), "quick": quick}
