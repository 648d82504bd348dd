# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when missing, installs torch first (the CPU wheel torch==2.13.0 when no
# torch is importable, so no CUDA packages are pulled), then the package with its dev extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean fashion-mnist

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The main job end to end on the embedded Fashion-MNIST default: train, calibrate every
# configuration, evaluate the grid with measured latency, print the query table and write
# the plot. The demo run directory is recreated each time.
DEMO_RUN ?= runs/demo

demo: $(STAMP) fashion-mnist
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/mutualnet train configs/fashion_mnist.yaml --out $(DEMO_RUN)
	$(VENV)/bin/mutualnet evaluate $(DEMO_RUN) --latency
	@echo "query table: $(DEMO_RUN)/query_table.md   plot: $(DEMO_RUN)/pareto.png"

# Debian's dataset-fashion-mnist when apt-get can install it; otherwise mutualnet downloads
# the files from the dataset's canonical URLs (checked against known SHA-256 sums).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

fashion-mnist:
	@test -f $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; \
	  elif command -v sudo >/dev/null 2>&1; then sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; fi; \
	  test -f $(FASHION_MNIST) && echo "installed dataset-fashion-mnist" || \
	    echo "dataset-fashion-mnist not installable here; mutualnet will download Fashion-MNIST"; }

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
