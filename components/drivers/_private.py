"""The QEMU driver's private network (option ``private_network``): a second NIC per VM on an Ethernet of the stack's
own, joined by a hub daemon (components/l2hub.py), with an address per VM from a lease file. No root: the NICs are
unix datagram sockets (docs/local-vms.md#private-network).

The network lives in ``<stack state dir>/l2/``: ``hub.sock``, ``hub.pid``, ``hub.log``, and ``leases/<address>``
holding the socket of the VM that has the address. A lease is taken when the VM is created and kept in its state, so
adding or removing other machines never moves it; the last VM to go stops the hub and removes the directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil

from components import l2hub
from components.drivers._local import claim_lease, locked

DIRECTORY = "l2"
DEFAULT_CIDR = "192.168.125.0/24"
# What QEMU's user-mode network gives the first NIC (and the guest's routes to the host): a private network there
# would hide it.
USER_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL; QEMU would cut a longer path short silently.
SOCKET_PATH_MAX = 107


def network_dir(state_dir: str) -> str:
    return os.path.join(state_dir, DIRECTORY)


def hub_socket(directory: str) -> str:
    return os.path.join(directory, l2hub.SOCKET)


def _leases(directory: str) -> str:
    return os.path.join(directory, l2hub.LEASES)


def check_socket_paths(*paths: str) -> None:
    for path in paths:
        if len(path.encode()) > SOCKET_PATH_MAX:
            raise RuntimeError(
                f"private_network: the socket path {path} is {len(path.encode())} bytes, more than the "
                f"{SOCKET_PATH_MAX} a unix socket allows; use a shorter state directory (DMP_STATE) or machine name"
            )


def lease(directory: str, cidr: str, member: str) -> str:
    """An address of ``cidr`` for the VM whose NIC socket is ``member`` (the same one again for the same member)."""
    check_socket_paths(hub_socket(directory), member)
    with locked(directory):
        hosts = [str(host) for host in ipaddress.IPv4Network(cidr).hosts()]
        address = claim_lease(_leases(directory), hosts, member)
    if address is None:
        raise RuntimeError(f"private_network: no free address left in private_cidr {cidr}")
    return address


def hub_up(directory: str) -> None:
    """Start the network's hub unless it runs (before each start of a member VM: a host reboot ends it too)."""
    with locked(directory):
        l2hub.start(directory)


def leave(directory: str, member: str) -> None:
    """Give back ``member``'s address; the last member stops the hub and removes the network's directory."""
    if not os.path.isdir(directory):
        return
    with locked(directory):
        leases = _leases(directory)
        for name in os.listdir(leases) if os.path.isdir(leases) else []:
            with contextlib.suppress(FileNotFoundError), open(os.path.join(leases, name)) as f:
                if f.read().strip() == member:
                    os.unlink(os.path.join(leases, name))
        if not l2hub.read_members(leases):
            l2hub.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)
