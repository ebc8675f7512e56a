import json

import pytest


@pytest.fixture(scope="session")
def smoke_world(smoke_cfg):
    from govlab.data.cache import world_dir

    from dataclasses import replace

    from govlab.tagging.world import TAGGED_WORLD_VERSION

    return world_dir(replace(smoke_cfg.world, version=TAGGED_WORLD_VERSION), progress=False)


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
