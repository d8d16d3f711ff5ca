"""The layering import-linter keeps (pyproject.toml [tool.importlinter], docs/structure.md): the contracts hold on the
tree, and an import that breaks one, made in a copy of the tree, fails the check naming the contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.unit.conftest import ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint_imports(tree: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}/scripts:{tree}", "COLUMNS": "200"}
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def copy_of_the_tree(tmp_path) -> str:
    tree = tmp_path / "tree"
    for part in ("components", "policy", os.path.join("scripts", "machinecli"), "pyproject.toml"):
        source, target = os.path.join(ROOT, part), tree / part
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return str(tree)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


# module: (an import it must not have, the contract that import breaks)
WRONG_IMPORTS = {
    "components/steps/tls.py": ("from machinecli import ui", "Nothing in components imports the CLI"),
    "components/steps/provisioning.py": ("from components.drivers import qemu", "The shared steps never import"),
    "scripts/machinecli/probe.py": ("from components.drivers.qemu import forwarder", "The policy pack and the CLI"),
    "components/outputs.py": ("from components import machine", "No import circles"),
}
FUTURE = "from __future__ import annotations\n"


def test_wrong_imports_in_a_copy_break_the_contracts_they_cross(tmp_path):
    tree = copy_of_the_tree(tmp_path)
    for module, (line, _) in WRONG_IMPORTS.items():
        path = os.path.join(tree, module)
        with open(path) as f:
            source = f.read()
        with open(path, "w") as f:
            f.write(source.replace(FUTURE, f"{FUTURE}{line}\n", 1))
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = [text for text in result.stdout.splitlines() if text.endswith(" BROKEN")]
    assert len(broken) == len(WRONG_IMPORTS), result.stdout
    for _, contract in WRONG_IMPORTS.values():
        assert any(text.startswith(contract) for text in broken), (contract, broken)


def test_the_end_to_end_modules_still_import():
    """A module moved or renamed must not leave the e2e suite failing at collection, an hour into CI."""
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0", "tests/e2e"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
