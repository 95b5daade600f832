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
# Two notebooks run at once on two cores: one thread each, or they fight over the cores (course_utils.setup reads it).
test e2e: export COURSE_THREADS := 1
PYTEST_ARGS ?=
# Lessons are stored and checked with inline figures at 72 dpi (the figure's size in pixels is printed text).
LESSONS_ENV := MPLBACKEND=module://matplotlib_inline.backend_inline COURSE_FIGURE_DPI=72
STRICT_NBVAL := --nbval --nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg -p course_utils.outputs
LAB_ARGS ?=
E2E_SKIPPED := SKIPPED e2e: chromium not found (apt-get install chromium)

.PHONY: venv lab test outputs test-fast labs check-labs sync benchmarks notebook-times clean e2e site wheelhouse instructor

$(STAMP): requirements.txt requirements-instructor.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -r requirements-instructor.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

lab: venv
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/00_welcome.ipynb

# The whole suite: unit tests, lab sync, every notebook in notebooks/ and solutions/ run top to bottom (nbval).
# Solutions run --nbval-lax (their cells assert); lessons run strict: each cell's output must match the output
# stored by `make outputs` (numbers within 2%, run-dependent text sanitized, timing cells tagged
# nbval-ignore-output; see course_utils/outputs.py). The browser tests (tests/e2e) run when `chromium` is on
# PATH; otherwise one visible SKIPPED line says so.
test: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=600 \
		tests $(wildcard solutions) $(PYTEST_ARGS); rc=$$?; \
	$(LESSONS_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile $(STRICT_NBVAL) $(wildcard notebooks) \
		$(PYTEST_ARGS) || rc=1; \
	command -v chromium >/dev/null 2>&1 || echo "$(E2E_SKIPPED)"; exit $$rc

# Lessons ship executed: run every lesson top to bottom (seeded, one thread) and store its outputs in place,
# figures as small palette PNGs. Commit the result; `make test` then checks that the outputs still match.
outputs: venv
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs tag notebooks/*.ipynb
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs store notebooks/*.ipynb

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

# Just the browser tests: a fresh JupyterLab per test, driven by Playwright through Debian's chromium.
e2e: venv
	@command -v chromium >/dev/null 2>&1 || { echo "$(E2E_SKIPPED)"; exit 0; }; \
	$(BIN)/python -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

# The static course site from the executed notebooks (_build/site/index.html); fails on a broken link or image.
site: venv
	$(BIN)/python docs/site/build.py --out _build/site

# Every wheel the pinned requirements need, for a room without internet (see docs/instructor_guide.md):
#   pip install --no-index --find-links wheelhouse -r requirements.txt
wheelhouse: requirements.txt
	$(PY) -m pip download --dest wheelhouse -r requirements.txt setuptools

# Instructor extras (nbgrader) on top of the course's environment.
instructor: venv
	$(PIP) install -q -r requirements-instructor.txt
