# Everyday commands. `make demo` and `make test` each set up the virtual environment first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench frontier label-flip clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the main job: a federated simulation of 4 synthetic clinics
	$(BIN)/hxr simulate

test: $(STAMP)  ## lint, then the whole test suite (no GPU, no download needed)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## speed and memory against MobileNetV2 (ratio targets in docs/benchmarks.md)
	$(BIN)/hxr bench --models hxr150,mobilenet_v2 --resolution 224 --batch-size 32

frontier: $(STAMP)  ## accuracy against memory on ../shared's data (hours; resumes where it stopped)
	$(BIN)/python -m experiments.accuracy_frontier --out docs/frontier \
		--datasets pneumoniamnist,cxr4,cxr4-kermany --federated pneumoniamnist --threads 1

label-flip: $(STAMP)  ## one clinic of five swaps two classes: FedAvg against FedMedian
	$(BIN)/python -m experiments.label_flip --out runs/label-flip --rounds 4

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
