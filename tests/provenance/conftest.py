import pytest

from govlab.config import from_dict
from govlab.testing import TINY_EVAL, TINY_MODEL, TINY_ROUTING, TINY_TRAIN, one_thread

TINY = {"model": TINY_MODEL, "routing": TINY_ROUTING, "train": TINY_TRAIN, "eval": TINY_EVAL,
        "provenance": {"enabled": True, "mode": "exact"}}  # the audit mode: the tests check exact figures


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


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
