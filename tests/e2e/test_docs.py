"""docs/drivers.md's commands for the drivers this host cannot run (VirtualBox, a cloud), as written, in a fresh clone:
each stops before anything is created with the one line the docs promise."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import docblocks
from tests.e2e.conftest import ROOT, have_tools

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("docs") / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(path)], check=True)
    os.symlink(os.path.join(ROOT, ".venv"), path / ".venv")
    return str(path)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    errors = [line.strip() for line in result.stderr.splitlines() if "machines[" in line and ".driver:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_make_up_of_the_virtualbox_example_without_virtualbox(clone, e2e_env):
    line = one_error(docblocks.run("drivers-virtualbox", clone, e2e_env, timeout=900))
    assert line.startswith("machines[default].driver: virtualbox:"), line


def test_make_up_of_the_aws_example_without_its_plugin(clone, e2e_env):
    line = one_error(docblocks.run("drivers-aws", clone, e2e_env, timeout=900))
    assert "the Pulumi plugin pulumi-resource-aws v7.51.1" in line and "is not installed" in line, line
    assert "scripts/pulumi plugin install resource aws 7.51.1" in line
