"""Serve ``apps/explorer.py`` for some runs (``govlab explore``)."""

from __future__ import annotations

from pathlib import Path

from govlab.errors import GovlabError
from govlab.explore.runs import load_runs

APP = Path(__file__).resolve().parents[2] / "apps" / "explorer.py"


def check_runs(paths: list[Path]) -> None:
    """One GovlabError naming every run that does not load (bad index, events or lineage file)."""
    if not paths:
        raise GovlabError("name at least one run directory")
    _, errors = load_runs(paths)
    if errors:
        raise GovlabError("; ".join(errors))
    if not APP.is_file():
        raise GovlabError(f"{APP}: the explorer app is missing (serve from a govlab source checkout)")


def serve(paths: list[Path], *, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          threaded: bool = False):
    """Serve the explorer at ``http://ADDRESS:PORT/explorer`` (blocks unless ``threaded``, which
    returns the server thread: ``.stop()`` ends it); the runs are loaded once and shared by sessions."""
    import panel as pn
    from panel.io.application import build_single_handler_application

    app = build_single_handler_application(str(APP), argv=[str(p) for p in paths])
    # warm: one session at start pays the imports, model loads and Datashader's JIT, not the first page
    return pn.serve({"explorer": app}, port=port, address=address, show=show, threaded=threaded,
                    liveness=True, title="govlab explorer", verbose=False, warm=True)
