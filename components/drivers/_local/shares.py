"""Host folders shared into a local VM (``options.mounts`` of the qemu and virtualbox drivers), checked once; and the
guest's mount table, each entry an fstab line the shared provisioning writes (docs/local-vms.md#host-folders).

Like docker-machine's VirtualBox driver, the default shares the user's home directory, writable, at the same path in
the VM, so ``docker run -v "$PWD":/app`` under it sees the host's files.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError, field_validator

from components.model import StrictModel

# Guest directories a share must not hide (the system), and those a share must not land in.
GUEST_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")
GUEST_SYSTEM_TREES = (*(d for d in GUEST_SYSTEM if d != "/var"), "/var/lib")
# fstab fields are split on blanks, and the mount script quotes nothing else.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._@+,:=/-]*$")


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class Mount(StrictModel):
    path: str = Field(description="an existing host directory (absolute), shared at the same path in the VM")
    writable: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not os.path.isabs(v):
            raise ValueError(f"{v!r} must be an absolute path")
        path = os.path.normpath(v)
        if path == "/":
            raise ValueError("'/' cannot be shared: name a directory below it (e.g. your home)")
        if not _PLAIN_PATH.match(path):
            raise ValueError(f"{path!r}: only letters, digits and . _ @ + , : = - are allowed in a shared path")
        system = next((d for d in GUEST_SYSTEM if _within(d, path)), None) or next(
            (d for d in GUEST_SYSTEM_TREES if _within(path, d)), None
        )
        if system:
            raise ValueError(f"{path} would hide the VM's {system}: share a directory outside the system's")
        if not os.path.isdir(path):
            raise ValueError(f"{path} is not an existing directory on this host")
        return path


def _distinct(mounts: list[Mount]) -> list[Mount]:
    for index, mount in enumerate(mounts):
        for other in mounts[:index]:
            if mount.path == other.path:
                raise ValueError(f"{mount.path} is listed twice")
            if _within(mount.path, other.path) or _within(other.path, mount.path):
                raise ValueError(f"{other.path} and {mount.path}: one is inside the other; share only the outer one")
    return mounts


def home() -> list[Mount]:
    """docker-machine's default: the user's home, writable, at the same path; none for a user without a home that can
    be shared (a service account's /var/lib/…, a HOME that does not exist)."""
    try:
        return [Mount(path=os.path.expanduser("~"))]
    except ValidationError:
        return []


Mounts = Annotated[list[Mount], AfterValidator(_distinct)]


def mounts_field() -> Mounts:
    return Field(default_factory=home, description="host folders shared into the VM; [] shares none")


def fstab_line(source: str, path: str, fstype: str, options: list[str]) -> str:
    """One guest fstab line; ``nofail``: a share that is gone never stops the guest's boot."""
    return f"{source} {path} {fstype} {','.join([*options, 'nofail'])} 0 0"
