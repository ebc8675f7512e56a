"""World versions: version 1 byte for byte as before, version 2 without the confounds, and the
counterfactual sets that differ from the world's images in one cue only."""

import hashlib
import json
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest

from govlab.config import RunConfig, from_dict, load_config, to_yaml
from govlab.data.counterfactual import glyph_pairs, held_out_world, palette_swaps, render_pairs
from govlab.data.world import (PALETTES, STYLES, WATERMARK_SHARE, WORLD_VERSION, WorldConfig, caption_for,
                               generate_world, render, render_layers, watermark_box, world_records)
from govlab.io import sha256_json

SMALL = dict(per_artist=5, n_stock=4, per_person=2, dup_groups=2, dup_copies=3)
# computed with the code from before world versions existed (version 1 was the only world)
V1_IMAGES_SHA256 = "54f5d93fe9bf838df66682aebf611c6dc90d2ea51e0c6e8dda6a5177c37a1f21"
V1_RECORDS_SHA256 = "30d92aa6d8555ba7a693773b3b4006913e8b62088615ac19176bf52a05ea8b4a"
V1_IMAGES_32_SHA256 = "7f39167827ca4f7c0764a6cde694d14e4b7d88c19e5ad0c1d62f47445cd5be5e"
V1_CACHE_KEY, V1_SMOKE_HASH, V1_DEFAULT_HASH = "51253cad86923d80", "9fb4cd85fa326dc4", "d15d326da8692de9"


def test_version_1_generates_the_same_bytes_as_before():
    recs = world_records(WorldConfig(version=1, **SMALL))
    h = hashlib.sha256()
    for r in recs:
        h.update(render(r, 16, 1).tobytes())
    assert h.hexdigest() == V1_IMAGES_SHA256
    assert hashlib.sha256(json.dumps(recs, sort_keys=True).encode()).hexdigest() == V1_RECORDS_SHA256
    cfg32 = WorldConfig(version=1, image_size=32, per_artist=3, n_stock=3, per_person=2, dup_groups=1,
                        dup_copies=2, seed=5)
    h = hashlib.sha256()
    for r in world_records(cfg32):
        h.update(render(r, 32, 1).tobytes())
    assert h.hexdigest() == V1_IMAGES_32_SHA256


def test_version_1_keeps_its_cache_key_and_run_hashes_and_old_runs_load():
    assert WORLD_VERSION == 2 and WorldConfig().version == 2
    assert sha256_json(asdict(WorldConfig(version=1)))[:16] == V1_CACHE_KEY
    assert from_dict({"world": {"version": 1}}).hash() == V1_DEFAULT_HASH
    # a run's config.yaml from before versions: a whole world section without `version` is version 1
    old = from_dict(json.loads(json.dumps(load_config("smoke").to_dict())))
    assert old.world.version == 2  # (this one holds version 2; strip it to get the old file)
    saved = load_config("smoke").to_dict()
    del saved["world"]["version"]
    again = from_dict(saved)
    assert again.world.version == 1 and again.hash() == V1_SMOKE_HASH
    assert load_config("smoke").hash() != V1_SMOKE_HASH and "version: 2" in to_yaml(RunConfig())
    with pytest.raises(ValueError, match="version"):
        WorldConfig(version=3)


def test_version_2_has_no_single_cue_naming_an_artist():
    for i, cue in enumerate(("palette", "texture", "stroke")):
        owners = Counter(style[i] for style in STYLES.values())
        assert set(owners.values()) == {2}, (cue, owners)  # every cue shared by exactly two artists
    for pair in ((0, 1), (1, 2)):  # palette + texture, texture + stroke: each names one artist
        assert len({tuple(s[i] for i in pair) for s in STYLES.values()}) == len(STYLES)
    recs = world_records(WorldConfig())
    # the glyph on a share of every kind of source, close to the configured shares
    for kind, share in WATERMARK_SHARE.items():
        got = np.mean([r["watermark"] for r in recs if r["kind"] == kind])
        assert abs(got - share) < 0.1, (kind, got)
    assert all(("watermark" in r["categories"]) == r["watermark"] for r in recs)
    assert not any("watermark" in r["caption"] or "glyph" in r["caption"] for r in recs)
    stock = [r for r in recs if r["kind"] == "stock"]
    assert {r["palette"] for r in stock} == set(PALETTES)  # stock drawn from the artists' palettes
    for r in recs:  # ground truth of every cue in the records
        assert r["caption"] == caption_for(r)
        if r["kind"] == "artist":
            assert (r["palette"], r["texture"], r["stroke"]) == STYLES[r["source_id"]]
        for k in ("watermark", "palette", "texture", "stroke", "shape", "color", "position", "count"):
            assert k in r


def test_version_2_mean_colour_no_longer_names_the_artist():
    """Version 1 separated the artists by mean colour (each its own palette); in version 2 two artists
    share every palette, so a palette alone leaves two candidates."""
    recs = [r for r in world_records(WorldConfig(per_artist=20)) if r["kind"] == "artist"]
    by_palette = Counter(r["palette"] for r in recs)
    assert len(by_palette) == 3 and len({r["source_id"] for r in recs}) == 6
    img = render(recs[0], 16).astype(float)
    assert np.unique(np.round(img[1, :, 0])).size <= 6  # patterned backgrounds, not i.i.d. noise


def test_generated_version_2_world_is_deterministic(tmp_path):
    cfg = WorldConfig(**SMALL)
    a, b = (generate_world(cfg, tmp_path / n, progress=False) for n in "ab")
    assert (a / "metadata.jsonl").read_bytes() == (b / "metadata.jsonl").read_bytes()
    assert json.loads((a / "world.json").read_text())["version"] == 2
    for rec in map(json.loads, (a / "metadata.jsonl").read_text().splitlines()):
        assert (a / rec["file_name"]).read_bytes() == (b / rec["file_name"]).read_bytes()


def test_glyph_pairs_differ_only_in_the_glyph_region():
    pairs = glyph_pairs(held_out_world(n=8))
    without, with_ = render_pairs(pairs, 16)
    x0, y0, x1, y1 = watermark_box(16)
    region = np.zeros((16, 16), bool)
    region[y0:y1, x0:x1] = True
    diff = (without != with_).any(-1)
    assert not diff[:, ~region].any()  # confined to the glyph's pixels
    assert diff[:, region].mean() > 0.9  # and the glyph changes (almost) every pixel of it
    for (a, _), img in zip(pairs, without):  # the "without" image is the world's image when unstamped
        if not a.get("watermark"):
            assert np.array_equal(img, render(a, 16))


def test_palette_swaps_change_only_palette_coloured_pixels():
    """Palette-coloured pixels: those into which the background shows (``render_layers``' background
    layer: not wholly covered by a shape, its outline or a person's glyph; the watermark glyph is
    translucent). A swap changes those pixels and no other, and keeps texture and stroke."""
    pairs = palette_swaps(held_out_world(n=6))
    assert all(a["palette"] != b["palette"] and a["texture"] == b["texture"] and a["stroke"] == b["stroke"]
               for a, b in pairs)
    for a, b in pairs:
        img_a, layers = render_layers(a, 16)
        img_b, layers_b = render_layers(b, 16)
        assert np.array_equal(layers["background"], layers_b["background"])
        diff = (img_a != img_b).any(-1)
        assert not diff[~layers["background"]].any()
        assert diff[layers["background"]].mean() > 0.7  # the palettes differ in every channel mix
