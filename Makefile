# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test smoke bench docker-build clean

$(STAMP): requirements.txt requirements-dev.txt requirements-handler.txt constraints.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-handler.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e ./client
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m app

test: install
	$(PY) -m pytest

smoke: install
	$(PY) -m scripts.smoke

clean:
	rm -rf $(VENV) .pytest_cache
