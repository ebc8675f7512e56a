"""``govlab bench watermark``: the watermark adapter dropped, judged against retraining without the
watermarked images (world version 2)."""

from __future__ import annotations


def bench_watermark(*, quick: bool = False) -> dict:
    """The watermark study (``govlab.studies.watermark``): smoke-sized trainings with ``quick`` (reused
    from the cache on a rerun), else the routed preset over three training seeds. ``variants`` holds
    the glyph rate on stock prompts and on other prompts with 95% intervals; ``verdict`` says whether
    the dropped routed model lies inside the oracle's interval."""
    from govlab.studies.watermark import watermark

    return watermark(quick=quick, seeds=1 if quick else 3)
