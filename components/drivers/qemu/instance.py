"""One QEMU VM's instance directory and its monitor: what the VM resource and the VM's helper daemons (the published
port forwarder) both reach it by."""

from __future__ import annotations

import asyncio
from typing import Any

from components.drivers._local import process
from components.drivers._local.paths import Layout

# The user-mode NIC (slirp) and the private network's NIC, by their netdev ids.
NETDEV = "n0"
PRIVATE_NETDEV = "n1"
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL; QEMU would cut a longer path short silently.
SOCKET_PATH_MAX = 107


class Files(Layout):
    """The instance directory of one VM (the NIC on the stack's private network receives on ``l2``)."""

    NAMES = {"disk": "disk.qcow2", "seed": "seed.iso", "pid": "qemu.pid", "qmp": "qmp.sock", "serial": "serial.log",
             "l2": "l2.sock"}  # fmt: skip
    disk: str
    seed: str
    pid: str
    qmp: str
    serial: str
    l2: str


def check_socket_paths(*paths: str) -> None:
    """Unix sockets (the monitor, virtio-fs, the private network) need short paths: one line naming the fix."""
    for path in paths:
        if len(path.encode()) > SOCKET_PATH_MAX:
            raise RuntimeError(
                f"the socket path {path} is {len(path.encode())} bytes, more than the {SOCKET_PATH_MAX} a unix socket "
                "allows; use a shorter state directory (DMP_STATE), stack name or machine name"
            )


def running_pid(instance_dir: str) -> int | None:
    """The VM's qemu, if it is running: a process that was started with this instance's pidfile."""
    files = Files(instance_dir)
    return process.verified_pid(files.pid, "-pidfile", files.pid)


def qmp(socket_path: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One QMP command on the VM's monitor socket (qemu.qmp); the socket allows one client at a time."""
    from qemu.qmp import QMPClient

    async def call() -> Any:
        client = QMPClient("docker-machine")
        await asyncio.wait_for(client.connect(socket_path), timeout=10)
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout=10)
        finally:
            await client.disconnect()

    return asyncio.run(call())


def hostfwd(host: int, guest: int | None, protocol: str) -> str:
    """A slirp forward rule on the host's loopback (``guest`` None: the rule's key, for hostfwd_remove)."""
    rule = f"{protocol}:127.0.0.1:{host}"
    return rule if guest is None else f"{rule}-:{guest}"
