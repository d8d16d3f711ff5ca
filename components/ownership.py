"""Who owns what this project leaves on a host: a VM's instance directory, a stack's private network, a machine's
client-certificate directory and its docker context (docs/ownership.md).

The owner is one stack of one project on one state backend. A marker file (``.owner.json``) in each directory we make
names it, and a docker context we make says it in its description. Before anything is killed, deleted or overwritten
the marker is read: a directory another stack owns, or one this project did not make (docker-machine's own, which
holds ``config.json``), is left alone and the user is told so in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

MARKER = ".owner.json"
# docker-machine's own machine directories hold this; we never write into or remove one of them.
DOCKER_MACHINE_CONFIG = "config.json"


class NotOurs(RuntimeError):
    """An artefact that belongs to someone else, worded for the user."""


@dataclass(frozen=True)
class Owner:
    project: str
    stack: str
    # The state backend, without credentials: file:///…, postgres://host:port/db, s3://bucket…
    backend: str

    @property
    def short_id(self) -> str:
        """Six hex digits that tell two stacks of the same name on different backends apart."""
        return hashlib.sha256(f"{self.project}\0{self.backend}".encode()).hexdigest()[:6]

    def describe(self) -> str:
        return f'stack "{self.stack}" on {self.backend}'

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Any) -> Owner | None:
        if isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("project", "stack", "backend")):
            return cls(value["project"], value["stack"], value["backend"])
        return None


def backend_url() -> str:
    """PULUMI_BACKEND_URL (scripts/env.sh sets it for the local default), else the backend logged in to."""
    url = os.environ.get("PULUMI_BACKEND_URL")
    if url:
        return url
    home = os.environ.get("PULUMI_HOME") or os.path.join(os.path.expanduser("~"), ".pulumi")
    try:
        with open(os.path.join(home, "credentials.json")) as f:
            return json.load(f).get("current") or ""
    except (OSError, ValueError):
        return ""


def backend_identity(url: str) -> str:
    """The backend's URL with no user, password or query (which may hold a password)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def current(project: str, stack: str) -> Owner:
    return Owner(project, stack, backend_identity(backend_url()))


def read(directory: str) -> Owner | None:
    try:
        with open(os.path.join(directory, MARKER)) as f:
            return Owner.from_dict(json.load(f))
    except (OSError, ValueError):
        return None


def write(directory: str, owner: Owner) -> None:
    path = os.path.join(directory, MARKER)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(owner.as_dict(), f, sort_keys=True)
    os.replace(tmp, path)


def state(directory: str, owner: Owner, ours_if_unmarked: frozenset[str] = frozenset()) -> str:
    """``absent``, ``ours``, ``docker-machine``, ``other`` (another stack's marker) or ``unknown`` (files we did not
    mark). A directory holding only names in ``ours_if_unmarked`` is ours from before markers existed."""
    if not os.path.isdir(directory):
        return "absent"
    marked = read(directory)
    if marked is not None:
        return "ours" if marked == owner else "other"
    entries = set(os.listdir(directory)) - {MARKER}
    if DOCKER_MACHINE_CONFIG in entries:
        return "docker-machine"
    return "ours" if entries <= ours_if_unmarked else "unknown"


def refusal(directory: str, owner: Owner, what: str) -> str:
    """The one line that says why ``directory`` is left alone, and what to do."""
    marked = read(directory)
    if marked is not None:
        return (
            f"{what} {directory} belongs to {marked.describe()}: it is left as it is. Use another stack name, "
            f"or work with that stack on its backend (scripts/machine backend unset / set), or move it here with "
            f"scripts/machine --stack {marked.stack} backend migrate"
        )
    if os.path.exists(os.path.join(directory, DOCKER_MACHINE_CONFIG)):
        return f"{what} {directory} is docker-machine's own machine (it holds config.json): it is left as it is"
    return f"{what} {directory} exists and was not made by this project's {owner.describe()}: it is left as it is"


def claim(directory: str, owner: Owner, what: str, ours_if_unmarked: frozenset[str] = frozenset()) -> bool:
    """Make ``directory`` (0700) ours, or accept it when it already is; NotOurs otherwise. Whether it existed."""
    found = state(directory, owner, ours_if_unmarked)
    if found in ("other", "docker-machine", "unknown"):
        raise NotOurs(refusal(directory, owner, what))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write(directory, owner)
    return found == "ours"


def transfer(directory: str, old: Owner, new: Owner) -> bool:
    """Hand a directory of ``old`` to ``new`` (a stack moved to another backend); False when ``old`` did not own it."""
    if read(directory) != old:
        return False
    write(directory, new)
    return True
