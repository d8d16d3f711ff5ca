"""Every command block of the README, docs/ and examples/ has a marker naming the test that runs it verbatim
(tests/docblocks.py), so a documented command that stops working fails `make test`."""

from __future__ import annotations

import os
import re

from tests import docblocks
from tests.unit.conftest import ROOT


def test_every_command_block_has_one_marker_and_a_test_that_runs_it():
    blocks = docblocks.command_blocks()
    assert blocks, "no command block found"
    unmarked = [f"{b.path}:{b.line}" for b in blocks if b.marker is None]
    assert unmarked == [], f"command blocks without a <!-- test: ID --> marker: {unmarked}"
    markers = [b.marker for b in blocks]
    assert len(markers) == len(set(markers)), "a marker names two blocks"
    used = set()
    for base, _, files in os.walk(os.path.join(ROOT, "tests", "e2e")):
        for file in (f for f in files if f.endswith(".py")):
            source = open(os.path.join(base, file)).read()
            if "docblocks.run(" in source:  # a test that runs blocks: the markers it names (quoted)
                used |= {m for m in markers if f'"{m}"' in source}
    assert set(markers) - used == set(), "blocks no e2e test runs"


def test_the_readmes_two_setup_commands_are_make_up_and_make_test():
    """The README's first block is the set-up; CI runs its `make test` (.ci/run), the team test its `make up`."""
    first = docblocks.command_blocks()[0]
    assert first.path == "README.md" and first.marker == "readme-setup"
    assert [line.split("#")[0].strip() for line in first.text.splitlines()] == ["make up", "make test"]
    assert open(os.path.join(ROOT, ".ci", "run")).read().splitlines()[-1] == "make test"


def _doc_files() -> list[str]:
    found = [os.path.join(ROOT, "README.md")]
    for base in ("docs", "examples"):
        for directory, _, files in os.walk(os.path.join(ROOT, base)):
            found += [os.path.join(directory, f) for f in files if f.endswith(".md")]
    return found


PATH_RE = r"(?<![\w./-])((?:components|scripts|policy|tests|stacks)/[\w./-]*\w)(?![\w.<*{])"


def test_the_files_and_modules_the_docs_name_exist():
    """A module moved in a restructure must take its mentions along (docs/ describe the code by its paths)."""
    missing = []
    for doc in _doc_files():
        text = open(doc).read()
        # Whole paths only: not a pattern (`stacks/Pulumi.<stack>.yaml`) nor a module's attribute (`errors.StepError`).
        for path in re.findall(PATH_RE, text):
            if path in ("stacks/Pulumi.local.yaml", "stacks/Pulumi.team.yaml"):
                continue  # a person's own stack file (make up makes it) and a team's
            if os.path.splitext(path)[1] not in ("", ".py", ".md", ".sh", ".go", ".yaml", ".json"):
                continue
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(f"{os.path.relpath(doc, ROOT)}: {path}")
        for module in re.findall(r"python -m ((?:components|policy)(?:\.\w+)+)", text):
            base = os.path.join(ROOT, *module.split("."))
            if not (os.path.exists(base + ".py") or os.path.isdir(base)):
                missing.append(f"{os.path.relpath(doc, ROOT)}: python -m {module}")
    assert missing == []
