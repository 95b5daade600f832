# Two commands for a newcomer: `make lab` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip
# Tests and notebooks never touch the network: the offline copies of tiktoken's ranks and the embedding model.
export COURSE_OFFLINE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: venv lab test test-fast labs check-labs sync benchmarks notebook-times clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

lab: venv
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/00_welcome.ipynb

# The whole suite: unit tests, lab sync, every notebook in notebooks/ and solutions/ run top to bottom (nbval).
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=600 \
		tests notebooks solutions $(PYTEST_ARGS)

# Unit tests only (no notebook execution): seconds, for the edit-test loop.
test-fast: venv
	$(BIN)/python -m pytest -n 2 tests -m "not slow" $(PYTEST_ARGS)

labs: venv
	$(BIN)/python -m course_utils.labs build

check-labs: venv
	$(BIN)/python -m course_utils.labs build --check

sync: venv
	$(BIN)/python -m course_utils.nbtools sync
	$(BIN)/python -m course_utils.labs build

notebook-times: venv
	$(BIN)/python benchmarks/notebook_times.py

clean:
	rm -rf $(VENV) .cache test-artifacts
