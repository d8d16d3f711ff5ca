"""How ``scripts/machine`` talks to its user: stdout for results, stderr for warnings and errors, y/n prompts."""

from __future__ import annotations

import os
import sys

from .errors import MachineError

# The command line as typed (scripts/machine passes its $0 in DMP_ARGV0); tests set it.
ARGV: list[str] = [os.environ.get("DMP_ARGV0", "machine"), *sys.argv[1:]]


def argv0() -> str:
    return ARGV[0]


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def info(text: str) -> None:
    out(text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")


def err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


def interactive() -> bool:
    """A person at a terminal can answer (CI and cron cannot)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def confirm(message: str) -> bool:
    """docker-machine's confirmInput: ``<message> (y/n): ``, yes when the answer starts with y."""
    out(f"{message} (y/n): ")
    answer = sys.stdin.readline()
    if not answer:
        raise MachineError("no answer on stdin (use -f to skip the prompt)")
    return answer.strip().lower().startswith("y")
