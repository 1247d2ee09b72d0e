# Two commands: `make demo` and `make test`. Each sets up .venv with pinned installs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup sysdeps demo test test-all test-readme lint bench clean

setup: $(STAMP)

# torch/torchvision first, then the package and the other pins of requirements.lock; with
# uv (given pip's indexes and find-links), falling back to pip: scripts/install_deps.sh
UV_VERSION ?= 0.13.8
TORCH := torch==2.14.1 torchvision==0.29.1

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	bash scripts/install_deps.sh $(PY) $(UV_VERSION) $(TORCH)
	touch $(STAMP)

# the demo's runs, then the inputs the README's other commands use (tiles, tiny untrained models)
demo: $(STAMP)
	$(VENV)/bin/geomed-seg demo --output demo-output
	$(PY) scripts/make_demo_inputs.py demo-output

# dicom3tools (dciodvfy) validates DICOM SEG outputs in the tests; best effort, never fatal:
# where apt is unavailable the SEG validation test skips with its reason.
sysdeps:
	@command -v dciodvfy >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get install -y -q dicom3tools >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dicom3tools >/dev/null 2>&1)); } || \
	  echo "note: dicom3tools not installed; DICOM SEG validation tests will skip"
	@# headless Chromium renders report.html in a test; best effort like dicom3tools
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null 2>&1 && \
	  apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: chromium not installed; the report.html rendering test will skip"

test: $(STAMP) sysdeps
	$(PY) -m pytest -q

test-all: $(STAMP) sysdeps
	$(PY) -m pytest -q -m "slow or not slow"

# the README's shell blocks, top to bottom, in a copy of the repo (after the demo's steps)
test-readme: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_readme.py

lint: $(STAMP)
	$(VENV)/bin/ruff check geomed_seg tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/sliding_window.py --quick

clean:
	rm -rf demo-output .pytest_cache
