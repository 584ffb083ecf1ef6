# Outpost: every target sets itself up. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.outpost-installed
PYTEST := $(VENV)/bin/pytest
TORCH  := torch==2.14.1 torchvision==0.29.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup bytecode demo test lint test-slow test-gpu test-netns test-all bench bench-import clean bundle test-gui screenshots bench-studio

setup: $(STAMP)

# torch first, pinned to the release this machine holds on disk (see ENVIRONMENT notes in README),
# then the project with every role's extras.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[all,dev]"
	$(PY) -m compileall -q -j 0 $(PACKAGES)
	touch $(STAMP)

# The project's modules compiled once, as pip compiles an installed package: where
# PYTHONDONTWRITEBYTECODE is set (CI, these sandboxes) every process (the CLI, the tests'
# subprocesses, an import's helper process) would otherwise compile them again from source.
PACKAGES := desktop_app device_agent runtimes exporters trainers
bytecode: $(STAMP)
	$(PY) -m compileall -q -j 0 $(PACKAGES)

demo: bytecode
	$(VENV)/bin/outpost demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint bytecode
	QT_QPA_PLATFORM=offscreen $(PYTEST) -m "not slow and not gpu and not netns" -q

test-slow: bytecode
	$(PYTEST) -m slow -q

test-gpu: $(STAMP)
	$(PYTEST) -m gpu -q

# The simulated-LAN tier lives in tests/netns/ (root and `ip netns`; see README "Tests").
test-netns: bytecode
	@command -v nft >/dev/null || apt-get install -y -q nftables >/dev/null 2>&1 || \
		echo "nftables unavailable: the lossy-link test will skip"
	$(PYTEST) -m netns -q tests/netns

test-gui: $(STAMP)
	$(PYTEST) -m gui -q

# One PNG per main Studio view in screenshots/ (the app under Xvfb; two tiny runs trained,
# exported, evaluated and deployed to a local agent on 127.0.0.1 only, first).
XVFB_DISPLAY ?= :97
screenshots: $(STAMP)
	@command -v Xvfb >/dev/null || apt-get install -y xvfb libxcb-icccm4 libxcb-keysyms1 \
		libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0 libxcb-cursor0
	rm -rf screenshots
	Xvfb $(XVFB_DISPLAY) -screen 0 1600x1000x24 -nolisten tcp & xpid=$$!; sleep 1; \
	DISPLAY=$(XVFB_DISPLAY) QT_QPA_PLATFORM=xcb $(PY) -m desktop_app.ui.screenshots \
		--out screenshots --train; rc=$$?; kill $$xpid; exit $$rc

test-all: lint bytecode
	$(PYTEST) -q

bench: bytecode
	$(PY) benchmarks/runtime_overhead.py
	$(PY) benchmarks/dataset_import.py
	$(PY) benchmarks/yolo_import.py

bench-import: bytecode
	$(PY) benchmarks/dataset_import.py
	$(PY) benchmarks/yolo_import.py
	$(PY) benchmarks/format_import.py

bench-studio: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/studio_responsiveness.py

# Outpost Studio, one folder: dist/Outpost Studio/ (PyInstaller; needs objcopy from binutils).
# The outpost wheel goes inside, for the app's managed training environment.
bundle: $(STAMP)
	@command -v objcopy >/dev/null || { echo "make bundle needs objcopy: install binutils"; exit 1; }
	$(PIP) install -q -e ".[bundle]"
	rm -rf build/wheel build/lib build/bdist.* && $(PIP) wheel -q --no-deps --no-build-isolation --wheel-dir build/wheel .
	$(VENV)/bin/pyinstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller build.spec

clean:
	rm -rf $(VENV) .outpost-demo .pytest_cache .ruff_cache
	find $(PACKAGES) tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
