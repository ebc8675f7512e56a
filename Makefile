# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both install what they need into .venv/. Unless .venv already has a torch (a GPU machine installs
# its CUDA build first: README), torch is installed as the CPU build, 2.13.0+cpu, so a CPU machine
# does not download CUDA wheels: from pip's configured wheel store or indexes and TORCH_INDEX, else
# from PyTorch's CPU index (CPU_INDEX). Where neither serves it (pip sees only PyPI), torch 2.13.0
# from PyPI: on Linux x86_64 that is the CUDA build with its nvidia-* wheels (a few GB; it runs on a
# CPU), and pip lists each download. constraints.txt keeps torch at 2.13.0 for the rest.
VENV ?= .venv
TORCH_INDEX ?=
CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.govlab-installed

.PHONY: install demo test chromium

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null \
	  || $(VENV)/bin/pip install -q -c constraints.txt "torch==2.13.0+cpu" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  || { echo "govlab: torch==2.13.0+cpu not in pip's configured stores; trying $(CPU_INDEX)"; \
	       $(VENV)/bin/pip install -q -c constraints.txt --timeout 20 --retries 1 --extra-index-url $(CPU_INDEX) "torch==2.13.0+cpu"; } \
	  || { echo "govlab: no CPU build of torch 2.13.0 reachable; installing torch==2.13.0 from PyPI (on Linux x86_64 the CUDA build and its nvidia-* wheels, a few GB, listed below; it runs on a CPU)"; \
	       $(VENV)/bin/pip install --progress-bar off -c constraints.txt "torch==2.13.0"; }
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
