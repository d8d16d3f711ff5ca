# Two set-up commands: `make up` (a local Docker host) and `make test`.
SHELL := /bin/bash
STACK ?= local
PULUMI := scripts/pulumi
# FORCE=1: clear a stack lock left by a pulumi run that no longer exists (a killed `make up`).
UNLOCK = scripts/machine --stack $(STACK) unlock $(if $(FORCE),,--check)

.PHONY: setup image images up down preview test unit e2e bench lint

setup:
	@scripts/setup

# The base image of the local driver: Debian 13 with Docker (debootstrap, cached outside the repo; needs root).
image: setup
	@scripts/build-image debian-13-docker >/dev/null

# The tests also boot the bare image (the generic driver installs Docker on it).
images: image
	@scripts/build-image debian-13 >/dev/null

up: image
	@$(PULUMI) stack select --create $(STACK) >/dev/null
	@$(UNLOCK)
	@scripts/toolchain plugins stacks/Pulumi.$(STACK).yaml
	@$(PULUMI) up --yes --stack $(STACK) --non-interactive --suppress-outputs
	@echo
	@echo 'Docker is up and running! To point your docker client at it, run:'
	@echo '  eval "$$(scripts/machine env default)"'

preview: setup
	@$(UNLOCK)
	@$(PULUMI) preview --stack $(STACK) --diff

down: setup
	@$(UNLOCK)
	@$(PULUMI) destroy --yes --stack $(STACK) --non-interactive

unit: setup
	@.venv/bin/python -m pytest tests/unit -q

e2e: images
	@.venv/bin/python -m pytest tests/e2e -q -m e2e

test: images
	@.venv/bin/python -m pytest -q tests/unit tests/e2e

# Also the Debian 12 image: the benchmark compares both.
bench: images
	@scripts/build-image debian-12-docker >/dev/null
	@scripts/benchmark

lint: setup
	@.venv/bin/ruff check .
