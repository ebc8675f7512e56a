"""The named run configurations (``<name>.yaml``)."""

from importlib import resources


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
