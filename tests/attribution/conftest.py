import pytest
import torch

from govlab.config import from_dict

TINY = {"model": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4},
        "routing": {"mode": "routed", "slot_rank": 2, "sequester_rank": 2},
        "train": {"steps": 4, "batch_size": 12, "checkpoint_every": 2, "warmup_steps": 1}}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cfg(smoke_cfg):
    return from_dict({"name": "tiny-attr", **TINY}, base=smoke_cfg)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cfg, smoke_dataset):
    """A routed run with two checkpoints (no evaluation): config.yaml, checkpoints/, model.safetensors."""
    from govlab.routing.hook import attach
    from govlab.train import Trainer

    out = tmp_path_factory.mktemp("attr") / "run"
    torch.set_num_threads(1)
    data, hooks = attach(tiny_cfg, smoke_dataset)
    trainer = Trainer(tiny_cfg, data, out, hooks=hooks, progress=False).fit()
    return out, trainer.model, data
