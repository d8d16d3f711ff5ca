"""The QEMU driver's bridge mode (root): a host bridge with NAT and a DNS forwarder, a tap per VM and an address per
VM from a lease file (docs/local-vms.md#bridge-mode)."""

from __future__ import annotations

import ipaddress
import os
import shutil

from components.drivers._local import process
from components.drivers._local.leases import claim_lease, locked, release_lease
from components.drivers._local.paths import run, state_root

_RULE_COMMENT = "docker-machine-pulumi"


# Set to 1 while a bridge exists; what it was before is kept in the bridges' directory and put back after the last.
FORWARDING = "/proc/sys/net/ipv4/ip_forward"
COMMANDS = {"ip": "iproute2", "iptables": "iptables", "dnsmasq": "dnsmasq-base"}


def _bridges_dir() -> str:
    return os.path.join(state_root(), "bridges")


def _bridge_dir(bridge: str) -> str:
    return os.path.join(_bridges_dir(), bridge)


def _dnsmasq_pidfile(bridge: str) -> str:
    return os.path.join(_bridge_dir(bridge), "dnsmasq.pid")


def _leases(bridge: str) -> str:
    return os.path.join(_bridge_dir(bridge), "leases")


def problems() -> list[str]:
    """Why bridge mode cannot work on this host (nothing: it can)."""
    found = []
    if os.geteuid() != 0:
        found.append("needs root: it creates a bridge, a tap per VM and NAT rules; use network: user (no root)")
    missing = [f"{command} ({package})" for command, package in COMMANDS.items() if not shutil.which(command)]
    if missing:
        found.append(f"needs {', '.join(missing)} on the host")
    return found


def _iptables_rules(bridge: str, cidr: str) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", _RULE_COMMENT]
    return [
        ["-t", "nat", "POSTROUTING", "-s", cidr, "!", "-o", bridge, *comment, "-j", "MASQUERADE"],
        ["-t", "filter", "FORWARD", "-i", bridge, *comment, "-j", "ACCEPT"],
        ["-t", "filter", "FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
         *comment, "-j", "ACCEPT"],
    ]  # fmt: skip


def _upstream_dns() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            servers = [line.split()[1] for line in f if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        servers = []
    return servers


def _forwarding_on() -> None:
    with open(FORWARDING) as f:
        if f.read().strip() == "1":
            return
    with open(os.path.join(_bridges_dir(), "ip_forward.before"), "w") as f:
        f.write("0")
    with open(FORWARDING, "w") as f:
        f.write("1")


def _forwarding_back() -> None:
    """After the last bridge: forwarding as it was before the first, and no bridges' directory."""
    root = _bridges_dir()
    if not os.path.isdir(root) or any(os.path.isdir(os.path.join(root, entry)) for entry in os.listdir(root)):
        return
    before = os.path.join(root, "ip_forward.before")
    if os.path.exists(before):
        with open(before) as f, open(FORWARDING, "w") as forwarding:
            forwarding.write(f.read().strip())
    shutil.rmtree(root, ignore_errors=True)


def gateway(cidr: str) -> str:
    """The host's address on the bridge: the first of its network, the VMs' gateway and DNS server."""
    return str(next(ipaddress.IPv4Network(cidr).hosts()))


def bridge_up(bridge: str, cidr: str) -> None:
    """Create the bridge, NAT and a DNS forwarder for it unless they exist."""
    if problems():
        raise RuntimeError(f"network: bridge {'; '.join(problems())}")
    network, host = ipaddress.IPv4Network(cidr), gateway(cidr)
    with locked(_bridge_dir(bridge)):
        if run("ip", "link", "show", bridge, check=False).returncode != 0:
            run("ip", "link", "add", bridge, "type", "bridge")
            run("ip", "addr", "add", f"{host}/{network.prefixlen}", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        _forwarding_on()
        for rule in _iptables_rules(bridge, cidr):
            table, chain, spec = rule[:2], rule[2], rule[3:]
            if run("iptables", *table, "-C", chain, *spec, check=False).returncode != 0:
                run("iptables", *table, "-I", chain, "1", *spec)
        os.makedirs(_leases(bridge), exist_ok=True)
        pidfile = _dnsmasq_pidfile(bridge)
        if process.verified_pid(pidfile, f"--pid-file={pidfile}") is None:
            servers = [f"--server={server}" for server in _upstream_dns()]
            run(
                "dnsmasq", "--conf-file=/dev/null", f"--interface={bridge}", "--bind-interfaces",
                "--except-interface=lo", f"--listen-address={host}", "--no-resolv", *servers,
                f"--pid-file={pidfile}",
            )  # fmt: skip


def bridge_down_if_unused(bridge: str, cidr: str) -> None:
    """After the bridge's last VM: no dnsmasq, NAT rules, bridge nor state left."""
    if not os.path.isdir(_bridge_dir(bridge)):
        return
    with locked(_bridge_dir(bridge)):
        leases = _leases(bridge)
        if os.path.isdir(leases) and os.listdir(leases):
            return
        # Only the dnsmasq we started: after a reboot its old pid may be any program's (run as root here).
        pidfile = _dnsmasq_pidfile(bridge)
        process.stop(pidfile, f"--pid-file={pidfile}")
        for rule in _iptables_rules(bridge, cidr):
            table, chain, spec = rule[:2], rule[2], rule[3:]
            while run("iptables", *table, "-D", chain, *spec, check=False).returncode == 0:
                pass
        run("ip", "link", "del", bridge, check=False)
        shutil.rmtree(_bridge_dir(bridge), ignore_errors=True)
    _forwarding_back()


def lease_address(bridge: str, cidr: str, instance_dir: str, wanted: str | None) -> str:
    """Reserve an address on the bridge for the VM in ``instance_dir``."""
    hosts = [str(h) for h in ipaddress.IPv4Network(cidr).hosts()][1:]  # the first host address is the bridge's
    # Under the bridge's lock: its last VM going away at the same time removes the directory the lease is in.
    with locked(_bridge_dir(bridge)):
        address = claim_lease(_leases(bridge), [wanted] if wanted else hosts, instance_dir)
    if address is None and wanted:
        raise RuntimeError(f"address {wanted} on {bridge} is already used by {os.path.join(_leases(bridge), wanted)}")
    if address is None:
        raise RuntimeError(f"no free address left in {cidr}")
    return address


def release_address(bridge: str, address: str, instance_dir: str | None = None) -> None:
    path = os.path.join(_leases(bridge), address)
    owner = instance_dir
    if owner is None:
        try:
            with open(path) as f:
                owner = f.read().strip()
        except OSError:
            return
    release_lease(_leases(bridge), address, owner)
