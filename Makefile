# The README's two commands: `make demo` and `make test`. Each builds .venv from the pinned
# requirements on a fresh machine that has only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format bench venv clean runtime-lock dashboard-shots

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bastionary demo

# pytest writes its report only when its session ends: a run that a test cut short (os._exit
# or a signal, whatever status it left) fails here instead of passing.
test: $(STAMP)
	rm -f .pytest-report.xml
	$(BIN)/python -m pytest --junitxml=.pytest-report.xml
	@test -s .pytest-report.xml || { echo "pytest ended before its session did: a test ended the process"; exit 1; }

# Style and types: ruff's rules and format, and mypy strict on src (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests deploy
	$(BIN)/ruff format --check src tests deploy
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

test-fast: $(STAMP)
	rm -f .pytest-report.xml
	$(BIN)/python -m pytest -m "not slow" --junitxml=.pytest-report.xml
	@test -s .pytest-report.xml || { echo "pytest ended before its session did: a test ended the process"; exit 1; }

# The worker image's pins: requirements.lock's, for the runtime dependencies only.
runtime-lock: $(STAMP)
	$(BIN)/python deploy/runtime_lock.py

bench: $(STAMP)
	$(BIN)/bastionary bench

# docs/dashboard.png: the Grafana dashboard's panels from a demo run, through a real Prometheus
# (a `prometheus` binary on PATH or in PROMETHEUS). matplotlib is for this picture only.
dashboard-shots: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "matplotlib==3.11.2"
	$(BIN)/python deploy/grafana/render_panels.py docs/dashboard.png

clean:
	rm -rf $(VENV) .bastionary .pytest_cache
