# The two front doors: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision to install when the venv has none. Override on GPU hosts, e.g.
#   make test TORCH_SPEC="torch==2.4.1 torchvision==0.19.1"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow test-all lint bench setup data runner-venv clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || \
	  { echo "installing $(TORCH_SPEC) (a minute or more)"; \
	    $(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC); }
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# The latency bundle's runner, where a device has numpy and onnxruntime and no PyTorch:
# the tests run it in this environment (and assert that torch is not importable there).
RUNNER_VENV := .venv-runner
runner-venv: $(RUNNER_VENV)/.installed

$(RUNNER_VENV)/.installed:
	$(PYTHON) -m venv $(RUNNER_VENV)
	$(RUNNER_VENV)/bin/python -m pip install -q --disable-pip-version-check numpy onnxruntime
	@touch $@

# Fashion-MNIST from Debian's package, where apt is available; otherwise say what to do.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) \
	  && echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR): install the Debian package"; \
	  echo "dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist), or point"; \
	  echo "--data at a folder holding the four *-ubyte.gz IDX files."; \
	fi

# The main job end to end: train with progressive shrinking, measure the accuracy of
# sampled sub-networks, fit the predictor, time every block on this CPU, specialise for
# three latency targets and export them. About 15 minutes on 2 cores; running it again
# reuses what runs/demo already holds (DEMO_ARGS=--fresh starts over).
DEMO_RUN ?= runs/demo
DEMO_ARGS ?=
demo: setup data
	$(VENV)/bin/ofa run --config fashion-mnist-quick --data fashion-mnist --out $(DEMO_RUN) $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# --durations lists the slowest tests: the candidates for `slow` when the run grows.
test: setup data lint runner-venv
	$(PY) -m pytest -q --durations=15

# The slow tests alone (crash consistency, ResNet-50 end to end, ...); CI runs them
# after `make test`.
test-slow: setup data runner-venv
	$(PY) -m pytest -q -m slow --durations=10

# Everything, slow tests included.
test-all: setup data lint runner-venv
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[reference]'
	$(PY) bench/train_step.py
	$(PY) bench/families.py
	$(PY) bench/search_speed.py
	$(PY) bench/latency_table.py

clean:
	rm -rf $(VENV) $(RUNNER_VENV) .pytest_cache .ruff_cache .hypothesis
