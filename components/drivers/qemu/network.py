"""The QEMU driver's private network (option ``private_network``): a second NIC per VM on an Ethernet of the stack's
own, joined by a hub daemon (``hub``), with an address per VM from a lease file. No root: the NICs are unix datagram
sockets (docs/local-vms.md#private-network). The network's directory carries its stack's ownership marker.

The network lives in ``<stack state dir>/l2/``: ``hub.sock``, ``hub.pid``, ``hub.log``, and ``leases/<address>``
holding the socket of the VM that has the address. A lease is taken when the VM is created and kept in its state, so
adding or removing other machines never moves it; the last VM to go stops the hub and removes the directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
from typing import Any

from components import ownership
from components.drivers._local.leases import claim_lease, locked
from components.drivers.qemu import hub
from components.drivers.qemu.instance import check_socket_paths

DIRECTORY = "l2"


def network_dir(state_dir: str) -> str:
    return os.path.join(state_dir, DIRECTORY)


def hub_socket(directory: str) -> str:
    return os.path.join(directory, hub.SOCKET)


def _leases(directory: str) -> str:
    return os.path.join(directory, hub.LEASES)


def _ours(directory: str, owner: Any) -> None:
    """The network's directory is the stack's own: made with its marker, or refused in one line."""
    try:
        ownership.claim(directory, ownership.Owner.from_dict(owner), "the private network's directory",
                        frozenset({"lock", hub.LEASES, hub.SOCKET, hub.PIDFILE, hub.LOG}))  # fmt: skip
    except ownership.NotOurs as err:
        raise RuntimeError(str(err)) from None


def lease(directory: str, cidr: str, member: str, owner: Any) -> str:
    """An address of ``cidr`` for the VM whose NIC socket is ``member`` (the same one again for the same member)."""
    check_socket_paths(hub_socket(directory), member)
    with locked(directory):
        _ours(directory, owner)
        hosts = [str(host) for host in ipaddress.IPv4Network(cidr).hosts()]
        address = claim_lease(_leases(directory), hosts, member)
    if address is None:
        raise RuntimeError(f"private_network: no free address left in private_cidr {cidr}")
    return address


def hub_up(directory: str, owner: Any) -> None:
    """Start the network's hub unless it runs (before each start of a member VM: a host reboot ends it too)."""
    with locked(directory):
        _ours(directory, owner)
        hub.start(directory)


def leave(directory: str, member: str, owner: Any) -> None:
    """Give back ``member``'s address; the last member stops the hub and removes the network's directory (only
    when it is the stack's own)."""
    marked = ownership.read(directory)
    if not os.path.isdir(directory) or (marked is not None and marked != ownership.Owner.from_dict(owner)):
        return
    with locked(directory):
        leases = _leases(directory)
        for name in os.listdir(leases) if os.path.isdir(leases) else []:
            with contextlib.suppress(FileNotFoundError), open(os.path.join(leases, name)) as f:
                if f.read().strip() == member:
                    os.unlink(os.path.join(leases, name))
        if not hub.read_members(leases):
            hub.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)
