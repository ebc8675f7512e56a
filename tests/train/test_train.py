import pytest
import torch

from govlab.checkpoint import load_state
from govlab.config import from_dict
from govlab.errors import GovlabError
from govlab.hooks import Hook
from govlab.train import EpochSampler, Trainer


@pytest.fixture
def cfg(smoke_cfg):
    return from_dict({"train": {"steps": 6, "checkpoint_every": 3}}, base=smoke_cfg)


def test_training_steps_move_every_parameter_and_loss_is_finite(cfg, smoke_dataset, tmp_path):
    trainer = Trainer(cfg, smoke_dataset, tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    losses = [trainer.train_step(trainer.make_context()) for _ in range(2)]  # LR warms up from 0
    assert all(torch.isfinite(torch.tensor(x)) and x > 0 for x in losses)
    moved = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) == len(before)


def test_resume_is_bit_exact(cfg, smoke_dataset, tmp_path):
    straight = Trainer(cfg, smoke_dataset, tmp_path / "a", progress=False).fit()
    Trainer(cfg, smoke_dataset, tmp_path / "b", progress=False).fit(until=3)
    resumed = Trainer(cfg, smoke_dataset, tmp_path / "b", progress=False).fit(resume=True)
    assert resumed.step == straight.step == 6
    ma, mb = straight.model.state_dict(), resumed.model.state_dict()
    assert list(ma) == list(mb)  # no tensor missing, added or renamed on either side
    for (k, a), (_, b) in zip(ma.items(), mb.items(), strict=True):
        assert torch.equal(a, b), k
    sa, sb = load_state(tmp_path / "a/checkpoint.safetensors"), load_state(tmp_path / "b/checkpoint.safetensors")
    assert torch.equal(sa["rng"], sb["rng"]) and sa["sampler"] == sb["sampler"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_resume_refuses_another_config(cfg, smoke_dataset, tmp_path):
    Trainer(cfg, smoke_dataset, tmp_path, progress=False).fit(until=3)
    other = from_dict({"train": {"lr": 0.5}}, base=cfg)
    with pytest.raises(GovlabError, match="different config"):
        Trainer(other, smoke_dataset, tmp_path, progress=False).fit(resume=True)


def test_resume_refuses_other_data(cfg, smoke_dataset, tmp_path):
    """Same config, other data: a source's records gone, or one image edited (same records, same
    vocabulary: the model would load and train on shifted rows)."""
    from dataclasses import replace

    Trainer(cfg, smoke_dataset, tmp_path, progress=False).fit(until=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    fewer = smoke_dataset.subset([i for i, r in enumerate(smoke_dataset.records) if r["source_id"] != "artist_1"])
    edited = smoke_dataset.images.clone()
    edited[5, 0, 0, 0] ^= 1
    for other in (fewer, replace(smoke_dataset, images=edited)):
        with pytest.raises(GovlabError, match=r"checkpoint.safetensors: trained on other data"):
            Trainer(cfg, other, tmp_path, progress=False).fit(resume=True)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    Trainer(cfg, smoke_dataset, tmp_path, progress=False).fit(resume=True)  # the same data: resumes


class Recorder(Hook):
    def __init__(self):
        self.calls, self.n = [], 0

    def before_forward(self, ctx):
        self.calls.append("before_forward")

    def before_backward(self, ctx):
        ctx.weights[:] = 0  # a hook can silence samples
        self.calls.append("before_backward")

    def after_backward(self, ctx):
        self.calls.append("after_backward")
        self.grad_norm = sum(p.grad.norm() for p in ctx.trainer.model.parameters() if p.grad is not None)

    def after_step(self, ctx):
        self.calls.append("after_step")
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_hooks_run_in_order_and_can_weight_samples(cfg, smoke_dataset, tmp_path):
    hook = Recorder()
    trainer = Trainer(cfg, smoke_dataset, tmp_path, hooks=[hook], progress=False)
    trainer.train_step(trainer.make_context())
    assert hook.calls == ["before_forward", "before_backward", "after_backward", "after_step"]
    assert float(hook.grad_norm) == 0.0
    trainer.fit(until=3)
    resumed_hook = Recorder()
    Trainer(cfg, smoke_dataset, tmp_path, hooks=[resumed_hook], progress=False).fit(resume=True, until=4)
    assert resumed_hook.n == 4

    class Newer(Recorder):  # a later version of the hook, whose state has another field
        def load_state_dict(self, state):
            self.n, self.m = state["n"], state["m"]

    with pytest.raises(GovlabError, match=r"checkpoint.safetensors: the state of hook Newer lacks 'm'"):
        Trainer(cfg, smoke_dataset, tmp_path, hooks=[Newer()], progress=False).fit(resume=True)


def test_sampler_epochs_and_exclusion():
    s = EpochSampler(10, 4, seed=0)
    first = torch.cat([s.next_batch(), s.next_batch()])
    assert len(set(first.tolist())) == 8
    s.exclude([0, 1, 2])
    batches = torch.cat([s.next_batch() for _ in range(4)])  # next epochs hold 7 rows
    assert not set(batches.tolist()) & {0, 1, 2}
    with pytest.raises(GovlabError, match="larger than the dataset"):
        EpochSampler(3, 4, seed=0)
