import json

import pytest


@pytest.fixture(scope="session")
def tagging_cfg():
    """The smoke preset on the world version the shipped taxonomy and exemplars describe (a fixture
    of its own name: overriding ``smoke_cfg`` here would not reach the session's ``smoke_dataset``,
    cached on version 2 by whichever test asked first)."""
    from dataclasses import replace

    from govlab.config import load_config
    from govlab.tagging.world import TAGGED_WORLD_VERSION

    cfg = load_config("smoke")
    return replace(cfg, world=replace(cfg.world, version=TAGGED_WORLD_VERSION))


@pytest.fixture(scope="session")
def smoke_world(tagging_cfg):
    from govlab.data.cache import world_dir

    return world_dir(tagging_cfg.world, progress=False)


@pytest.fixture(scope="session")
def tagging_dataset(tagging_cfg):
    """The dataset of ``tagging_cfg`` (images and ground truth of the tagged world's version)."""
    from govlab.data.cache import run_dataset

    return run_dataset(tagging_cfg, progress=False)


@pytest.fixture(scope="session")
def truth(smoke_world):
    return [json.loads(line) for line in (smoke_world / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tagged_blind(smoke_world, tmp_path_factory):
    """The smoke world with its labels hidden and the caption words naming a source, the stock agency
    or a person stripped, tagged once: (input folder, tagged copy, summary)."""
    from govlab.tagging import tag_folder
    from govlab.tagging.world import hide_labels

    base = tmp_path_factory.mktemp("blind")
    src = hide_labels(smoke_world, base / "in", cues=False)
    summary = tag_folder(src, base / "out", progress=False)
    return src, base / "out", summary
