"""The QEMU driver's bridge mode (root): a host bridge with NAT and a DNS forwarder, a tap per VM, an address
per VM from a lease file, and the guest's static network config (docs/local-vms.md#bridge-mode)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal

from components.drivers._local import claim_lease, pid_alive, read_pid, release_lease, run, state_root

_RULE_COMMENT = "docker-machine-pulumi"


def _bridge_dir(bridge: str) -> str:
    return os.path.join(state_root(), "bridges", bridge)


def _leases(bridge: str) -> str:
    return os.path.join(_bridge_dir(bridge), "leases")


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


def bridge_up(bridge: str, cidr: str) -> str:
    """Create the bridge, NAT and a DNS forwarder for it once; return the host's address on it."""
    if os.geteuid() != 0:
        raise RuntimeError("network: bridge needs root (CAP_NET_ADMIN); use network: user instead")
    network = ipaddress.IPv4Network(cidr)
    gateway = str(next(network.hosts()))
    if run("ip", "link", "show", bridge, check=False).returncode != 0:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{gateway}/{network.prefixlen}", "dev", bridge)
    run("ip", "link", "set", bridge, "up")
    run("sysctl", "-q", "net.ipv4.ip_forward=1")
    for rule in _iptables_rules(bridge, cidr):
        table, chain, spec = rule[:2], rule[2], rule[3:]
        if run("iptables", *table, "-C", chain, *spec, check=False).returncode != 0:
            run("iptables", *table, "-I", chain, "1", *spec)
    os.makedirs(_leases(bridge), exist_ok=True)
    pidfile = os.path.join(_bridge_dir(bridge), "dnsmasq.pid")
    if not pid_alive(read_pid(pidfile)):
        upstream = _upstream_dns()
        servers = [f"--server={s}" for s in upstream] if upstream else []
        run(
            "dnsmasq", "--conf-file=/dev/null", f"--interface={bridge}", "--bind-interfaces",
            "--except-interface=lo", f"--listen-address={gateway}", "--no-resolv", *servers,
            f"--pid-file={pidfile}",
        )  # fmt: skip
    return gateway


def bridge_down_if_unused(bridge: str, cidr: str) -> None:
    leases = _leases(bridge)
    if os.path.isdir(leases) and os.listdir(leases):
        return
    pid = read_pid(os.path.join(_bridge_dir(bridge), "dnsmasq.pid"))
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
    for rule in _iptables_rules(bridge, cidr):
        table, chain, spec = rule[:2], rule[2], rule[3:]
        while run("iptables", *table, "-D", chain, *spec, check=False).returncode == 0:
            pass
    run("ip", "link", "del", bridge, check=False)
    shutil.rmtree(_bridge_dir(bridge), ignore_errors=True)


def lease_address(bridge: str, cidr: str, instance_dir: str, wanted: str | None) -> str:
    """Reserve an address on the bridge for the VM in ``instance_dir``."""
    hosts = [str(h) for h in ipaddress.IPv4Network(cidr).hosts()][1:]  # the first host address is the bridge's
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


def network_config(mac: str, address: str, cidr: str, gateway: str) -> str:
    """cloud-init network-config v2: the VM's static address on the bridge, the host as gateway and DNS."""
    prefix = ipaddress.IPv4Network(cidr).prefixlen
    config = {
        "version": 2,
        "ethernets": {
            "primary": {
                "match": {"macaddress": mac},
                "addresses": [f"{address}/{prefix}"],
                "routes": [{"to": "0.0.0.0/0", "via": gateway}],
                "nameservers": {"addresses": [gateway]},
            }
        },
    }
    return json.dumps(config, indent=1) + "\n"
