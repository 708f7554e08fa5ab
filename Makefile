# Two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

IMAGE ?= clip-pod-worker:2.0
DOCKER_BUILD_ARGS ?=

.PHONY: install run test lint docs smoke bench docker-build lint-docker clean

EXAMPLE_REQUIREMENTS := examples/visual_search/requirements.txt

$(STAMP): requirements.txt requirements-dev.txt requirements-handler.txt requirements-ray.txt $(EXAMPLE_REQUIREMENTS) constraints.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt -r requirements-handler.txt \
		-r requirements-ray.txt -r $(EXAMPLE_REQUIREMENTS) -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e ./client
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m app

test: lint
	$(PY) -m pytest

# ruff (lint and format check) and mypy over the service and the client; `make test` runs it first.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Regenerate docs/configuration.md from the Settings class (a test fails when it is stale).
docs: install
	$(PY) -m scripts.config_docs --write

smoke: install
	$(PY) -m scripts.smoke

# The pod image (README.pod.md); e.g. DOCKER_BUILD_ARGS="--build-arg CLIP_MODEL=ViT-L-14 --build-arg CLIP_PRETRAINED=laion2b_s32b_b82k"
docker-build:
	docker build -f Dockerfile.pod -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

# Also part of `make test` (tests/test_dockerfile_pod.py).
lint-docker: install
	$(VENV)/bin/hadolint Dockerfile.pod

clean:
	rm -rf $(VENV) .pytest_cache
