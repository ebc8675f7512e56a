import pytest


@pytest.fixture(scope="session")
def compare_cache(tmp_path_factory):
    """The cache of tests/attribution's quick comparison (the same folder in a test worker: its
    retrainings are made once per session, by whichever of the two runs first)."""
    path = tmp_path_factory.getbasetemp() / "attr-cache"
    path.mkdir(exist_ok=True)
    return path
