"""Workshop mode: lessons a teacher runs offline on laptops or a JupyterHub (``govlab workshop``).

``prepare`` trains what the lessons need once (cached); ``serve`` starts JupyterLab on them; the
lesson panels (ipywidgets) live in ``govlab.workshop.lessons``.
"""

__all__ = ["LESSONS", "open_workshop", "prepare", "run_lesson", "serve"]


def __getattr__(name: str):  # imported on first use: ``govlab --help`` stays quick
    import importlib

    if name in ("LESSONS", "open_workshop", "prepare", "run_lesson"):
        return getattr(importlib.import_module("govlab.workshop.folder"), name)
    if name == "serve":
        return importlib.import_module("govlab.workshop.server").serve
    raise AttributeError(name)
