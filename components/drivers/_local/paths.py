"""Where the local drivers keep their files: per-host state (instance directories, leases) and the cache (images,
toolchain), both outside the repository; and the small host facts every local driver needs."""

from __future__ import annotations

import os
import socket
import subprocess


def _root(env: str, xdg: str, default: str) -> str:
    base = os.environ.get(xdg) or os.path.expanduser(default)
    return os.path.abspath(os.environ.get(env) or os.path.join(base, "docker-machine-pulumi"))


def state_root() -> str:
    """Per-host state (VM instance directories, leases): $DMP_STATE, else $XDG_STATE_HOME/docker-machine-pulumi."""
    return _root("DMP_STATE", "XDG_STATE_HOME", "~/.local/state")


def cache_root() -> str:
    """Images and the toolchain: $DMP_CACHE, else $XDG_CACHE_HOME/docker-machine-pulumi."""
    return _root("DMP_CACHE", "XDG_CACHE_HOME", "~/.cache")


def stack_state_dir(project: str, stack: str) -> str:
    return os.path.join(state_root(), f"{project}-{stack}")


class Layout:
    """A directory's files by role: ``NAMES`` maps each attribute to its file name (``disk`` → ``disk.qcow2``)."""

    NAMES: dict[str, str] = {}

    def __init__(self, directory: str):
        self.dir = directory
        for attribute, name in self.NAMES.items():
            setattr(self, attribute, os.path.join(directory, name))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip()
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {output}")
    return result
