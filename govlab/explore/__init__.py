"""The explorer's data layer: runs and their files (``runs``), HoloViews/Datashader views
(``views``), the attenuation preview (``preview``), serving (``serve``) and a synthetic index
fixture (``synthetic``); the Panel app itself is ``app`` (``explorer(paths)``), which
``govlab explore`` serves and ``apps/explorer.py`` wraps for ``panel serve``."""

from govlab.explore.runs import METRICS, Run, load_runs, open_index, validate_index

__all__ = ["METRICS", "Run", "load_runs", "open_index", "validate_index"]
