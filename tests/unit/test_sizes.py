"""Sizes a reader can hold in their head: no product file over 500 lines, no Python function over 60 lines except
the data literals named here (docs/structure.md)."""

from __future__ import annotations

import ast
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
# Functions that are one data literal: docker-machine's host record, key for key in its order.
DATA_LITERALS = {("scripts/machinecli/formats.py", "host_record")}


def product_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = [n for n in tracked.stdout.split("\0") if n]
    code = (".py", ".go", ".sh", "")
    return [
        n for n in names
        if n.split("/")[0] in ("components", "scripts", "policy", "__main__.py")
        and os.path.splitext(n)[1] in code and os.path.isfile(os.path.join(ROOT, n)) and _is_text_code(n)
    ]  # fmt: skip


def _is_text_code(name: str) -> bool:
    with open(os.path.join(ROOT, name), "rb") as f:
        head = f.read(256)
    return name.endswith((".py", ".go", ".sh")) or head.startswith(b"#!")


def test_no_product_file_is_over_500_lines():
    files = product_files()
    assert "components/machine.py" in files and "scripts/build-image" in files
    long = {}
    for name in files:
        with open(os.path.join(ROOT, name)) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_FILE_LINES:
            long[name] = lines
    assert long == {}


def test_no_function_is_over_60_lines_but_the_data_literals():
    long = {}
    for name in product_files():
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, name)) as f:
            tree = ast.parse(f.read(), name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (name, node.name) not in DATA_LITERALS:
                    long[f"{name}:{node.name}"] = lines
    assert long == {}
