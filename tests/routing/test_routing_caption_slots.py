from dataclasses import replace

import pytest
import torch

from govlab.config import load_config
from govlab.data.world import world_records
from govlab.errors import GovlabError
from govlab.routing import prepare, scale_slot
from govlab.routing.slots import CaptionTriggers, banks, category_phrases, source_phrases
from govlab.train import build_model

A0, A1 = "a red star top left, by artist 0", "a red star top left, by artist 1"


def smoke_dataset_cfg():
    return load_config("smoke").world


def expanded(tiny_cfg, dataset, mode):
    model = build_model(tiny_cfg, dataset)
    prepare(model, replace(tiny_cfg.routing, mode=mode), dataset.records)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for training: every slot writes something
        for bank in banks(model):
            for p in bank.up.values():
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def states(model, captions):
    with torch.no_grad():
        return model.text(model.tokenizer(captions))


def test_a_source_name_reaches_the_model_only_through_its_slot(tiny_cfg, smoke_dataset):
    model = expanded(tiny_cfg, smoke_dataset, "routed")
    stock = "a red star top left, stock photo"
    before = states(model, [A0, A1, stock])
    assert not torch.allclose(before[0], before[1])
    scale_slot(model, "artist_1", 0.0)
    after = states(model, [A0, A1, stock])
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])  # other captions untouched
    assert not torch.allclose(after[0], after[1])
    scale_slot(model, "artist_0", 0.0)
    after = states(model, [A0, A1])
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=1e-6)  # no slot: the names are invisible


def test_unrouted_slots_read_every_caption_and_the_names_stay_visible(tiny_cfg, smoke_dataset):
    model = expanded(tiny_cfg, smoke_dataset, "unrouted")
    before = states(model, [A0, A1])
    for s in ("artist_0", "artist_1"):
        scale_slot(model, s, 0.0)
    after = states(model, [A0, A1])
    assert not torch.allclose(after[0], before[0]) and not torch.allclose(after[0], after[1])


def test_triggers_are_source_names_and_words_only_a_category_holds(tiny_cfg, smoke_dataset):
    model = build_model(tiny_cfg, smoke_dataset)
    phrases = {**source_phrases(model.tokenizer, ["artist_0", "artist_1"]),
               **category_phrases(smoke_dataset.records, ["identity"])}
    # world version 1's captions marked the watermark ("stock photo" was on exactly the stamped images)
    v1 = world_records(replace(smoke_dataset_cfg(), version=1))
    phrases["watermark"] = category_phrases(v1, ["watermark"])["watermark"]
    assert phrases["identity"] == [["of"], ["person"]] and phrases["watermark"] == [["stock"]]
    triggers = CaptionTriggers(model.tokenizer, phrases)
    named, where = triggers.find(model.tokenizer([A1, "a photo of person 1 top left", "a red star, stock photo", ""]))
    assert named.tolist() == [[False, True, False, False], [False, False, True, False],
                              [False, False, False, True], [False] * 4]
    assert where.sum(1).tolist() == [2, 2, 1, 0]  # "artist 1" as a whole, not the "1" of "person 1"
    # world version 2's captions never mention the watermark: refused, or an adapter on every caption
    with pytest.raises(GovlabError, match="captions of 'watermark' samples share no word"):
        category_phrases(smoke_dataset.records, ["watermark"])
    always = category_phrases(smoke_dataset.records, ["watermark"], untriggered="always")
    assert always == {"watermark": [[]]}
    named, where = CaptionTriggers(model.tokenizer, always).find(model.tokenizer([A1, "", "a photo of person 1"]))
    assert named.tolist() == [[True]] * 3 and not where.any()  # on for every caption, no word masked
    with pytest.raises(GovlabError, match="source 'ghost_x' is never named"):
        source_phrases(model.tokenizer, ["ghost_x"])
    with pytest.raises(GovlabError, match="captions of 'composition' samples share no word"):
        category_phrases(smoke_dataset.records, ["composition"])


def test_slot_ablation_skips_only_slots_the_prompt_cannot_switch_on(tiny_cfg, smoke_dataset):
    from govlab.attribution.probe import make_probe, model_output
    from govlab.attribution.structural import slot_ablation_scores
    from govlab.routing.slots import SLOTS_ATTR, acting_slots

    model = expanded(tiny_cfg, smoke_dataset, "routed")
    tokens = model.tokenizer([A1, A1])
    probe = make_probe(torch.rand(2, 3, 16, 16) * 2 - 1, tokens, k=2, seed=0)
    # world version 2: the watermark adapter has no trigger word and acts on every caption
    assert acting_slots(model, tokens) == {"artist_1", "watermark"}
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(SLOTS_ATTR + ".")}
    base, exhaustive = model_output(model, probe), {}
    for s in ("artist_0", "artist_1", "artist_2"):  # every slot ablated, the prompt's or not
        scale_slot(model, s, 0.0)
        exhaustive[s] = base - model_output(model, probe)
        model.load_state_dict(saved, strict=False)
    scores = {r["source"]: r["score"] for r in slot_ablation_scores(model, probe)}
    assert exhaustive["artist_0"] == exhaustive["artist_2"] == 0.0 != exhaustive["artist_1"]
    assert all(scores[s] == pytest.approx(v, abs=1e-8) for s, v in exhaustive.items())
    unrouted = expanded(tiny_cfg, smoke_dataset, "unrouted")
    assert acting_slots(unrouted, tokens) >= {"artist_0", "artist_1", "artist_2"}
