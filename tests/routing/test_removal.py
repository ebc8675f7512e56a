"""The removal study on a tiny config: every field, ESD moves the model, slot zeroing is exact."""

import json
import pytest
import torch

from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage
from govlab.routing.policy import RoutingPolicy, slot_band
from govlab.routing.slots import scale_slot
from govlab.studies.localization import configs, train_one
from govlab.studies.removal import (FIGURES, VARIANTS, esd, interval, main, removal, removal_prompts, table, v2_routing,
                                    workdir_for)


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    return v2_routing(tiny_cfg)  # no watermark adapter on world version 2 (no caption names the glyph)


@pytest.fixture(scope="module")
def workdir(cfg):
    return workdir_for(cfg)  # the cache: trainings reused by later runs and the notebook test


@pytest.fixture(scope="module")
def result(cfg, workdir):
    return removal(cfg, artist="artist_0", per_prompt=1, workdir=workdir, esd_iterations=2)


def test_the_result_holds_every_figure_with_its_interval(result):
    assert set(result["variants"]) == set(VARIANTS)
    for v in result["variants"].values():
        for f in FIGURES:
            assert 0.0 <= v[f] <= 1.0
            lo, hi = v[f"{f}_ci"]
            assert lo <= v[f] <= hi
    assert result["esd_seconds"] > 0 and result["slot_seconds"] >= 0
    for f in FIGURES:
        assert set(result["verdict"][f]) >= {"slot", "retrain", "retrain_ci", "within", "intervals_overlap"}
    assert isinstance(result["verdict"]["all_within"], bool)
    assert [r["design"] for r in result["tradeoff"]] == ["caption_slots", "confined", "retrain", "esd"]
    json.dumps(result)  # plain JSON
    assert "(a) routed, slot zeroed" in table(result)


def test_prompts_naming_no_artist_name_none():
    prompts = removal_prompts("artist_0", ["artist_0", "artist_1"], 1)
    unnamed = [p["caption"] for p in prompts if p["set"] == "unnamed"]
    assert unnamed and not any("artist" in c or " by " in c for c in unnamed)
    assert sum(p["set"] == "named" for p in prompts) == 4  # one per shape


def test_slot_zeroing_is_exact_and_esd_moves_only_cross_attention(cfg, workdir, result):
    path = train_one(configs(cfg)["routed"], workdir / "routed")  # reused from the study
    model = TextToImage.load(path)
    prompts = ["a red circle top left, by artist 1", "a blue bar center"]
    before = model.generate(prompts, seed=3, steps=3)
    scale_slot(model, "artist_0", 0.0)
    assert all(float(b.up["artist_0"].detach().abs().max()) == 0.0 for b in model.slots.values() if "artist_0" in b.names)
    assert torch.equal(model.generate(prompts, seed=3, steps=3), before)  # no other prompt moves
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    esd(model, ["a red circle top left, by artist 0"], iterations=2, pool=4, batch_size=4, steps=2, lr=1e-2)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved and all(".attn2." in n for n in moved)


def test_confined_sources_reach_only_their_slot():
    policy = RoutingPolicy({"style": ("slot",), "semantics": ("outer",)}, (), "style", "caption",
                           frozenset({"artist_0"}))
    slots = frozenset({"artist_0", "artist_1"})
    assert policy.allowed(["style", "semantics"], "artist_0", slots) == {slot_band("artist_0")}
    assert policy.allowed(["style", "semantics"], "artist_1", slots) == {"trunk", "outer", slot_band("artist_1")}


def test_interval_over_seeds_is_wider_than_one_seed():
    a, b = torch.tensor([1.0] * 20 + [0.0] * 20).numpy(), torch.tensor([1.0] * 35 + [0.0] * 5).numpy()
    mean, ci = interval([a, b])
    assert mean == pytest.approx(0.6875) and ci[0] < mean < ci[1]


def test_bad_artist_is_one_clear_error(tiny_cfg, tmp_path, capsys):
    with pytest.raises(GovlabError, match="unknown artist 'artist_9'"):
        removal(tiny_cfg, artist="artist_9", workdir=tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--seeds", "0"])
    assert exit_.value.code == 2 and "--seeds must be >= 1, got 0" in capsys.readouterr().err


def test_the_page_states_each_figure_and_verdict_of_its_result(result, tmp_path, capsys):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(result))
    md, png = tmp_path / "docs" / "removal-x.md", tmp_path / "docs" / "img" / "x.png"
    main(["--from", str(src), "--plot", str(png), "--page", str(md)])
    text = md.read_text()
    assert png.stat().st_size > 0 and "](img/x.png)" in text
    assert table(result) in text
    for f in FIGURES:
        v = result["verdict"][f]
        word = "**within**" if v["within"] else "**NOT within**"
        assert f"- `{f}`: slot {v['slot']:.3f}, oracle {v['retrain']:.3f}" in text
        assert f"`{f}`: slot {v['slot']:.3f}, oracle {v['retrain']:.3f} [{v['retrain_ci'][0]:.3f}, {v['retrain_ci'][1]:.3f}]: {word}" in text
    assert f"All five within: **{result['verdict']['all_within']}**." in text
    assert f"--seeds {result['seeds']} --artist artist_0 --per-prompt 1" in text
    assert not list(md.parent.glob(".*.tmp"))  # written under a temp name, then renamed


def test_a_page_that_cannot_be_written_is_one_clear_error(result, tmp_path, capsys):
    src, blocker = tmp_path / "r.json", tmp_path / "a-file"
    src.write_text(json.dumps(result))
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["--from", str(src), "--page", str(blocker / "page.md")])
    assert exit_.value.code == 2 and f"--page {blocker / 'page.md'}: cannot write" in capsys.readouterr().err
