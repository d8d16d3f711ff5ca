"""Issue 14: the QEMU driver's bridge mode, booted for real inside a network namespace this test makes. The engine,
scripts/machine and the docker client run in the namespace too, so every packet stays in it: the VM gets its own
address, the served certificate names it, `docker version` works over TLS, and destroy leaves the namespace as it
was. The namespace goes at the end, with anything still running in it, even when a step failed."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import (
    ROOT,
    have_tools,
    new_stack,
    qemu_processes_for,
    record_figure,
    remove_stack,
)  # fmt: skip

NEEDS = ("ip", "iptables", "dnsmasq", "openssl")
ABLE = os.geteuid() == 0 and all(map(shutil.which, NEEDS))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)"),
    pytest.mark.skipif(not ABLE, reason=f"bridge mode needs root and {', '.join(NEEDS)}"),
]

CIDR = "192.168.124.0/24"


def ns_run(ns: str, *cmd: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def netns():
    """A fresh namespace with loopback up; its resolver points at its own loopback, so no lookup leaves it."""
    name = f"dmt-{secrets.token_hex(3)}"
    etc = os.path.join("/etc/netns", name)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        os.makedirs(etc)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write("nameserver 127.0.0.1\n")
        yield name
    finally:
        # Whatever still runs in it (a VM, dnsmasq after a failed destroy) was started by this test.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in map(int, pids):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)
        if os.path.isdir("/etc/netns") and not os.listdir("/etc/netns"):
            os.rmdir("/etc/netns")


@pytest.fixture(scope="module")
def bridged(e2e_env, netns):
    """One bridge-mode machine, created and destroyed by an engine inside the namespace: (stack, name, bridge)."""
    name, bridge = f"br-{os.getpid()}", f"dmt{secrets.token_hex(3)}"
    machine = {
        "name": name,
        "driver": "qemu",
        "options": {"network": "bridge", "bridge": bridge, "bridge_cidr": CIDR},
        "engine": {"install": "packages"},
        "docker_context": False,
    }
    stack = new_stack(e2e_env, "bridge", [machine])
    stack.netns = netns
    instance_dir = os.path.join(stack.state_dir, f"docker-machine-{stack.name}", "qemu", name)
    try:
        started = time.monotonic()
        stack.pulumi("up", "--yes", "--skip-preview", timeout=2400)
        record_figure("bridge_up_seconds", round(time.monotonic() - started, 1))
        yield stack, name, bridge
        stack.pulumi("destroy", "--yes", timeout=900)
        # The namespace is as the test made it: no VM, dnsmasq, tap, bridge, NAT rule, forwarding, state.
        assert qemu_processes_for(instance_dir) == []
        assert subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout == ""
        links = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
        assert "docker-machine-pulumi" not in ns_run(netns, "iptables-save").stdout
        assert ns_run(netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        assert not os.path.exists(os.path.join(stack.state_dir, "bridges"))
        assert not os.path.exists(instance_dir)
    finally:
        if qemu_processes_for(instance_dir):
            stack.pulumi("destroy", "--yes", check=False, timeout=900)
        remove_stack(stack)
        shutil.rmtree(os.path.expanduser(f"~/.docker/machine/machines/{name}"), ignore_errors=True)


def test_the_vm_has_its_own_address_on_the_namespaces_bridge(bridged, netns):
    stack, name, bridge = bridged
    machine = stack.outputs()["machines"][name]
    address = machine["ip"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(CIDR) and address != "192.168.124.1"
    assert machine["url"] == f"tcp://{address}:2376" and machine["ssh"]["host"] == address
    assert machine["privateIp"] == address
    lease = os.path.join(stack.state_dir, "bridges", bridge, "leases", address)
    assert open(lease).read().endswith(os.path.join("qemu", name))
    # The bridge, the host's address on it and the VM's tap exist in the namespace only.
    assert "inet 192.168.124.1/24" in subprocess.run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", bridge],
                                                     capture_output=True, text=True).stdout  # fmt: skip
    taps = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "master", bridge], capture_output=True, text=True)
    assert len(taps.stdout.splitlines()) == 1
    assert bridge not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    # In the guest: the static address, the host's end of the bridge as its gateway and DNS server.
    guest = stack.machine("--stack", stack.name, "ssh", name, "ip -4 -o addr; ip route show default; resolvectl dns")
    assert f"inet {address}/24" in guest.stdout
    assert "default via 192.168.124.1" in guest.stdout
    assert any("192.168.124.1" in line for line in guest.stdout.splitlines() if line.startswith("Link"))
    record_figure("bridge_address", address)


def test_the_served_certificate_names_the_vms_address(bridged, netns, tmp_path):
    stack, name, _ = bridged
    outputs = stack.outputs()
    address = outputs["machines"][name]["ip"]
    for filename, key in (("ca.pem", "caCert"), ("cert.pem", "clientCert"), ("key.pem", "clientKey")):
        (tmp_path / filename).write_text(outputs[key])
    served = ns_run(
        netns, "openssl", "s_client", "-connect", f"{address}:2376", "-CAfile", str(tmp_path / "ca.pem"),
        "-cert", str(tmp_path / "cert.pem"), "-key", str(tmp_path / "key.pem"), "-verify_return_error",
        "-verify_ip", address, input="",
    )  # fmt: skip
    assert "Verify return code: 0 (ok)" in served.stdout, served.stdout + served.stderr
    sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=served.stdout,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    names = sorted(item.strip() for item in sans.splitlines()[1].split(","))
    assert names == sorted([f"IP Address:{address}", "DNS:localhost"])
    record_figure("bridge_certificate_sans", names)


def test_docker_version_over_tls_from_inside_the_namespace(bridged, netns):
    stack, name, _ = bridged
    env = dict(stack.env)
    for line in stack.machine("env", name, "--stack", stack.name).stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    version = ns_run(netns, "docker", "version", "--format", "{{.Server.Version}}", env=env, cwd=ROOT)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == stack.outputs()["machines"][name]["dockerVersion"]
    assert env["DOCKER_HOST"] == f"tcp://{stack.outputs()['machines'][name]['ip']}:2376"
    record_figure("bridge_docker_version", version.stdout.strip())
