"""`panel serve apps/explorer.py --args RUN [RUN ...]`: the explorer app of the package
(``govlab.explore.app``), as ``govlab explore RUN [RUN ...]`` serves it."""

import sys

from govlab.explore.app import explorer

explorer(sys.argv[1:]).servable()
