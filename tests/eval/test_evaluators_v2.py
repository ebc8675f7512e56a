"""The evaluators of world version 2 read the glyph, texture and stroke (counterfactual sets), the
second evaluator agrees, and ``govlab bench evaluators`` reports it all with intervals."""

import json

import numpy as np
import pytest
import torch

from govlab.data.counterfactual import glyph_pairs, held_out_world, palette_swaps
from govlab.data.world import render
from govlab.eval.classifiers import accuracy, heads_for, load_evaluator, record_tensors
from govlab.eval.scores import glyph_rate, shape_accuracy, style_shares, verdicts

WORLD = held_out_world(seed=31_337, n=12)  # seen by neither evaluator


@pytest.fixture(scope="module")
def cnn():
    return load_evaluator(16, progress=False)[0]


def test_cnn_reads_the_glyph_and_the_style_not_the_look(cnn):
    pairs = glyph_pairs(WORLD)
    x, y = record_tensors([a for a, _ in pairs] + [b for _, b in pairs], 16, 2)
    assert accuracy(cnn, x, y)["watermark"] >= 0.95
    swaps = [b for _, b in palette_swaps(WORLD) if b["kind"] == "artist"]
    x, y = record_tensors(swaps, 16, 2)
    acc = accuracy(cnn, x, y)
    assert acc["source"] >= 0.9 and acc["palette"] >= 0.9, acc  # the artist by its style, the palette as it is


def test_removal_helpers_score_a_set_of_images(cnn):
    recs = [b for _, b in glyph_pairs(WORLD) if b["kind"] == "artist"][:24]
    imgs = torch.stack([torch.from_numpy(render(r, 16)) for r in recs]).permute(0, 3, 1, 2)
    shares = style_shares(imgs, cnn)
    want = {s: np.mean([r["source_id"] == s for r in recs]) for s in shares}
    assert all(abs(shares[s]["share"] - want[s]) <= 0.1 for s in shares), (shares, want)
    lo, hi = shares["artist_0"]["ci"]
    assert lo <= shares["artist_0"]["share"] <= hi
    assert shape_accuracy(imgs, [r["shape"] for r in recs], cnn)[0] >= 0.75
    assert glyph_rate(imgs, cnn)[0] == 1.0  # every image of this set carries the glyph
    assert set(verdicts(imgs, cnn)) == set(heads_for(2))


def test_bench_evaluators_quick():
    """``govlab bench evaluators --quick --json`` (in process: the CLI calls this function)."""
    from govlab.bench import BENCHMARKS
    from govlab.bench.evaluators import bench_evaluators

    assert BENCHMARKS["evaluators"] is bench_evaluators
    out = json.loads(json.dumps(bench_evaluators(quick=True)))
    for key in ("watermark_counterfactual_acc", "style_palette_swap_acc"):
        lo, hi = out[f"{key}_ci"]
        assert lo <= out[key] <= hi and out["goals_met"][key], (key, out[key])
    assert set(out["agreement"]) == set(heads_for(2)) and out["agreement_images"] > 0
    for head, fig in {**out["held_out"], **out["second"]["held_out"]}.items():
        assert fig["ci"][0] <= fig["acc"] <= fig["ci"][1], head
    for head, fig in out["agreement"].items():
        assert 0 <= fig["agreement"] <= 1 and len(fig["ci"]) == 2, head
