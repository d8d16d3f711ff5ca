"""Issue 14: the QEMU VMs of one stack reach each other on its private network, without root. One `up` boots both;
each pings the other at its leased address; removing one leaves the other's address alone; destroy leaves nothing."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time

import pytest

from components.drivers._local import pid_alive, read_pid
from tests.e2e.conftest import (
    have_tools,
    new_stack,
    processes_matching,
    qemu_processes_for,
    record_figure,
    remove_stack,
    rewrite_machines,
)  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]

NAMES = ("net-a", "net-b")


def member(name: str) -> dict:
    return {
        "name": name,
        "driver": "qemu",
        "options": {"private_network": True},
        "engine": {"install": "packages"},
        "docker_context": False,
    }


def resources(stack) -> dict[str, dict]:
    """The stack's resources by name, as the engine recorded them (outputs and timestamps)."""
    state = json.loads(stack.pulumi("stack", "export", "--show-secrets").stdout)
    return {r["urn"].rsplit("::", 1)[-1]: r for r in state["deployment"].get("resources", [])}


def when(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()


def on(stack, name: str, command: str) -> str:
    return stack.machine("--stack", stack.name, "ssh", name, command).stdout


@pytest.fixture(scope="module")
def pair(e2e_env):
    """Two machines on one private network, from one `up`: (stack, network directory, up seconds)."""
    stack = new_stack(e2e_env, "private", [member(name) for name in NAMES])
    state_dir = os.path.join(stack.state_dir, f"docker-machine-{stack.name}")
    network = os.path.join(state_dir, "l2")
    started = time.monotonic()
    try:
        stack.pulumi("up", "--yes", "--skip-preview", timeout=2400)
        yield stack, network, time.monotonic() - started
        stack.pulumi("destroy", "--yes", timeout=900)
        # Nothing survives: VMs, the hub, its socket and leases, the VMs' sockets and directories.
        assert [line for name in NAMES for line in qemu_processes_for(os.path.join(state_dir, "qemu", name))] == []
        assert processes_matching(f"components.l2hub {network}") == []
        assert not os.path.exists(network)
        left = [os.path.join(d, f) for d, _, files in os.walk(state_dir) for f in files]
        assert left == []
    finally:
        if any(qemu_processes_for(os.path.join(state_dir, "qemu", name)) for name in NAMES):
            stack.pulumi("destroy", "--yes", check=False, timeout=900)
        remove_stack(stack)
        for name in NAMES:
            shutil.rmtree(os.path.expanduser(f"~/.docker/machine/machines/{name}"), ignore_errors=True)


def test_one_up_boots_both_machines_side_by_side(pair):
    stack, network, seconds = pair
    found = resources(stack)
    boots = {}
    for name in NAMES:
        vm = found[f"{name}-vm"]
        # From qemu's start (the VM resource is created once qemu runs) to SSH answering.
        boots[name] = (when(vm["created"]), when(found[f"{name}-wait-for-ssh"]["created"]))
    overlap = min(end for _, end in boots.values()) - max(start for start, _ in boots.values())
    assert overlap > 0, boots
    record_figure("private_network_up_seconds", round(seconds, 1))
    record_figure("private_network_boot_seconds", {n: round(end - start, 1) for n, (start, end) in boots.items()})
    record_figure("private_network_boot_overlap_seconds", round(overlap, 1))


def test_addresses_are_the_leased_ones_and_configured_in_the_guests(pair):
    stack, network, _ = pair
    machines = stack.outputs()["machines"]
    found = resources(stack)
    leases = {name: open(os.path.join(network, "leases", name)).read() for name in os.listdir(
        os.path.join(network, "leases"))}  # fmt: skip
    addresses = {}
    for name in NAMES:
        address = machines[name]["privateIp"]
        vm = found[f"{name}-vm"]["outputs"]
        assert address == vm["private_ip"]
        assert leases[address] == os.path.join(vm["instance_dir"], "l2.sock")  # the lease names the VM's NIC socket
        # In the guest: the NIC with the private MAC holds the address; the default route stays on user mode.
        nic = on(stack, name, f"ip -o link | grep -i {vm['private_mac']} | cut -d: -f2").strip()
        assert f"inet {address}/24 " in on(stack, name, f"ip -4 -o addr show dev {nic}")
        assert "via 10.0.2.2" in on(stack, name, "ip route show default")
        addresses[name] = address
    assert len(set(addresses.values())) == 2 and set(addresses.values()) == set(leases)
    record_figure("private_network_addresses", addresses)


def test_each_machine_pings_the_other(pair):
    stack, _, _ = pair
    machines = stack.outputs()["machines"]
    results = {}
    for name, other in (NAMES, NAMES[::-1]):
        # As root: the image's ping has no raw-socket capability for the login user.
        out = on(stack, name, f"sudo ping -c 3 -W 5 {machines[other]['privateIp']}")
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        assert (sent, received) == (3, 3), out
        results[f"{name} -> {other}"] = re.search(r"rtt [^\n]*", out).group(0)
    record_figure("private_network_ping", results)


def test_tcp_carries_a_bulk_transfer_across_the_hub(pair):
    """What a swarm's TCP needs: 16 MiB from b to a over their private addresses, all of it, and how fast."""
    stack, _, _ = pair
    b = stack.outputs()["machines"]["net-b"]["privateIp"]
    size = 16 << 20
    server = (f"import socket; s = socket.create_server(('{b}', 9999)); c, _ = s.accept(); "
              f"c.sendall(bytes({size})); c.close()")  # fmt: skip
    listening = "for i in $(seq 100); do ss -ltn | grep -q ':9999 ' && break; sleep 0.2; done"
    on(stack, "net-b", f'nohup python3 -c "{server}" >/dev/null 2>&1 </dev/null & {listening}')
    out = on(stack, "net-a", f"s=$(date +%s.%N); wc -c < /dev/tcp/{b}/9999; date +%s.%N; echo $s")
    received, end, start = out.split()
    assert int(received) == size
    record_figure("private_network_tcp_mib_per_second", round(16 / (float(end) - float(start)), 1))


def test_removing_a_machine_keeps_the_others_address(pair):
    stack, network, _ = pair
    before = stack.outputs()["machines"]
    vm_before = resources(stack)["net-a-vm"]["outputs"]
    hub = read_pid(os.path.join(network, "hub.pid"))
    rewrite_machines(stack, [member("net-a")])
    started = time.monotonic()
    stack.pulumi("up", "--yes", "--skip-preview", timeout=900)
    record_figure("private_network_remove_seconds", round(time.monotonic() - started, 1))
    after = stack.outputs()["machines"]
    assert set(after) == {"net-a"}
    assert after["net-a"]["privateIp"] == before["net-a"]["privateIp"]
    vm_after = resources(stack)["net-a-vm"]["outputs"]
    assert (vm_after["pid"], vm_after["boot"]) == (vm_before["pid"], vm_before["boot"])  # not even restarted
    assert os.listdir(os.path.join(network, "leases")) == [before["net-a"]["privateIp"]]
    assert pid_alive(hub) and read_pid(os.path.join(network, "hub.pid")) == hub
    assert f"inet {before['net-a']['privateIp']}/24 " in on(stack, "net-a", "ip -4 -o addr")
    assert qemu_processes_for(os.path.join(stack.state_dir, f"docker-machine-{stack.name}", "qemu", "net-b")) == []
