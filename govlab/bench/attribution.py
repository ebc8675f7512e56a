"""``govlab bench attribution``: structural vs the name-reading baseline vs TracIn vs D-TRAK against retraining
ground truth, on named prompts, unnamed prompts and generated images."""

from __future__ import annotations

from govlab.attribution.compare import CompareConfig, compare
from govlab.config import from_dict, load_config
from govlab.sweep import Sweep


def bench_config(quick: bool):
    """The routed run being attributed: smaller than smoke (quick: 25 retrainings on 2 CPU cores for
    16 LDS subsets and leave-one-out) or the routed preset."""
    if quick:
        return from_dict({"name": "attr-quick", "routing": {"mode": "routed", "slot_rank": 2},
                          "model": {"channels": [8, 16, 16], "text_dim": 16, "head_dim": 8, "norm_groups": 4},
                          "train": {"steps": 200, "checkpoint_every": 100}}, base=load_config("smoke"))
    return load_config("routed")


def bench_attribution(*, quick: bool = False, workers: int | None = None, address: str | None = None) -> dict:
    """The comparison's summary; its retrainings run as one sweep (``govlab.sweep``: local Ray with
    ``workers`` CPUs, the cluster at ``address``, or serially)."""
    cc = (CompareConfig(n_subsets=16, n_images=2, k_test=2, k_dtrak=2, proj_dim=128, sample_steps=8) if quick
          else CompareConfig())
    return {**compare(bench_config(quick), cc, progress=False,
                       sweep=Sweep(workers=workers, address=address))["summary"], "quick": quick}
