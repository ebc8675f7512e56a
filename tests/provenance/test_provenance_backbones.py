"""The index's per-source figures on every backbone of govlab's own loop (the SD3-style MMDiT with
rectified flow, the latent UNet), against the per-source reference of ``test_provenance_exact``."""

import pytest

from govlab.config import from_dict
from tests.provenance import test_provenance_exact as exact

BACKBONES = {"dit": ({"backbone": "dit", "dit_layers": 3}, ["unet.transformer_blocks.*.attn.add_k_proj"]),
             "latent-unet": ({"latent": True, "vae_steps": 0}, ["unet.*.attn2.to_k", "unet.*.attn2.to_v"])}


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("mode", ["routed", "off"])
def test_writer_matches_per_source_reference_on_each_backbone(tiny_cfg, smoke_dataset, tmp_path, monkeypatch,
                                                              backbone, mode):
    model, targets = BACKBONES[backbone]
    cfg = from_dict({"model": model}, base=tiny_cfg)
    routing = {"mode": "routed", "sequester_targets": targets} if mode == "routed" else {"mode": "off"}
    exact.test_writer_matches_per_source_reference(cfg, smoke_dataset, tmp_path, monkeypatch, routing,
                                                   "one-backward" if mode == "routed" else "per-sample")
