"""What the local VM drivers (qemu, virtualbox) share: where their files live, the image cache, free ports,
address leases, process checks and the provider's diff. Not a driver (its name starts with ``_``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pulumi
from pulumi.dynamic import DiffResult, ResourceProvider

from components import wait
from components.drivers.base import DriverContext, Host
from components.dynamic import DynamicResource


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


def download(url: str) -> str:
    """An image URL downloaded once into the cache (by its URL's hash); returns the local path."""
    target_dir = os.path.join(cache_root(), "images", "url-" + hashlib.sha256(url.encode()).hexdigest()[:16])
    target = os.path.join(target_dir, os.path.basename(urllib.parse.urlparse(url).path) or "disk.img")
    if not os.path.exists(target):
        os.makedirs(target_dir, exist_ok=True)
        partial = target + ".partial"
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(partial, target)
    return target


# --- address leases: one file per address, created exclusively, so stacks never share one ----------------------


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


# --- processes --------------------------------------------------------------------------------------------------


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def settle(condition: Any, timeout: float, interval: float = 0.5, sleep: Any = None) -> bool:
    """Wait up to ``timeout`` s for ``condition()``; whether it came true (e.g. a VM that powered off)."""
    try:
        return bool(wait.poll(condition, timeout=timeout, interval=interval, what="the VM", sleep=sleep))
    except wait.WaitTimeout:
        return False


def boot_token() -> str:
    """A new value for a VM's ``boot`` output each time it is started (the Docker API check keys on it)."""
    return f"{time.time_ns():x}"


# --- the provider's diff -----------------------------------------------------------------------------------------


class LocalVmProvider(ResourceProvider):
    """A VM resource: some inputs need a new VM, some a power cycle, and ``power`` is the desired state."""

    REPLACE_ON: tuple[str, ...] = ()
    RESTART_ON: tuple[str, ...] = ()

    def power_matches(self, olds: dict[str, Any], power: str) -> bool:
        """Whether the VM as last seen (``olds``) is in the desired power state."""
        raise NotImplementedError

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in self.REPLACE_ON if olds.get(k) != news.get(k)]
        restart = [k for k in self.RESTART_ON if olds.get(k) != news.get(k)]
        power = not self.power_matches(olds, news.get("power", "running"))
        return DiffResult(changes=bool(replaces or restart or power), replaces=replaces, delete_before_replace=True)


class LocalVm(DynamicResource):
    """What every local VM resource reports: where SSH reaches it, the address clients dial, and its power."""

    OUTPUTS = ("ip", "ssh_host", "ssh_port", "state", "boot")


def vm_host(vm: LocalVm, ctx: DriverContext, ssh_user: str, engine_port: pulumi.Input[int], **extra: Any) -> Host:
    """A local VM: SSH where the VM resource says, the stack's key, the VM's address for the Docker client."""
    return Host(ssh_host=vm.ssh_host, ssh_port=vm.ssh_port, ssh_user=ssh_user, ssh_private_key=ctx.ssh_key.private_key,
                address=vm.ip, engine_port=engine_port, ready=vm, boot=vm.boot, **extra)  # fmt: skip
