# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when missing, installs torch first (the CPU wheel torch==2.13.0 when no
# torch is importable, so no CUDA packages are pulled), then the package with its dev extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Until the training engine lands this is a smoke check: it lists the model zoo and prints
# the MACs of MobileNetV2 over a width x resolution grid.
demo: $(STAMP)
	$(VENV)/bin/mutualnet models
	$(VENV)/bin/mutualnet macs mobilenet_v2 --widths 0.35,0.7,1.0 --resolutions 128,160,224

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
