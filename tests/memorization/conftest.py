from dataclasses import replace

import pytest

from govlab.memorization.config import MemorizationConfig


@pytest.fixture
def mem_cfg(smoke_cfg):
    """The smoke config with a monitor that checks every 4 steps from step 0."""
    def make(**kw):
        m = replace(MemorizationConfig(mode="monitor", every=4, start=0, watch="all"), **kw)
        return replace(smoke_cfg, train=replace(smoke_cfg.train, steps=12, checkpoint_every=6), memorization=m)
    return make


@pytest.fixture(scope="session")
def smoke_run(smoke_cfg, tmp_path_factory):
    """A trained smoke run with the monitor attached (attenuate, flags with a tiny threshold)."""
    from govlab.config import from_dict
    from govlab.run import train_run

    out = tmp_path_factory.mktemp("mem") / "smoke"
    cfg = from_dict({"memorization": {"mode": "monitor", "every": 10, "start": 0, "watch": "all",
                                      "threshold": 0.01, "intervention": "attenuate"}}, base=smoke_cfg)
    train_run(cfg, out, progress=False)
    return out
