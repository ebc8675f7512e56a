"""Counterfactual test sets of world version 2: images that differ from a world image in one cue.

Each counterfactual keeps the image's seed, so every random draw (texture phase, jitter, shape
position) is the same and only the cue changes:

- ``glyph``: every image twice, without and with the watermark glyph. The two differ only in the
  glyph's pixels (``watermark_box``).
- ``palette_swap``: every artist's and stock image with its palette replaced by another (drawn from
  the image's seed): an artist's texture and stroke on another artist's palette. The two differ only
  in the pixels into which the background shows (``render_layers``' ``background`` layer: pixels not
  wholly covered by a shape, its outline or a person's glyph). An evaluator that reads the style
  (texture and stroke) still names the image's own artist; one that reads the palette names another.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from govlab.data.world import PALETTES, WorldConfig, render, world_records

KINDS = ("glyph", "palette_swap")


def _v2(cfg: WorldConfig) -> list[dict]:
    if cfg.version != 2:
        raise ValueError(f"counterfactual sets need world version 2, got {cfg.version}")
    return [r for r in world_records(cfg) if r["duplicate_group"] < 0]


def glyph_pairs(cfg: WorldConfig) -> list[tuple[dict, dict]]:
    """(without glyph, with glyph) for every image of the world ``cfg`` (planted duplicates left out)."""
    return [({**r, "watermark": False}, {**r, "watermark": True}) for r in _v2(cfg)]


def palette_swaps(cfg: WorldConfig) -> list[tuple[dict, dict]]:
    """(image, the same image on another palette) for every artist's and stock image of ``cfg``."""
    out = []
    for r in _v2(cfg):
        if r["kind"] == "identity":
            continue
        others = [p for p in PALETTES if p != r["palette"]]
        other = others[int(np.random.default_rng([r["seed"], 3]).integers(len(others)))]
        out.append((r, {**r, "palette": other}))
    return out


def counterfactual_sets(cfg: WorldConfig) -> dict[str, list[tuple[dict, dict]]]:
    """Both sets for world ``cfg`` (version 2): ``{"glyph": pairs, "palette_swap": pairs}``."""
    return {"glyph": glyph_pairs(cfg), "palette_swap": palette_swaps(cfg)}


def render_pairs(pairs: list[tuple[dict, dict]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two images of every pair, uint8 (n, size, size, 3) each: (originals, counterfactuals)."""
    a = np.stack([render(x, size, 2) for x, _ in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    b = np.stack([render(y, size, 2) for _, y in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    return a, b


def held_out_world(seed: int = 20_000, image_size: int = 16, n: int = 100) -> WorldConfig:
    """A world of ``n`` images per artist, stock and person (no duplicates) to draw test sets from."""
    return replace(WorldConfig(), seed=seed, image_size=image_size, per_artist=n, n_stock=n, per_person=n,
                   dup_groups=0, dup_copies=0)
