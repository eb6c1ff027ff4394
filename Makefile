# `make serve` runs the service on the demo model; `make test` lints and runs the test suite.
# Both create the virtual environment and build the demo model first if needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_MODEL := models/digits.keras

.PHONY: serve test unit fuzz lint format venv tools demo-model heavy-model compare-workers clean

# Programs the tests run beside Python: wrk (bench.py's client) and redis-server (the cache's and jobs' Redis).
# Debian's packages of the same names; installed with apt when missing.
SYSTEM_TOOLS := wrk redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-bench.txt requirements-clients.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-bench.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-clients.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(DEMO_MODEL): | venv
	$(PY) scripts/build_demo_model.py

demo-model: $(DEMO_MODEL)

models/heavy.keras: | venv
	$(PY) scripts/build_demo_model.py --heavy

heavy-model: models/heavy.keras

# The demo model is built only when MODEL_PATH does not point elsewhere.
serve: venv $(if $(MODEL_PATH),,$(DEMO_MODEL))
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: tools lint $(DEMO_MODEL)
	$(PY) -m pytest

# The fast inner loop: the unit tests that load no model and no TensorFlow (under a minute and a half).
unit: venv
	$(PY) -m pytest -q tests/unit -m "not slow"

# The hostile-input property tests and fuzz harness, longer than `make test` runs them (docs/reliability.md).
HOSTILE_EXAMPLES ?= 5000
fuzz: venv
	HOSTILE_EXAMPLES=$(HOSTILE_EXAMPLES) $(PY) -m pytest -p no:cacheprovider \
		tests/unit/protocols/test_decoding_bounds.py tests/integration/test_hostile.py

compare-workers: venv heavy-model
	$(PY) scripts/compare_workers.py --model models/heavy.keras

clean:
	rm -rf $(VENV) models .pytest_cache .ruff_cache
