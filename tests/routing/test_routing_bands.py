import pytest
from dataclasses import replace

from govlab.config import from_dict
from govlab.errors import GovlabError
from govlab.routing import Band, RoutingConfig, RoutingPolicy, assign, prepare
from govlab.routing.bands import TRUNK
from govlab.train import build_model


@pytest.fixture
def model(tiny_cfg, smoke_dataset):
    return build_model(tiny_cfg, smoke_dataset)


def test_presets_and_slots_partition_every_parameter(model, tiny_cfg, smoke_dataset):
    router = prepare(model, tiny_cfg.routing, smoke_dataset.records)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(router.band_of) == sorted(names)  # every parameter, each exactly once
    band = router.band_of
    assert band["unet.conv_in.weight"] == band["unet.down_blocks.0.resnets.0.conv1.weight"] == "outer"
    assert band["unet.up_blocks.2.resnets.0.conv1.weight"] == band["unet.conv_out.bias"] == "outer"
    assert band["unet.mid_block.resnets.0.conv1.weight"] == band["unet.up_blocks.0.resnets.0.conv1.weight"] == "middle"
    kv = [n for n in names if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert kv and {band[n] for n in kv if not n.startswith("slots.")} == {"cross_attention"}
    assert band["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight"] == "middle"
    assert band["text.pos"] == band["unet.time_embedding.linear_1.weight"] == TRUNK
    slots = {b for b in band.values() if b.startswith("slot:")}
    assert slots == {f"slot:artist_{i}" for i in range(6)}
    assert {"identity", "watermark"} <= set(band.values())
    # per-source slots sit on the caption (default), or beside the cross-attention key/value projections
    assert {n.split(".")[1] for n, b in band.items() if b.startswith("slot:")} == {"text"}
    kv_model = build_model(tiny_cfg, smoke_dataset)
    kv_band = prepare(kv_model, replace(tiny_cfg.routing, style_band="cross_attention"), smoke_dataset.records).band_of
    assert kv_band.keys() - band.keys() and all("__attn2__to_" in n for n, b in kv_band.items() if b.startswith("slot:"))


def test_two_bands_claiming_one_parameter_is_an_error():
    names = ["unet.mid_block.resnets.0.conv1.weight", "unet.mid_block.resnets.0.conv1.bias", "text.pos"]
    with pytest.raises(GovlabError, match="claimed by bands 'a' and 'b'"):
        assign(names, [Band("a", ("unet.mid_block",)), Band("b", ("unet.mid_block.resnets.0.conv1",))])
    assert assign(names, [Band("a", ("unet.mid_block",))])["text.pos"] == TRUNK


def test_a_pattern_matching_nothing_is_an_error():
    with pytest.raises(GovlabError, match="pattern 'unet.nowhere' matches no parameter"):
        assign(["unet.conv_in.weight"], [Band("a", ("unet.conv_in", "unet.nowhere"))])


@pytest.mark.parametrize("routing, message", [
    ({"policy": {"styel": ["slot"]}}, "unknown category 'styel'"),
    ({"policy": {"style": ["slot"], "semantics": ["outre"]}}, "unknown band 'outre'"),
    ({"bands": {"outer": "preset", "middle": "preset", "cross_attention": "preset", "x": ["unet.mid_block"]}},
     "claimed by bands 'middle' and 'x'"),
    ({"bands": {"x": ["unet.nowhere.*"]}}, "matches no parameter"),
    ({"bands": {"outer": "preset", "deep": "preset"}}, "no preset band 'deep'"),
    ({"bands": {"trunk": ["unet.conv_in"]}}, "reserved"),
    ({"bands": {"half": ["unet.conv_in.weight"]}, "policy": {"semantics": ["half"]}, "slot_rank": 0,
      "sequestered": []}, "a band must hold whole layers"),
    ({"sequester_targets": ["unet.nowhere"]}, "sequester target 'unet.nowhere' matches no"),
])
def test_bad_bands_and_policies_are_one_clear_error(model, tiny_cfg, smoke_dataset, routing, message):
    cfg = replace(tiny_cfg.routing, **{k: tuple(v) if isinstance(v, list) else v for k, v in routing.items()})
    with pytest.raises(GovlabError, match=message):
        prepare(model, cfg, smoke_dataset.records)


def test_config_rejects_an_unknown_mode(tiny_cfg):
    with pytest.raises(GovlabError, match="mode must be one of"):
        from_dict({"routing": {"mode": "sometimes"}}, base=tiny_cfg)
    assert RoutingConfig().mode == "off"


def test_policy_union_sequester_and_slots():
    p = RoutingPolicy({"style": ("slot",), "semantics": ("outer", "middle"), "composition": ("middle",),
                       "identity": ("identity",), "watermark": ("watermark",)},
                      sequestered=("identity", "watermark"), style_band="cross_attention")
    slots = {"artist_0"}
    assert p.allowed(["style", "semantics"], "artist_0", slots) == {"slot:artist_0", "outer", "middle", TRUNK}
    assert p.allowed(["composition"], "artist_0", slots) == {"middle", TRUNK}
    assert p.allowed(["style"], "artist_9", slots) == {TRUNK}  # no slot: its style reaches nothing
    assert p.allowed(["identity", "composition"], "webcrawl", slots) == {"identity"}  # sequestered: no union, no trunk
    assert p.allowed(["watermark", "identity"], "x", slots) == {"identity", "watermark"}
    # the style band is reached through the slot only, even when another category lists it
    q = replace(p, rules={**p.rules, "semantics": ("cross_attention",)})
    assert q.allowed(["style", "semantics"], "artist_0", slots) == {"slot:artist_0", TRUNK}
    assert q.allowed(["semantics"], "artist_0", slots) == {"cross_attention", TRUNK}
