"""The four-way comparison's figures against their definitions: name baseline, query sets, NaN counts,
intervals; structural slot evidence against a direct computation."""

import math

import pytest
import torch

from govlab.attribution import lds, lds_ci, summary_table
from govlab.attribution.compare import METHODS, QUERY_SETS
from govlab.attribution.probe import Probe, model_output, prompt_probe
from govlab.attribution.structural import slot_evidence_scores
from govlab.data.world import SOURCES
from govlab.errors import GovlabError
from govlab.routing.config import RoutingConfig
from govlab.routing.slots import scale_slot, slot_names


def test_every_figure_is_there_with_its_interval(quick_compare):
    s = quick_compare["summary"]
    assert s["n_subsets"] == len(quick_compare["subsets"]) == 4
    for key in ("lds_structural", "lds_name_baseline", "lds_tracin", "lds_dtrak", "top1_name_baseline",
                "lds_structural_unnamed", "lds_tracin_unnamed", "lds_dtrak_unnamed", "lds_structural_images",
                "lds_tracin_images", "lds_dtrak_images", "top1_structural_images", "lds_structural_removed",
                "lds_name_baseline_removed", "lds_tracin_removed", "lds_dtrak_removed"):
        assert key in s, key
    # prompts naming an artist not in the training data: the name credits no training source
    removed = quick_compare["queries"]["removed"]
    assert {r["kind"] for r in removed} == {"removed", "unknown"} and s["removed_queries"] == len(removed)
    assert all(r["named"] not in r["loo"] for r in removed)  # not a training source
    assert s["nan_prompts"]["lds_name_baseline_removed"] == len(removed)
    assert "top1_structural_removed" not in s  # no training source is the right answer
    lds_keys = [k for k in s if k.startswith("lds_") and not k.endswith("_ci") and k != "lds_subsets"]
    for k in lds_keys:
        ci = s[f"{k}_ci"]
        assert ci is None or ci[0] <= ci[1], (k, ci)
        assert k in s["nan_prompts"]
    # the name baseline cannot answer a query that names no source
    assert "lds_name_baseline_unnamed" not in s and "lds_name_baseline_images" not in s
    assert {r["method"] for r in summary_table(s)} <= set(METHODS)
    assert len(summary_table(s)) == len(lds_keys)


def test_name_baseline_reads_the_name_and_nothing_else(quick_compare):
    rows = quick_compare["queries"]["named"]
    for r in rows:
        assert r["name_baseline"]["scores"] == {x: float(x == r["artist"]) for x in r["loo"]}
        assert r["name_baseline"]["top"] == r["artist"]
    assert quick_compare["summary"]["top1_name_baseline"] == 1.0


def test_lds_rows_and_nan_counts_follow_their_definitions(quick_compare):
    s, subsets = quick_compare["summary"], quick_compare["subsets"]
    for set_name, rows in quick_compare["queries"].items():
        sfx = QUERY_SETS[set_name]
        for m in METHODS:
            if f"lds_{m}{sfx}" not in s:
                continue
            per = [r[m]["lds"] for r in rows]
            for r, x in zip(rows, per):
                y = lds(r[m]["scores"], subsets, r["lds_actual"])
                assert (math.isnan(x) and math.isnan(y)) or x == y
            n_nan = sum(math.isnan(x) for x in per)
            assert s["nan_prompts"][f"lds_{m}{sfx}"] == n_nan  # counted, never dropped silently
            finite = [x for x in per if not math.isnan(x)]
            assert (math.isnan(s[f"lds_{m}{sfx}"]) if not finite
                    else s[f"lds_{m}{sfx}"] == pytest.approx(sum(finite) / len(finite), abs=1e-4))
            assert s[f"lds_{m}{sfx}_ci"] == lds_ci([r[m]["scores"] for r in rows], subsets,
                                                   [r["lds_actual"] for r in rows])


def test_unnamed_queries_name_no_source(quick_compare):
    names = {w for src in SOURCES for w in src.replace("_", " ").split()} | {"by", "stock"}
    for set_name in ("unnamed", "images"):
        for r in quick_compare["queries"][set_name]:
            assert not names & set(r["prompt"].split()), r["prompt"]
    assert [r["artist"] for r in quick_compare["queries"]["images"]] == \
        [r["artist"] for r in quick_compare["queries"]["named"]]


def test_lds_ci_on_a_constructed_case():
    subsets = [["a"], ["b"], ["c"], ["a", "b"], ["b", "c"], ["a", "c"]]
    scores = [{"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}]
    perfect = [[sum(sc[x] for x in s) for s in subsets] for sc in scores]
    assert lds_ci(scores, subsets, perfect) == [1.0, 1.0]  # every resample ranks perfectly
    reversed_ = [[-v for v in row] for row in perfect]
    assert lds_ci(scores, subsets, reversed_) == [-1.0, -1.0]
    mixed = [perfect[0], reversed_[1]]
    lo, hi = lds_ci(scores, subsets, mixed)
    assert lo == -1.0 and hi == 1.0  # a resample can pick either query twice
    assert lds_ci(scores[:1], subsets, perfect[:1]) is None  # one query: no interval


def test_slot_evidence_equals_the_loss_change_of_each_hypothesised_slot(tiny_run):
    _, model, _ = tiny_run
    images = prompt_probe(model, "a red circle center, by artist 2", n_images=2, k=2, steps=2)
    query = Probe(images.x0, model.tokenizer([""] * 2), images.noise, images.timesteps)  # the images alone
    got = {r["source"]: r["score"] for r in slot_evidence_scores(model, query)}
    assert set(got) == set(slot_names(model)) - set(RoutingConfig().sequestered)  # every source tried
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for source in ("artist_2", "artist_4"):
        named = Probe(query.x0, model.tokenizer([f"by {source.replace('_', ' ')}"] * 2), query.noise,
                      query.timesteps)
        on = model_output(model, named)
        scale_slot(model, source, 0.0)
        off = model_output(model, named)
        model.load_state_dict(state)
        assert got[source] == pytest.approx(on - off, abs=1e-7)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert len(set(got.values())) > 1  # the images tell the slots apart


def test_slot_evidence_needs_slots(smoke_cfg):
    from govlab.data.cache import run_dataset
    from govlab.models.diffusion import TextToImage
    from govlab.train import build_model

    model = build_model(smoke_cfg, run_dataset(smoke_cfg, progress=False))
    assert isinstance(model, TextToImage)
    probe = prompt_probe(model, "a red circle center", n_images=1, k=1, steps=1)
    with pytest.raises(GovlabError, match="no per-source slots"):
        slot_evidence_scores(model, probe)
