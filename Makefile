# Two commands do all set-up on a fresh machine (README.md):
#   make run    install if needed, then run the main job (make quick: its few-minute variant)
#   make test   install if needed, then run the test suite (what CI runs, via .ci/run)
# The virtualenv lives in .venv; it is (re)installed whenever requirements.lock or setup.cfg change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
RUNS   ?= runs
UV_VERSION := 0.13.9
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

.PHONY: install run quick test test-all bench clean

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# uv installs the lock in about a third of pip's time (measured: 77 s against about 4 minutes,
	# cold caches); pip is the fallback where uv cannot be installed. Both honour PIP_FIND_LINKS.
	# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (this workplace sets it), nothing
	# else writes bytecode, and every process would recompile ~1,700 modules on start (measured:
	# importing jax, flax, orbax, tensorflow, seqio and lm-eval took 26-32 s without, 10-11 s with).
	( $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) && \
	  $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(FIND_LINKS) \
	      -r requirements.lock ) || \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	# t5 and promptsource pin stale dependencies (DEPS.md): install them without any; we use
	# only t5.data and promptsource's templates.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps t5==0.9.4
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python promptsource==0.2.3
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q harness models objectives analysis experiments
	touch $(STAMP)

# The main job: the whole study at tiny scale on the built-in world (experiments/tiny.yaml):
# six pretrainings, their adaptations and multitask finetunings, both evaluation suites on every
# cell, then the report (runs/tiny/report/index.html). Progress and the time left are printed
# throughout, where the time went at the end. Re-running it runs only what is missing.
# `make quick` is the same grid with fewer steps, for a first look.
run: install
	$(VENV)/bin/archobj grid experiments/tiny.yaml --runs $(RUNS) --report

quick: install
	$(VENV)/bin/archobj grid experiments/tiny.yaml --variant quick --runs $(RUNS) --report

# pytest exits 5 when it collects nothing; make propagates any non-zero status, so that fails too.
test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "slow or not slow"

# Every benchmark (train, tiny, eval, data, resume; 66 minutes on 2 cores for the committed record), recorded in
# bench/results.json and bench/results.md: the figures the README's performance section quotes.
bench: install
	$(VENV)/bin/archobj bench --out bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .cache
