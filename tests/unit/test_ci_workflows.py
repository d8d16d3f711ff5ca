"""The CI definitions lint clean, and scripts/lint-ci catches broken ones with the linters' own messages.

scripts/lint-ci runs actionlint (with shellcheck on the ``run:`` scripts) on GitHub workflows and
check-jsonschema's built-in GitLab CI schema on ``.gitlab-ci.yml``. actionlint is built once with the local Go
into the cache outside the repo; after that no test here needs Go or the network (one test proves it by
pointing ``GO`` at nothing). Skipped only when actionlint is not built yet and there is no Go to build it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.unit.conftest import ROOT

LINT = os.path.join(ROOT, "scripts", "lint-ci")
ACTIONLINT_VERSION = "v1.7.12"  # as pinned in scripts/lint-ci
REPO_FILES = [".github/workflows/preview.yml", ".github/workflows/drift.yml", ".gitlab-ci.yml"]


def cached_actionlint() -> Path:
    cache = os.environ.get("DMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docker-machine-pulumi"
    )
    return Path(cache, "tools", f"actionlint-{ACTIONLINT_VERSION}", "actionlint")


def go_toolchain() -> str | None:
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    return go if os.access(go, os.X_OK) else None


pytestmark = pytest.mark.skipif(
    not cached_actionlint().exists() and go_toolchain() is None,
    reason="actionlint is not built yet and there is no Go toolchain to build it "
    "(go on PATH or /usr/local/go/bin/go, or set GO=/path/to/go)",
)


def lint(*files: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    # One build at most (the first test that needs actionlint); later runs take well under a second.
    return subprocess.run(
        [LINT, *map(str, files)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_repo_ci_files_lint_clean() -> None:
    for name in REPO_FILES:
        assert os.path.isfile(os.path.join(ROOT, name)), name
    result = lint()  # no arguments: the repo's workflows
    assert result.returncode == 0, output(result)
    assert "lint-ci: ok" in result.stderr
    for name in REPO_FILES:
        assert name in result.stderr  # each file was linted


def test_cached_actionlint_needs_no_go() -> None:
    if not cached_actionlint().exists():
        lint(*REPO_FILES)  # build it first
    result = lint(*REPO_FILES, GO="/nonexistent/go")
    assert result.returncode == 0, output(result)
    assert "building actionlint" not in result.stderr


def test_broken_github_workflow_fails_with_actionlint_messages(tmp_path: Path) -> None:
    workflow = tmp_path / ".github" / "workflows" / "broken.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        textwrap.dedent(
            """\
            name: broken
            on: push
            jobs:
              build:
                runs-on: ubuntu-lates
                steps:
                  - run: echo "${{ secretz.TOKEN }}"
                  - run: |
                      if [ -f Makefile ]; then
                        echo found
            """
        )
    )
    result = lint(workflow)
    out = output(result)
    assert result.returncode == 1, out
    assert 'label "ubuntu-lates" is unknown' in out and "[runner-label]" in out
    assert 'undefined variable "secretz"' in out and "[expression]" in out
    assert "Couldn't find 'fi' for this 'if'" in out and "[shellcheck]" in out
    assert "lint-ci: FAILED" in result.stderr


def test_broken_gitlab_ci_fails_with_schema_message(tmp_path: Path) -> None:
    gitlab = tmp_path / ".gitlab-ci.yml"
    gitlab.write_text("stages: 5\njob:\n  script: [echo hi]\n")
    result = lint(gitlab)
    out = output(result)
    assert result.returncode == 1, out
    assert "$.stages: 5 is not of type 'array'" in out
    assert "lint-ci: FAILED" in result.stderr


def test_unknown_file_kind_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "ci.yml"
    other.write_text("on: push\n")
    result = lint(other)
    assert result.returncode == 2
    assert "neither a GitHub workflow" in result.stderr
