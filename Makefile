# `make serve` runs the service on the demo model; `make test` lints and runs the test suite.
# Both create the virtual environment and build the demo model first if needed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_MODEL := models/digits.keras

.PHONY: serve test lint format venv demo-model heavy-model compare-workers clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-bench.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-bench.txt
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

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint $(DEMO_MODEL)
	$(PY) -m pytest

compare-workers: venv heavy-model
	$(PY) scripts/compare_workers.py --model models/heavy.keras

clean:
	rm -rf $(VENV) models .pytest_cache .ruff_cache
