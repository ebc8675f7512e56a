import pytest
import torch

from govlab.config import from_dict

TINY = {"model": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4},
        "routing": {"mode": "routed", "slot_rank": 2, "sequester_rank": 2},
        "train": {"steps": 4, "batch_size": 12, "checkpoint_every": 2, "warmup_steps": 1},
        "eval": {"per_prompt": 1, "steps": 4},
        "provenance": {"enabled": True, "mode": "exact"}}  # the audit mode: the tests check exact figures


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cfg(smoke_cfg):
    return from_dict({"name": "tiny-prov", **TINY}, base=smoke_cfg)


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory):
    """A whole tiny routed run with the index (trained once per session; tests copy it to edit it)."""
    from govlab.run import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def optout_run(tiny_cfg, tmp_path_factory):
    """A tiny run with an opt-out registry: artist_1 from the start, artist_0 from step 2 (slot too)."""
    from govlab.run import train_run

    base = tmp_path_factory.mktemp("optout")
    registry = base / "optouts.jsonl"
    registry.write_text('{"source_id": "artist_1", "since": 0, "scope": "training"}\n'
                        '{"source_id": "artist_0", "since": 2, "scope": "all"}\n')
    cfg = from_dict({"provenance": {"optouts": str(registry)}}, base=tiny_cfg)
    out = base / "run"
    train_run(cfg, out, progress=False)
    return out
