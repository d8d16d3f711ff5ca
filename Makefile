# Two set-up commands: `make up` (a local Docker host) and `make test`.
SHELL := /bin/bash
STACK ?= local
PULUMI := scripts/pulumi
# FORCE=1: clear a stack lock left by a pulumi run that no longer exists (a killed `make up`).
UNLOCK = scripts/machine --stack $(STACK) unlock $(if $(FORCE),,--check)
# YES=1: go ahead when the up replaces or deletes a machine (without a terminal it is refused otherwise).
UP_FLAGS = --create $(if $(YES),--yes) $(if $(FORCE),--force-unlock)
# A per-person stack's file comes from stacks/defaults the first time (it is not tracked: docs/team.md).
STACK_FILE = [ -f stacks/Pulumi.$(STACK).yaml ] || [ ! -f stacks/defaults/Pulumi.$(STACK).yaml ] \
	|| cp stacks/defaults/Pulumi.$(STACK).yaml stacks/Pulumi.$(STACK).yaml

.PHONY: setup image images up down preview test unit e2e bench lint

setup:
	@scripts/setup

# The base image of the local driver: Debian 13 with Docker (mmdebstrap, no root needed; cached outside the repo).
image: setup
	@scripts/build-image debian-13-docker >/dev/null

# The tests also boot the bare image (the generic driver installs Docker on it).
images: image
	@scripts/build-image debian-13 >/dev/null

up: image
	@$(STACK_FILE)
	@scripts/toolchain plugins stacks/Pulumi.$(STACK).yaml
	@scripts/machine --stack $(STACK) up $(UP_FLAGS)
	@echo
	@echo 'Docker is up and running! To point your docker client at it, run:'
	@echo '  eval "$$(scripts/machine env default)"'

# What `up` would change, machine by machine, checked against the policy pack in policy/ (docs/preview.md).
preview: setup
	@$(STACK_FILE)
	@scripts/machine --stack $(STACK) preview

down: setup
	@$(UNLOCK)
	@$(PULUMI) destroy --yes --stack $(STACK) --non-interactive

unit: setup
	@.venv/bin/python -m pytest tests/unit -q

e2e: images
	@.venv/bin/python -m pytest tests/e2e -q -n 0 -m e2e

test: images
	@.venv/bin/python -m pytest -q tests/unit
	@.venv/bin/python -m pytest -q -n 0 --durations=40 tests/e2e

# Also the Debian 12 image: the benchmark compares both.
bench: images
	@scripts/build-image debian-12-docker >/dev/null
	@scripts/benchmark

lint: setup
	@.venv/bin/ruff check .
	@PYTHONPATH=scripts:. .venv/bin/lint-imports --no-cache
	@scripts/lint-ci
