import pytest

K = 100  # the paper's k; samples are cached, so tests, notebook and bench share them


@pytest.fixture(scope="session")
def quick_zoo():
    """The quick zoo, built once into the govlab cache (about 8 minutes the first time)."""
    from govlab.lineage.zoo import cached_zoo

    return cached_zoo(quick=True)


@pytest.fixture(scope="session")
def extractor():
    from govlab.lineage.features import get_extractor

    return get_extractor("world")


@pytest.fixture(scope="session")
def zoo_prompts(quick_zoo):
    from govlab.lineage.api import default_prompts
    from govlab.studies.lineage import zoo_boxes

    boxes = zoo_boxes(quick_zoo)
    return default_prompts([boxes[m.name] for m in quick_zoo.bases])


@pytest.fixture(scope="session")
def zoo_features(quick_zoo, zoo_prompts, extractor):
    from govlab.studies.lineage import zoo_features

    return zoo_features(quick_zoo, zoo_prompts, k=K, extractor=extractor)
