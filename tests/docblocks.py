"""The command blocks of the README, docs/ and examples/ that a user copies, each run verbatim by a test.

A block is a fenced ``sh`` block; the line before it is its marker, ``<!-- test: ID -->``, and ``ID`` is the name the
test that runs it passes to ``run``. tests/unit/test_docs.py holds every block to having a marker that a test uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"^<!-- test: ([a-z0-9-]+) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
COMMAND_LANGUAGES = ("sh", "bash", "shell", "console")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of its opening fence
    marker: str | None
    text: str


def documents() -> list[str]:
    found = ["README.md"]
    for directory in ("docs", "examples"):
        for base, _, files in os.walk(os.path.join(ROOT, directory)):
            found += [os.path.relpath(os.path.join(base, f), ROOT) for f in files if f.endswith(".md")]
    return sorted(found)


def command_blocks() -> list[Block]:
    blocks = []
    for path in documents():
        with open(os.path.join(ROOT, path)) as f:
            lines = f.read().splitlines()
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if opening[1] in COMMAND_LANGUAGES:
                marker = MARKER.match(lines[i - 1]) if i else None
                blocks.append(Block(path, i + 1, marker[1] if marker else None, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end + 1
    return blocks


def block(marker: str) -> Block:
    (found,) = [b for b in command_blocks() if b.marker == marker]
    return found


def run(marker: str, cwd: str, env: dict[str, str], timeout: float = 2400, lines: int | None = None,
        user: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The block as a user pastes it into bash (stopping at the first failing command), in ``cwd`` with ``env``;
    ``lines``: its first lines only (the README's set-up block: its `make test` is what CI itself runs); ``user``:
    as that user (runuser, from root), with exactly ``env``."""
    text = "\n".join(block(marker).text.splitlines()[:lines]) + "\n" if lines else block(marker).text
    return subprocess.run([*as_user(user, env), "bash", "-e", "-o", "pipefail", "-c", text], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def as_user(user: str | None, env: dict[str, str]) -> list[str]:
    """The prefix that runs a command as ``user`` with exactly ``env`` (none: as ourselves)."""
    if user is None:
        return []
    # Found on our PATH: the user's (``env``) usually lacks the sbin directories runuser lives in.
    return [shutil.which("runuser") or "runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
