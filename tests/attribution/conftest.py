import pytest

from govlab.config import from_dict
from govlab.testing import TINY_MODEL, TINY_ROUTING, TINY_TRAIN, one_thread

TINY = {"model": TINY_MODEL, "routing": TINY_ROUTING, "train": TINY_TRAIN}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_cfg(smoke_cfg):
    return from_dict({"name": "tiny-attr", **TINY}, base=smoke_cfg)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cfg, smoke_dataset):
    """A routed run with two checkpoints (no evaluation): config.yaml, checkpoints/, model.safetensors."""
    from govlab.routing.hook import attach
    from govlab.train import Trainer

    out = tmp_path_factory.mktemp("attr") / "run"
    with one_thread():
        data, hooks = attach(tiny_cfg, smoke_dataset)
        trainer = Trainer(tiny_cfg, data, out, hooks=hooks, progress=False).fit()
    return out, trainer.model, data


# The notebook's quick sizes: tests/notebooks runs notebook 05 on the same config in the same cache
# (compare_cache: the same folder there), so its retrainings are made once per session and worker.
QUICK_CC = dict(n_subsets=4, n_images=1, k_test=2, k_dtrak=1, proj_dim=32, sample_steps=2)


@pytest.fixture(scope="session")
def compare_cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "attr-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def quick_compare(compare_cache, smoke_cfg):
    """``compare`` on the tiny routed config (retrained from scratch into a fresh cache)."""
    import os

    from govlab.attribution import CompareConfig, compare

    cfg = from_dict({"name": "attr-nb-quick", **TINY}, base=smoke_cfg)
    before = os.environ.get("GOVLAB_CACHE")
    os.environ["GOVLAB_CACHE"] = str(compare_cache)
    try:
        with one_thread():
            return compare(cfg, CompareConfig(**QUICK_CC), progress=False)
    finally:
        if before is None:
            del os.environ["GOVLAB_CACHE"]
        else:
            os.environ["GOVLAB_CACHE"] = before
