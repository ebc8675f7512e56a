"""``govlab bench removal``: removing one artist four ways, judged against the retraining oracle."""

from __future__ import annotations


def bench_removal(*, quick: bool = False) -> dict:
    """The removal study (``govlab.studies.removal``): smoke-sized trainings with ``quick`` (a few
    minutes on 2 cores, reused from the cache on a rerun), else demo-sized ones over three training
    seeds. ``variants`` holds the five figures with their 95% intervals per removal; ``verdict`` says
    per figure whether the slot removal lies inside the retraining's interval."""
    from govlab.studies.removal import removal

    return removal(quick=quick, seeds=1 if quick else 3)
