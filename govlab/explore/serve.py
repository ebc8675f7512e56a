"""Serve the explorer app (``govlab.explore.app``) for some runs (``govlab explore``)."""

from __future__ import annotations

from pathlib import Path

from govlab.errors import GovlabError
from govlab.explore.runs import load_runs


def check_runs(paths: list[Path]) -> None:
    """One GovlabError naming every run that does not load (bad index, events or lineage file)."""
    if not paths:
        raise GovlabError("name at least one run directory")
    _, errors = load_runs(paths)
    if errors:
        raise GovlabError("; ".join(errors))


def serve(paths: list[Path], *, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          threaded: bool = False):
    """Serve the explorer at ``http://ADDRESS:PORT/explorer`` (blocks unless ``threaded``, which
    returns the server thread: ``.stop()`` ends it); the runs are loaded once and shared by sessions."""
    import panel as pn

    from govlab.explore.app import TITLE, explorer

    runs = [str(Path(p).resolve()) for p in paths]

    def app():  # a function (Panel calls it once per session; a functools.partial it would display)
        return explorer(runs)

    # warm: one session at start pays the imports, model loads and Datashader's JIT, not the first page
    return pn.serve({"explorer": app}, port=port, address=address, show=show, threaded=threaded,
                    liveness=True, title=TITLE, verbose=False, warm=True)
