# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both install what they need into .venv/. constraints.txt pins torch so that a CPU machine
# takes the CPU wheel and never downloads CUDA builds (see README for GPU machines).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.govlab-installed

.PHONY: install demo test chromium

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/govlab train --preset demo

# Two workers, one thread each (the suite's models are tiny). Cache entries (worlds, evaluators,
# the lineage zoo, retrainings, samples) are built once under a file lock while the other waits.
test: $(STAMP) chromium
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=15

# Browser tests drive Debian's /usr/bin/chromium (never `playwright install`); installed only if missing.
chromium:
	@test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }
