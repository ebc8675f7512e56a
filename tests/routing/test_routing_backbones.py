"""Routing on every backbone of govlab's own loop: the SD3-style MMDiT (rectified flow) and the
latent UNet, against the per-sample reference of ``test_routing_exact``; leakage 0."""

import pytest
import torch

from govlab.config import from_dict
from govlab.models.diffusion import to_float
from govlab.routing.reference import leakage
from tests.routing import test_routing_exact as exact

# sequestered adapters beside the caption key/value projections of each backbone; the per-source slots
# on the caption
BACKBONES = {"dit": ({"backbone": "dit", "dit_layers": 3}, ("unet.transformer_blocks.*.attn.add_k_proj",)),
             "latent-unet": ({"latent": True, "vae_steps": 0}, ("unet.*.attn2.to_k", "unet.*.attn2.to_v"))}


def backbone_batch(model, dataset, records, dtype=torch.float32, seed=0) -> dict:
    """``make_batch`` of the routing tests with noise of the model's input shape (latents or pixels)."""
    g = torch.Generator().manual_seed(seed)
    b = len(records)
    return {"x0": to_float(dataset.images[[r["_row"] for r in records]]).to(dtype),
            "tokens": model.tokenizer([r["caption"] for r in records]),
            "noise": torch.randn(b, *model.noise_shape, generator=g).to(dtype),
            "timesteps": torch.randint(0, 1000, (b,), generator=g),
            "weights": torch.rand(b, generator=g).to(dtype) + 0.5}


@pytest.fixture(params=list(BACKBONES))
def backbone(request, tiny_cfg):
    model, targets = BACKBONES[request.param]
    return from_dict({"model": model}, base=tiny_cfg), targets


def test_routed_gradient_equals_per_sample_reference_on_each_backbone(backbone, smoke_dataset, mixed_records):
    cfg, targets = backbone
    exact.test_routed_gradient_equals_per_sample_reference(
        cfg, smoke_dataset, torch.float64, 1e-5, 2, True, targets, mixed_records, backbone_batch, "cpp")


def test_leakage_is_zero_on_each_backbone(backbone, smoke_dataset, mixed_records):
    cfg, targets = backbone
    model, router = exact.routed_model(cfg, smoke_dataset, torch.float64, targets)
    records = mixed_records(smoke_dataset, 10, 3)
    batch = backbone_batch(model, smoke_dataset, records, torch.float64)
    routed = leakage(model, router, records, batch)
    assert len(routed) >= 4 and max(routed.values()) == 0.0
