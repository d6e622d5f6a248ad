# Fresh machine → virtualenv → install → real data → run. Only pip + venv (the torch wheels lie on disk).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST ?= /usr/share/datasets/fashion-mnist
DEMO   ?= runs/demo

.PHONY: help install data browser postgres lint test test-fast demo report bench gpu-check clean

help:
	@echo "make demo   - install, train DeepCluster on real Fashion-MNIST, evaluate vs random init"
	@echo "make report - make demo, then the HTML report of the demo run (runs/demo/report/report.html)"
	@echo "make test   - install and run the whole test suite"
	@echo "make lint   - ruff check (the configuration is in pyproject.toml)"
	@echo "make bench  - run the benchmarks"
	@echo "make gpu-check - GPU acceptance check, one table in runs/gpu_check (at most 8 min on one GPU)"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml requirements.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Debian ships the real Fashion-MNIST as a package; elsewhere, say what to do.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST)/train-images-idx3-ubyte ]; then \
	  echo "Fashion-MNIST found in $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: on Debian run 'sudo apt-get install dataset-fashion-mnist';"; \
	  echo "elsewhere download the four IDX files (train/t10k images/labels) into a folder and"; \
	  echo "run with FMNIST=that/folder (tests that need it are skipped)."; \
	fi

# Headless Chromium renders the HTML report in its test (Debian package `chromium`).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
	  echo "chromium found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium is missing: 'sudo apt-get install chromium' (the report's browser test is skipped without it)"; \
	fi

lint: install
	$(BIN)/ruff check src tests benchmarks experiments

# The PostgreSQL server of the studies' storage test (Debian package `postgresql`; the test starts
# its own server on 127.0.0.1 in a temporary folder, and skips with the reason when it cannot).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  echo "postgresql found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "postgresql is missing: 'sudo apt-get install postgresql' (the PostgreSQL study test is skipped without it)"; \
	fi

test: install data browser postgres
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install data
	@if [ -f $(DEMO)/config.yaml ]; then \
	  $(BIN)/deepcluster train --resume $(DEMO); \
	else \
	  $(BIN)/deepcluster train --config fmnist_lenet --set data.root=$(FMNIST) --out $(DEMO); \
	fi
	$(BIN)/deepcluster evaluate $(DEMO)

# The HTML report of the demo run (trained vs random init): $(DEMO)/report/report.html
report: demo
	$(BIN)/deepcluster report $(DEMO)

bench: install data
	$(BIN)/python benchmarks/run_all.py

# On a machine with CUDA: versions, k-means on the GPU vs faiss-cpu, every digits command through
# the CLI, AlexNet 224 px streamed and in memory, 2 ranks over gloo. Exits 2 without CUDA.
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu_check

clean:
	rm -rf $(VENV) .pytest_cache
