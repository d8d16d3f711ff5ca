"""Address leases: one file per address, created exclusively, so stacks never share one; and the lock under which
VMs change what several of them share (a bridge, a private network)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator


def claim_lease(leases: str, candidates: list[str], owner: str) -> str | None:
    """The candidate ``owner`` already holds, else the first free one, reserved for ``owner``; None if all taken.

    A lease file appears with its owner already in it (written aside, then linked into place), so a reader never
    sees an empty one.
    """
    os.makedirs(leases, exist_ok=True)
    for candidate in candidates:
        with contextlib.suppress(FileNotFoundError), open(os.path.join(leases, candidate)) as f:
            if f.read().strip() == owner:
                return candidate
    for candidate in candidates:
        aside = os.path.join(leases, f".{candidate}.{os.getpid()}.{threading.get_ident()}")
        with open(aside, "w") as f:
            f.write(owner)
        try:
            os.link(aside, os.path.join(leases, candidate))
            return candidate
        except FileExistsError:
            continue
        finally:
            os.unlink(aside)
    return None


def release_lease(leases: str, address: str | None, owner: str) -> None:
    """Give ``address`` back, if ``owner`` holds it."""
    if not address:
        return
    path = os.path.join(leases, address)
    try:
        with open(path) as f:
            if f.read().strip() == owner:
                os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """One VM at a time changes what several share (a bridge, a private network; VMs are created in parallel).

    The lock file lives in ``directory``, which the last VM removes: a waiter that finds its lock file gone takes a
    new one.
    """
    path = os.path.join(directory, "lock")
    while True:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)
