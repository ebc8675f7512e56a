"""Governance on a foreign diffusers loop: tiny random-weight pipelines built offline."""

import json
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

from govlab.errors import GovlabError


@pytest.fixture(scope="session")
def foreign(tmp_path_factory):
    from datasets import load_dataset

    from govlab.testing import build_tiny_pipeline, write_tiny_imagefolder

    base = tmp_path_factory.mktemp("foreign")
    data_dir = write_tiny_imagefolder(base / "data", 16)
    pipes = {b: build_tiny_pipeline(base / b, b) for b in ("unet", "sd3")}
    return types.SimpleNamespace(base=base, data_dir=data_dir, pipes=pipes,
                                 data=load_dataset("imagefolder", data_dir=str(data_dir), split="train"))


def test_import_is_cheap_and_lists_the_public_api():
    code = "import sys, govlab; print(sorted(govlab.__all__)); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    names = eval(out[0])
    for name in ("Governance", "Router", "RoutedAdamW", "ProvenanceWriter", "ProvenanceIndex", "MemorizationMonitor",
                 "RoutingConfig", "ProvenanceConfig", "MemorizationConfig", "ExcludingSampler", "testing"):
        assert name in names
    assert out[1] == "False"
    import govlab

    assert govlab.Governance.__module__ == "govlab.api"


def test_bands_derived_by_depth(foreign):
    from govlab.bench.foreign import load
    from govlab.routing.bands import assign, make_bands, model_presets

    for b, n_kv in (("unet", 8), ("sd3", 16)):
        den = load(foreign.pipes[b])[0]
        bands = make_bands({"outer": "preset", "middle": "preset", "cross_attention": "preset"}, den)
        owner = assign([n for n, _ in den.named_parameters()], bands)
        counts = {k: sum(v == k for v in owner.values()) for k in ("outer", "middle", "cross_attention")}
        assert all(counts.values()) and counts["cross_attention"] == n_kv  # weight and bias of K and V
        assert not any(p.startswith("unet.") for band in model_presets(den).values() for p in band.patterns)
    with pytest.raises(GovlabError, match="no diffusers UNet"):
        make_bands({"outer": "preset"}, nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(GovlabError, match="matches no parameter"):
        assign(["a.weight"], make_bands({"x": ["conv_*"]}, 1))


def test_sequestered_category_without_a_band_is_refused(foreign):
    from govlab.api import Governance, GovernanceConfig, foreign_routing
    from govlab.bench.foreign import load

    den = load(foreign.pipes["unet"])[0]
    cfg = GovernanceConfig(routing=foreign_routing(sequester_targets=()), provenance=None, memorization=None)
    with pytest.raises(GovlabError, match="sequestered category 'identity'"):
        Governance(den, foreign.data, foreign.base / "x", config=cfg)


def test_record_without_source_id_is_refused(foreign):
    from govlab.api import Governance

    with pytest.raises(GovlabError, match="source_id"):
        Governance(nn.Linear(2, 2), [{"caption": "a", "categories": ["style"]}], foreign.base / "y")


@pytest.mark.parametrize("backbone", ["unet", "sd3"])
def test_routing_exact_on_foreign_denoisers(foreign, backbone):
    from govlab.bench.foreign import routing_exact

    assert routing_exact(foreign.pipes[backbone], foreign.data, list(range(8))) <= 1e-5


@pytest.mark.parametrize("backbone", ["unet", "sd3"])
def test_index_exact_on_foreign_denoisers(foreign, backbone):
    """The one-backward index's per-source figures against one autograd backward per source."""
    from govlab.bench.foreign import index_exact

    assert index_exact(foreign.pipes[backbone], foreign.data, list(range(8))) <= 1e-5
    assert index_exact(foreign.pipes[backbone], foreign.data, list(range(8)), routed=False) <= 1e-5


def test_gradient_clipping_scales_the_index_shares(foreign):
    """``gov.clip_grad_norm_`` between backward and step clips the gradient the one-backward path
    sets, and the per-source shares with it (they still sum to the applied gradient)."""
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import batch_inputs, load, per_sample

    den, text, tok, _, _ = load(foreign.pipes["unet"])
    gov = Governance(den, foreign.data, foreign.base / "clip", config=GovernanceConfig(memorization=None))
    opt = gov.optimizer(lr=1e-4)
    with pytest.raises(GovlabError, match="between loss"):
        gov.clip_grad_norm_(1.0)
    batch = gov.begin({"row": torch.arange(8)})
    d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, batch["row"].tolist())
    gov.loss(per_sample(d, x, t, cond, target)).backward()
    total = float(gov.clip_grad_norm_(1e-3))
    params = gov.writer.params
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    assert total > 1e-2 and float(grads.norm()) == pytest.approx(1e-3, rel=1e-4)
    shares, ids = gov.writer._shares.clone(), gov.writer._ids
    assert float((shares.sum(0) - grads).abs().max()) <= 1e-5 * float(grads.abs().max())
    opt.step()
    got = gov.writer.acc["grad_norm_sq"][ids].sum(1)  # the clipped shares went into the index
    assert torch.allclose(got, shares.double().pow(2).sum(1), rtol=1e-5, atol=0)


def test_index_figures_of_a_band_of_millions_of_parameters():
    """A foreign denoiser's band holds millions of parameters; torch's float32 norm and product over
    one row that long drift by about 1e-5 (the per-source figures read low against float64)."""
    from govlab.provenance.writer import band_figures

    g = torch.Generator().manual_seed(0)
    shares, delta = torch.randn(3, 3_000_017, generator=g), torch.randn(3_000_017, generator=g)
    spans = [slice(0, 7), slice(7, 2_000_000), slice(2_000_000, 3_000_017)]
    norm_sq, update = band_figures(shares, delta, spans)
    want_norm = torch.stack([shares[:, s].double().pow(2).sum(1) for s in spans], 1)
    want_update = torch.stack([shares[:, s].double().mv(delta[s].double()) for s in spans], 1)
    assert float(((norm_sq - want_norm) / want_norm).abs().max()) <= 1e-6
    assert float((update - want_update).abs().max()) <= 1e-6 * float(want_norm.sqrt().max() * delta.norm())


def test_detectors_on_latent_flow_model_and_a_text_encoder_without_hidden_states(foreign):
    from govlab.api import DiffusersDenoiser
    from govlab.bench.foreign import detectors_ok, load

    assert detectors_ok(foreign.pipes["sd3"], foreign.data, [0, 1, 2, 3])
    den, text, tok, vae, sched = load(foreign.pipes["unet"])
    no_hidden = lambda ids, **kw: types.SimpleNamespace(pooler_output=torch.zeros(len(ids), 32))  # noqa: E731
    with pytest.raises(GovlabError, match="no hidden states"):
        DiffusersDenoiser(den, no_hidden, tok, sched, vae).encode(["a red circle"])


def test_governed_example_is_ten_lines_and_resumes_exactly(foreign):
    from govlab.bench.foreign import changed_lines, resume_equal

    assert changed_lines() <= 10
    assert resume_equal(foreign.pipes["unet"], foreign.data_dir, foreign.base / "resume")


def test_resume_with_state_of_another_config_is_refused(foreign):
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import load

    den = load(foreign.pipes["unet"])[0]
    a = Governance(den, foreign.data, foreign.base / "a", config=GovernanceConfig(memorization=None))
    b = Governance(load(foreign.pipes["unet"])[0], foreign.data, foreign.base / "b",
                   config=GovernanceConfig(memorization=None, name="other"))
    with pytest.raises(GovlabError, match="another governance config"):
        b.load_state_dict(a.state_dict())


def _train_rows(sampler, steps, *, drop_last=True, batch=4):
    """The rows a ``while step < steps`` loop over a DataLoader trains, batch by batch."""
    loader = torch.utils.data.DataLoader(list(range(sampler.n)), sampler=sampler, batch_size=batch,
                                         drop_last=drop_last)
    out = []
    for _ in range(steps + 2):  # passes over the loader (one that yields nothing never ends the loop)
        for b in loader:
            sampler.consumed(len(b))
            out.append(b.tolist())
            if len(out) >= steps:
                return out
    raise AssertionError(f"{len(out)} of {steps} steps trained: passes over the loader yield nothing")


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_ends_an_epoch_whose_last_batch_is_partial(drop_last):
    """10 rows in batches of 4: each epoch ends (``drop_last``: after 2 batches, else after 3), also
    with excluded rows, and a run resumed at any step trains what an uninterrupted one does."""
    from govlab.api import ExcludingSampler

    s = ExcludingSampler(10, seed=3)
    full = _train_rows(s, 9, drop_last=drop_last)
    per_epoch = 2 if drop_last else 3
    for e in range(3):
        epoch = full[e * per_epoch:(e + 1) * per_epoch]
        assert [len(b) for b in epoch] == ([4, 4] if drop_last else [4, 4, 2])
        assert len({r for b in epoch for r in b}) == sum(len(b) for b in epoch)  # no row twice in an epoch
    for cut in range(1, 9):
        a = ExcludingSampler(10, seed=3)
        head = _train_rows(a, cut, drop_last=drop_last)
        b = ExcludingSampler(10, seed=3)
        b.load_state_dict(a.state_dict())
        assert head + _train_rows(b, 9 - cut, drop_last=drop_last) == full
    s = ExcludingSampler(10, seed=3)  # a drop leaves 7 rows from the next epoch on
    first = _train_rows(s, 2)
    s.exclude(first[0][:3])
    rest = _train_rows(s, 4)
    assert [len(b) for b in rest] == [4, 4, 4, 4] and not {r for b in rest[2:] for r in b} & set(first[0][:3])


def test_construction_makes_the_output_folder_and_refuses_regularize(foreign):
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import load
    from govlab.memorization.config import MemorizationConfig

    den, text, tok, vae, sched = load(foreign.pipes["unet"])
    out = foreign.base / "new" / "out"
    Governance(den, foreign.data, out, config=GovernanceConfig(routing=None, provenance=None, memorization=None))
    assert out.is_dir()  # events.jsonl is written at the first check, before any save_state
    for regularize in ("caption", "embedding"):
        cfg = GovernanceConfig(routing=None, provenance=None, memorization=MemorizationConfig(
            mode="monitor", intervention="regularize", regularize=regularize))
        with pytest.raises(GovlabError, match="memorization.intervention 'regularize'"):
            Governance(den, foreign.data, foreign.base / "reg", config=cfg, text_encoder=text, tokenizer=tok,
                       scheduler=sched, vae=vae)


def test_adapters_follow_the_denoiser_and_fp16_is_refused_with_the_index(foreign):
    """The adapters live outside the denoiser (``accelerator.prepare`` moves only the denoiser): the
    first step moves them to its device. accelerate's fp16 GradScaler would unscale no gradient."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import load

    den = load(foreign.pipes["unet"])[0]
    gov = Governance(den, foreign.data, foreign.base / "dev", config=GovernanceConfig(memorization=None))
    den.to("meta")  # stands in for accelerate's move to the GPU
    gov._start()
    assert {p.device.type for p in gov.model.parameters()} == {"meta"}
    gov = Governance(load(foreign.pipes["unet"])[0], foreign.data, foreign.base / "fp16",
                     config=GovernanceConfig(memorization=None))
    try:
        Accelerator(mixed_precision="fp16", cpu=True)
        with pytest.raises(GovlabError, match="mixed_precision 'fp16'"):
            gov.begin({"row": torch.arange(4)})
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_resume_does_not_log_the_saved_interventions_again(foreign):
    """save_state runs before ``checkpoint()``, which logs the interventions the state still holds."""
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import load

    den, text, tok, vae, sched = load(foreign.pipes["unet"])
    kw = dict(config=GovernanceConfig(routing=None, provenance=None), text_encoder=text, tokenizer=tok,
              scheduler=sched, vae=vae)
    a = Governance(den, foreign.data, foreign.base / "ev", **kw)
    a.step, a.monitor.applied = 2, {"attenuate": {1, 5}}
    state = a.state_dict()  # save_state, then checkpoint() logs and clears
    a.checkpoint(2)
    b = Governance(den, foreign.data, foreign.base / "ev", **kw)
    b.load_state_dict(state)
    b.checkpoint(4)
    events = [json.loads(line) for line in (foreign.base / "ev" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "memorization_intervention"] == [1]


@pytest.mark.parametrize("backbone", ["unet", "sd3"])
def test_zeroing_a_source_slot_on_the_text_states_changes_that_source_only(foreign, backbone):
    """Per-source slots on the text encoder's output (``encoder_hidden_states``): after a few
    governed steps, zeroing one source's slot changes its samples' predictions (back to the shared
    model's, exactly) and no other sample's, bit for bit."""
    from govlab.bench.foreign import slot_removal

    got = slot_removal(foreign.pipes[backbone], foreign.data, list(range(8)), steps=2)
    assert got["slot_rank"] > 0 and got["layers"] == 1
    assert got["own_changed"] > 0 and got["others_changed"] == 0 and got["own_back_to_shared"] == 0


def test_text_states_slots_refuse_bad_input(foreign):
    """A text encoder without hidden states, a denoiser called without them, an unknown slot."""
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import load

    den, text, tok, vae, sched = load(foreign.pipes["unet"])

    class PooledOnly(nn.Module):  # a text encoder that returns only a pooled vector
        def forward(self, ids, **kw):
            return types.SimpleNamespace(pooler_output=torch.zeros(len(ids), 32))

    out = foreign.base / "no-hidden"
    with pytest.raises(GovlabError, match="PooledOnly returns no hidden states"):
        Governance(den, foreign.data, out, text_encoder=PooledOnly(), tokenizer=tok, scheduler=sched,
                   config=GovernanceConfig(provenance=None, memorization=None))
    assert not out.exists()  # nothing written
    gov = Governance(load(foreign.pipes["unet"])[0], foreign.data, foreign.base / "slots-bad",
                     config=GovernanceConfig(provenance=None, memorization=None))
    x = torch.randn(2, 4, 16, 16)
    with pytest.raises(GovlabError, match=r"without encoder_hidden_states of shape \(batch, tokens, 32\)"):
        gov.model.unet(x, torch.tensor([1, 1]), encoder_hidden_states=torch.randn(2, 16, 8))
    with pytest.raises(GovlabError, match="no slot 'nobody' on the text encoder's output"):
        with gov.slots.using("nobody"):
            pass
    with pytest.raises(GovlabError, match="no slot 'nobody'"):
        gov.scale_slot("nobody", 0.0)


def test_gradient_accumulation_with_the_index_is_refused(foreign):
    """Two backward passes before one optimizer step: the index's per-source shares come from one
    backward, so the second ``begin`` (or a second ``loss``) is one clear error."""
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import batch_inputs, load, per_sample

    den, text, tok, _, _ = load(foreign.pipes["unet"])
    gov = Governance(den, foreign.data, foreign.base / "accum", config=GovernanceConfig(memorization=None))
    gov.optimizer(lr=1e-4)
    batch = gov.begin({"row": torch.arange(4)})
    d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, batch["row"].tolist())
    loss = per_sample(d, x, t, cond, target)
    gov.loss(loss).backward(retain_graph=True)
    with pytest.raises(GovlabError, match="loss\\(\\) twice in one step"):
        gov.loss(loss)
    with pytest.raises(GovlabError, match="gradient accumulation .* not supported with the provenance index"):
        gov.begin({"row": torch.arange(4, 8)})


def test_a_model_no_band_matches_is_refused_before_anything_is_written(foreign):
    from govlab.api import Governance

    out = foreign.base / "no-band"
    with pytest.raises(GovlabError, match="holds no diffusers UNet .* or SD3-style MMDiT"):
        Governance(nn.Sequential(nn.Linear(2, 2)), foreign.data, out)
    assert not out.exists()


def test_imagefolder_record_without_source_id_is_refused_naming_the_image(foreign, tmp_path):
    import shutil

    from datasets import load_dataset

    from govlab.api import Governance

    data = tmp_path / "data"
    shutil.copytree(foreign.data_dir, data)
    lines = (data / "metadata.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    del first["source_id"]
    (data / "metadata.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    ds = load_dataset("imagefolder", data_dir=str(data), split="train")
    out = tmp_path / "out"
    with pytest.raises(GovlabError, match=rf"{first['file_name']} has no 'source_id'"):
        Governance(nn.Linear(2, 2), ds, out)
    assert not out.exists()
