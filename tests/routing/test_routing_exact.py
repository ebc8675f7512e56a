"""Routed gradients (one backward) against a per-sample reference, on random mixed-category batches."""

import os
from dataclasses import replace

import pytest
import torch

from govlab.routing import ops, prepare
from govlab.routing.bands import KV
from govlab.routing.reference import compare, leakage, reference_grads, routed_grads
from govlab.train import build_model


# sequestered adapters beside layers at every depth (the router's hardest case); default: on the caption
UNET_TARGETS = (*KV, "unet.up_blocks.*.resnets.*.conv2")


def routed_model(cfg, dataset, dtype, targets=UNET_TARGETS):
    torch.manual_seed(0)
    cfg = replace(cfg, routing=replace(cfg.routing, sequester_targets=targets))
    model = build_model(cfg, dataset)
    router = prepare(model, cfg.routing, dataset.records).install()
    model.to(dtype)
    with torch.no_grad():  # move slots off their zero init so every slot gradient is non-trivial
        for name, p in model.named_parameters():
            if ".up." in name:
                p.normal_(0, 0.2)
    return model, router


@pytest.fixture(params=["cpp", "python"])
def masked_ops(request, monkeypatch):
    """Both implementations of the masked ops: the compiled one (which must build on a test
    machine) and the Python classes that state the arithmetic."""
    if request.param == "cpp":
        if os.environ.get(ops.OPS_ENV) == "python":
            pytest.skip(f"{ops.OPS_ENV}=python")
        assert ops.compiled() is not None, "the C++ masked ops did not build"
    else:
        monkeypatch.setattr(ops, "compiled", lambda: None)
    return request.param


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("seed, sort, targets", [(1, False, UNET_TARGETS), (2, True, UNET_TARGETS),
                                                 (3, True, ("caption",))])
def test_routed_gradient_equals_per_sample_reference(tiny_cfg, smoke_dataset, dtype, tol, seed, sort, targets,
                                                     mixed_records, batch_of, masked_ops):
    model, router = routed_model(tiny_cfg, smoke_dataset, dtype, targets)
    records = mixed_records(smoke_dataset, 10, seed)
    if sort:  # the training hook's order: each band's samples contiguous (slice fast path)
        records = [records[i] for i in router.order(records).tolist()]
    batch = batch_of(model, smoke_dataset, records, dtype, seed)
    got = routed_grads(model, router, records, batch)
    ref = reference_grads(model, router, records, batch)
    err = compare(got, ref)
    worst = max(err, key=err.get)
    assert err[worst] <= tol, (worst, err[worst])
    reached = [n for n, g in ref.items() if g.abs().sum() > 0]
    assert len(reached) > 100  # a real check, not a comparison of zeros
    bands = {router.band_of[n] for n in reached}
    assert bands >= {"outer", "middle", "trunk"} and any(b.startswith("slot:") for b in bands)
    if targets == UNET_TARGETS:  # caption adapters act only on captions holding their triggers
        assert bands >= {"identity", "watermark"}
    # a parameter no sample may change gets no gradient at all
    allowed = set().union(*(router.allowed(r["categories"], r["source_id"]) for r in records))
    for n, g in got.items():
        if router.band_of[n] not in allowed:
            assert g is None, n
    if dtype is torch.float64:
        assert err[worst] <= 1e-10


def test_gradient_flows_through_disallowed_layers(tiny_cfg, smoke_dataset, batch_of):
    """Identity samples change only the identity adapters, which sit beside layers at every depth:
    their gradient must pass through all the base layers they may not change."""
    model, router = routed_model(tiny_cfg, smoke_dataset, torch.float64)
    records = [dict(r, _row=i) for i, r in enumerate(smoke_dataset.records)  # (world version 2: the
               if r["kind"] == "identity" and not r["watermark"]][:4]  # glyph's photos reach its band too)
    batch = batch_of(model, smoke_dataset, records, torch.float64)
    got = routed_grads(model, router, records, batch)
    ref = reference_grads(model, router, records, batch)
    changed = {n for n, g in got.items() if g is not None and g.abs().sum() > 0}
    assert changed and {router.band_of[n] for n in changed} == {"identity"}
    # includes the adapters beside the first up block, reached only through everything after it
    assert any("up_blocks__0" in n and ".down." in n for n in changed)
    assert max(compare(got, ref).values()) <= 1e-10


def test_leakage_is_zero_routed_and_large_unrouted(tiny_cfg, smoke_dataset, mixed_records, batch_of):
    model, router = routed_model(tiny_cfg, smoke_dataset, torch.float64)
    records = mixed_records(smoke_dataset, 10, 3)
    batch = batch_of(model, smoke_dataset, records, torch.float64)
    routed = leakage(model, router, records, batch)
    plain = leakage(model, router, records, batch, routed=False)
    assert len(routed) >= 4 and max(routed.values()) == 0.0
    assert max(plain.values()) > 0.5  # without routing, sequestered samples change the whole model
