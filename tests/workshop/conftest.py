import pytest


@pytest.fixture(scope="session")
def workshop(tmp_path_factory):
    """A folder prepared in quick mode (trained once into the govlab cache, shared by the workers;
    lessons not executed here: each lesson test executes its own)."""
    from govlab.workshop import prepare

    out = tmp_path_factory.mktemp("workshop")
    prepare(out, quick=True, check=False, progress=False)
    return out
