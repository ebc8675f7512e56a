"""``govlab bench attribution``: structural vs TracIn vs D-TRAK against retraining ground truth."""

from __future__ import annotations

from govlab.attribution.compare import CompareConfig, compare
from govlab.config import from_dict, load_config


def bench_config(quick: bool):
    """The routed run being attributed: smoke-sized (quick; trained long enough to learn the
    artists' styles) or the routed preset."""
    if quick:
        return from_dict({"name": "attr-quick", "routing": {"mode": "routed"},
                          "train": {"steps": 300, "checkpoint_every": 100}}, base=load_config("smoke"))
    return load_config("routed")


def bench_attribution(*, quick: bool = False) -> dict:
    cc = (CompareConfig(n_subsets=6, n_images=2, k_test=2, k_dtrak=2, proj_dim=256, sample_steps=8) if quick
          else CompareConfig())
    return {**compare(bench_config(quick), cc, progress=False)["summary"], "quick": quick}
