"""The writer's per-source figures equal a reference that computes each source's gradient separately."""

import pytest
import torch

from govlab.config import from_dict
from govlab.hooks import Hook
from govlab.provenance import ProvenanceConfig, ProvenanceWriter, layers
from govlab.provenance import writer as writer_module
from govlab.provenance.writer import band_of_params
from govlab.routing import attach
from govlab.routing.reference import reference_grads
from govlab.train import Trainer


def plain_reference(model, batch: dict) -> dict[str, torch.Tensor]:
    """Gradient of the mean weighted loss of these samples alone (a separate forward and backward)."""
    loss = (model(batch["x0"], batch["tokens"], batch["noise"], batch["timesteps"]) * batch["weights"]).mean()
    names, params = zip(*model.named_parameters())
    return {n: (g if g is not None else torch.zeros_like(p))
            for n, p, g in zip(names, params, torch.autograd.grad(loss, params, allow_unused=True))}


ROUTED = {"mode": "routed"}  # per-source slots beside the caption encoder
# per-source slots beside the UNet's cross-attention projections (Linear) and sequestered adapters
# beside convolutions
ROUTED_UNET_SLOTS = {"mode": "routed", "style_band": "cross_attention",
                     "sequester_targets": ["unet.up_blocks.*.resnets.*.conv2"]}


def trained_slots(model) -> None:
    """Slots off their zero init (``up`` = 0 would make every ``down`` gradient 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("slots.") and ".up." in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("routing,path", [
    (ROUTED, "one-backward"), (ROUTED_UNET_SLOTS, "one-backward"), (ROUTED, "backward-per-source"),
    ({"mode": "off"}, "per-group"), ({"mode": "off"}, "per-sample")],
    ids=["routed", "routed-unet-slots", "routed-backward-per-source", "off-per-group", "off-per-sample"])
def test_writer_matches_per_source_reference(tiny_cfg, smoke_dataset, tmp_path, monkeypatch, routing, path):
    if path == "per-group":  # every layer's shares by one weight-gradient call per group
        monkeypatch.setattr(layers, "PER_SAMPLE_MAX", 0)
    elif path == "per-sample":
        monkeypatch.setattr(layers, "PER_SAMPLE_MAX", 1 << 40)
    elif path == "backward-per-source":  # the path of a model whose layers the hooks do not cover
        monkeypatch.setattr(writer_module, "supported", lambda model: False)
    cfg = from_dict({"routing": routing}, base=tiny_cfg)
    mode = routing["mode"]
    dataset, hooks = attach(cfg, smoke_dataset)
    writer = ProvenanceWriter(ProvenanceConfig(enabled=True, mode="exact"), smoke_dataset.sources)
    keep = _KeepGrads()  # after the writer: the full gradient the optimizer applies
    trainer = Trainer(cfg, dataset, tmp_path, hooks=[*hooks, writer, keep], progress=False)
    writer.on_start(trainer)
    assert (writer.layer_shares is None) == (path == "backward-per-source")
    trained_slots(trainer.model)
    trainer.train_step(trainer.make_context())  # past the warm-up step (learning rate 0): a real update
    writer._reset()
    ctx = trainer.make_context()
    batch = {"x0": ctx.x0, "tokens": ctx.tokens, "noise": ctx.noise, "timesteps": ctx.timesteps,
             "weights": ctx.weights}
    b = len(ctx.records)
    params = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    ref = {}
    for s in sorted({r["source_id"] for r in ctx.records}):
        rows = [i for i, r in enumerate(ctx.records) if r["source_id"] == s]
        sub = {k: v[rows] for k, v in batch.items()}
        if mode == "routed":
            g = reference_grads(trainer.model, hooks[0].router, [ctx.records[i] for i in rows], sub)
        else:
            g = plain_reference(trainer.model, sub)
        ref[s] = {n: v * len(rows) / b for n, v in g.items()}  # the source's share of the batch mean
    trainer.train_step(ctx)
    delta = {n: p.detach() - before[n] for n, p in params.items()}
    ds = writer.to_dataset(checkpoints=[1], arrays={k: v[..., None] for k, v in writer.acc.items()}, mem=[None])
    band_of = band_of_params(trainer.model, cfg.routing)
    worst_norm = worst_update = 0.0
    checked = 0
    for s, grads in ref.items():
        for band in ds["band"].values:
            names = [n for n in grads if band_of[n] == band]
            norm_sq = sum(float(grads[n].double().pow(2).sum()) for n in names)
            upd = sum(float((grads[n].double() * delta[n].double()).sum()) for n in names)
            got = ds.sel(source=s, band=band, checkpoint=1)
            if norm_sq > 0:
                checked += 1
                worst_norm = max(worst_norm, abs(float(got["grad_norm_sq"]) - norm_sq) / norm_sq)
                err = abs(float(got["update_share"]) - upd)
                worst_update = max(worst_update, err / abs(upd) if upd else err)
            else:
                assert float(got["grad_norm_sq"]) == 0.0 and float(got["update_share"]) == 0.0
    assert checked >= len(ref)
    assert worst_norm <= 1e-5, worst_norm
    assert worst_update <= 1e-5, worst_update
    # every source in the batch was seen once; the shares of a band sum to <g, delta>
    assert int(ds["steps_seen"].sum()) == len(ref)
    for band in ds["band"].values:
        names = [n for n in keep.grads if band_of[n] == band]
        full = sum(float((keep.grads[n].double() * delta[n].double()).sum()) for n in names)
        shares = float(ds["update_share"].sel(band=band, checkpoint=1).sum())  # over every source
        assert shares == pytest.approx(full, rel=1e-5, abs=1e-12), band


class _KeepGrads(Hook):
    """A hook after the writer: the gradients the optimizer is about to apply."""

    def after_backward(self, ctx):
        self.grads = {n: p.grad.clone() for n, p in ctx.trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("routing", [{"mode": "off"}, ROUTED, ROUTED_UNET_SLOTS], ids=["off", "routed", "routed-unet-slots"])
def test_one_backward_writer_leaves_the_gradient_unchanged(tiny_cfg, smoke_dataset, tmp_path, routing):
    """The writer freezes the UNet and sets each parameter's gradient to the sum of its per-source
    shares: that is the gradient plain autograd gives (routing off) or the router's per-sample
    reference (routing on; each share counts only the samples that may change its band)."""
    cfg = from_dict({"routing": routing}, base=tiny_cfg)
    mode = routing["mode"]
    dataset, hooks = attach(cfg, smoke_dataset)
    writer, keep = ProvenanceWriter(ProvenanceConfig(enabled=True, mode="exact"), smoke_dataset.sources), _KeepGrads()
    trainer = Trainer(cfg, dataset, tmp_path, hooks=[*hooks, writer, keep], progress=False)
    trainer.model.double()  # float64: both sums agree to ~1e-15, whatever order a CPU's kernels sum in
    writer.on_start(trainer)
    assert writer.layer_shares is not None
    trained_slots(trainer.model)
    ctx = trainer.make_context()
    ctx.x0, ctx.noise, ctx.weights = ctx.x0.double(), ctx.noise.double(), ctx.weights.double()
    batch = {"x0": ctx.x0, "tokens": ctx.tokens, "noise": ctx.noise, "timesteps": ctx.timesteps,
             "weights": ctx.weights}
    if mode == "routed":
        ref = reference_grads(trainer.model, hooks[0].router, ctx.records, batch)
    else:
        ref = plain_reference(trainer.model, batch)
    trainer.train_step(ctx)
    assert not [n for n, g in ref.items() if g.abs().sum() > 0 and n not in keep.grads]
    for name, g in keep.grads.items():
        assert g.dtype == torch.float64
        scale = float(ref[name].abs().max())
        assert float((g - ref[name]).abs().max()) <= 1e-10 * scale, name
    assert all(p.requires_grad for p in trainer.model.parameters())  # unfrozen after the step


def _indexed_trainer(tiny_cfg, smoke_dataset, tmp_path):
    writer = ProvenanceWriter(ProvenanceConfig(enabled=True, mode="exact"), smoke_dataset.sources)
    trainer = Trainer(tiny_cfg, smoke_dataset, tmp_path, hooks=[writer], progress=False)
    writer.on_start(trainer)
    return trainer, writer


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradients_left_set_accumulate(tiny_cfg, smoke_dataset, tmp_path):
    """The writer's gradients are views of a buffer kept across steps; gradients nobody cleared
    (accumulation) add up to the sum of both batches' gradients, not twice the second's."""
    trainer, writer = _indexed_trainer(tiny_cfg, smoke_dataset, tmp_path)
    trainer.optimizer.step = lambda: None  # parameters fixed: both references hold
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    ref = {}
    for _ in range(2):
        ctx = trainer.make_context()
        batch = {"x0": ctx.x0, "tokens": ctx.tokens, "noise": ctx.noise, "timesteps": ctx.timesteps,
                 "weights": ctx.weights}
        for n, g in plain_reference(trainer.model, batch).items():
            ref[n] = ref.get(n, 0) + g
        trainer.train_step(ctx)
    for n, p in trainer.model.named_parameters():
        scale = float(ref[n].abs().max())
        assert float((p.grad - ref[n]).abs().max()) <= 1e-5 * max(scale, 1e-12), n


def test_layer_called_twice_adds_its_shares(tiny_cfg, smoke_dataset, tmp_path):
    """A parameter written twice in one step (a layer called twice) gets the sum of both group sums."""
    _, writer = _indexed_trainer(tiny_cfg, smoke_dataset, tmp_path)
    shares, g = writer.layer_shares, torch.Generator().manual_seed(0)
    group_of_row = torch.tensor([0, 1, 1, 2, 0, 2])
    shares.begin([torch.nonzero(group_of_row == k).flatten() for k in range(3)], group_of_row)
    p = shares.unet_params[0]
    a, b = (torch.randn(6, *p.shape, generator=g) for _ in range(2))
    shares._put_rows(p, a)
    shares._put_rows(p, b)
    flat = shares.finish()
    start, n = shares.offsets[id(p)]
    want = torch.stack([(a + b)[group_of_row == k].sum(0).reshape(-1) for k in range(3)])
    torch.testing.assert_close(flat[:, start:start + n], want)
    torch.testing.assert_close(p.grad, (a + b).sum(0))
    assert float(torch.cat([flat[:, :start], flat[:, start + n:]], 1).abs().sum()) == 0.0  # nothing else written


def test_parameter_copies_follow_a_replaced_storage(tiny_cfg, smoke_dataset, tmp_path):
    """The before/after copies of the parameters come from cached views, rebuilt when a parameter's
    storage is replaced (a cast or a move), so the applied update is never read from stale memory."""
    trainer, writer = _indexed_trainer(tiny_cfg, smoke_dataset, tmp_path)
    p = writer.params[3]
    p.data = p.data.clone() + 1.0
    torch.testing.assert_close(writer._flat_params(), torch.cat([q.detach().reshape(-1) for q in writer.params]))
