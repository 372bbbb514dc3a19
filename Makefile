# Two commands do all set-up on a fresh machine (README.md):
#   make run    install if needed, then run the main job
#   make test   install if needed, then run the test suite (what CI runs, via .ci/run)
# The virtualenv lives in .venv; it is (re)installed whenever requirements.lock or setup.cfg change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
RUNS   ?= runs
UV_VERSION := 0.13.9
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

.PHONY: install run test test-all bench clean

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# uv installs the lock in about a third of pip's time (measured: 77 s against about 4 minutes,
	# cold caches); pip is the fallback where uv cannot be installed. Both honour PIP_FIND_LINKS.
	( $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION) && \
	  $(VENV)/bin/uv pip install --quiet --python $(PY) $(FIND_LINKS) -r requirements.lock ) || \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	# t5 and promptsource pin stale dependencies (DEPS.md): install them without any; we use
	# only t5.data and promptsource's templates.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps t5==0.9.4
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --ignore-requires-python promptsource==0.2.3
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job. Until the grid runner lands this is the model's own end-to-end job: the study's
# exact model sizes and FLOPs, then a training-step benchmark of every architecture on this machine.
run: install
	$(VENV)/bin/archobj model info paper-decoder
	$(VENV)/bin/archobj model info paper-encdec
	$(VENV)/bin/archobj bench train --preset small --arch cd --arch nd --arch ed \
	    --batch-size 2 --length 128 --inputs-length 96 --targets-length 32 --steps 3 --repeats 3

# pytest exits 5 when it collects nothing; make propagates any non-zero status, so that fails too.
test: install
	$(PY) -m pytest

test-all: install
	$(PY) -m pytest -m "slow or not slow"

# The figures quoted in issue notes: the small preset at the study's lengths.
bench: install
	$(VENV)/bin/archobj bench train --preset small --arch cd --arch nd --arch ed --batch-size 4

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .cache
