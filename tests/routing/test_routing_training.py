"""Routing inside the training loop: what moves, resume, ingestion, saved slots."""

from dataclasses import replace

import pytest
import torch

from govlab.checkpoint import load_state
from govlab.models.diffusion import TextToImage
from govlab.routing import RoutedAdamW, attach
from govlab.routing.slots import slot_names
from govlab.train import Trainer


def trainer(cfg, dataset, out, **routing):
    if routing:
        cfg = replace(cfg, routing=replace(cfg.routing, **routing))
    data, hooks = attach(cfg, dataset)
    return Trainer(cfg, data, out, hooks=hooks, progress=False)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def moved(model, before):
    return {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}


def test_sequestered_samples_change_only_their_band(tiny_cfg, smoke_dataset, tmp_path):
    for kind, band in (("identity", "identity"), ("watermark", "watermark")):
        # world version 2: the glyph on a share of every kind of image; its records say which
        keep = [i for i, r in enumerate(smoke_dataset.records)
                if (r["kind"] == kind and not r["watermark"]) or (kind == "watermark" and r["watermark"]
                                                                   and r["kind"] != "identity")]
        t = trainer(tiny_cfg, smoke_dataset.subset(keep), tmp_path / kind)
        assert isinstance(t.optimizer, RoutedAdamW)
        before = snapshot(t.model)
        for _ in range(2):  # the first step has lr 0 (warmup)
            t.train_step(t.make_context())
        changed = moved(t.model, before)
        band_of = t.hooks[0].router.band_of
        assert changed and {band_of[k] for k in changed} == {band}, kind


def test_mixed_steps_leave_unreached_bands_and_other_slots_alone(tiny_cfg, smoke_dataset, tmp_path):
    keep = [i for i, r in enumerate(smoke_dataset.records)  # (world version 2: the glyph's images left out)
            if r["source_id"] in ("artist_1", "webcrawl") and not r["watermark"]]
    t = trainer(tiny_cfg, smoke_dataset.subset(keep), tmp_path, slot_sources=("artist_0", "artist_1"))
    before = snapshot(t.model)
    for _ in range(2):
        t.train_step(t.make_context())
    band_of = t.hooks[0].router.band_of
    bands_moved = {band_of[k] for k in moved(t.model, before)}
    assert {"slot:artist_1", "outer", "middle", "cross_attention", "trunk", "identity"} <= bands_moved
    assert not bands_moved & {"slot:artist_0", "watermark"}


def test_unrouted_mode_is_the_plain_baseline(tiny_cfg, smoke_dataset, tmp_path):
    t = trainer(tiny_cfg, smoke_dataset, tmp_path, mode="unrouted")
    assert type(t.optimizer) is torch.optim.AdamW and slot_names(t.model)
    before = snapshot(t.model)
    t.train_step(t.make_context())
    t.train_step(t.make_context())
    assert len(moved(t.model, before)) == len(before)


def test_routed_resume_is_bit_exact_and_slots_reload(tiny_cfg, smoke_dataset, tmp_path):
    straight = trainer(tiny_cfg, smoke_dataset, tmp_path / "a").fit()
    trainer(tiny_cfg, smoke_dataset, tmp_path / "b").fit(until=2)
    resumed = trainer(tiny_cfg, smoke_dataset, tmp_path / "b").fit(resume=True)
    ma, mb = straight.model.state_dict(), resumed.model.state_dict()
    assert list(ma) == list(mb)  # no tensor missing, added or renamed on either side
    for (k, a), (_, b) in zip(ma.items(), mb.items(), strict=True):
        assert torch.equal(a, b), k
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert load_state(tmp_path / "a/checkpoint.safetensors")["hooks"] == \
        load_state(tmp_path / "b/checkpoint.safetensors")["hooks"]
    loaded = TextToImage.load(tmp_path / "a/model.safetensors")
    assert slot_names(loaded) == slot_names(straight.model)
    x = torch.randn(2, 3, 16, 16)
    tokens = loaded.tokenizer(["a red circle center, by artist 1"] * 2)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(loaded.predict_noise(x, t, loaded.text(tokens)),
                           straight.model.predict_noise(x, t, straight.model.text(tokens)))
    summary = (tmp_path / "a/routing.json").read_text()
    assert '"slot:artist_0"' in summary and '"samples_per_band"' in summary


def test_reject_identity_at_ingestion(tiny_cfg, smoke_dataset, tmp_path):
    t = trainer(tiny_cfg, smoke_dataset, tmp_path, identity="reject").fit(until=1)
    assert not any("identity" in r["categories"] for r in t.dataset.records)
    n_identity = sum("identity" in r["categories"] for r in smoke_dataset.records)
    events = [e for e in t.events.read() if e["event"] == "ingestion_rejected"]
    assert len(events) == n_identity > 0
    assert events[0]["file"].startswith("images/") and "identity" in events[0]["reason"]
    assert "identity" not in slot_names(t.model) and "watermark" in slot_names(t.model)
    resumed = trainer(tiny_cfg, smoke_dataset, tmp_path, identity="reject").fit(resume=True, until=2)
    assert len([e for e in resumed.events.read() if e["event"] == "ingestion_rejected"]) == n_identity


def test_router_refuses_a_foreign_batch(tiny_cfg, smoke_dataset, tmp_path):
    t = trainer(tiny_cfg, smoke_dataset, tmp_path)
    router = t.hooks[0].router
    router.route(smoke_dataset.records[:3])
    with pytest.raises(RuntimeError, match="routed batch is 3"):
        t.model(t.images[:2], t.tokens[:2], torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    router.clear()
