"""cloud-init NoCloud seed ISOs (volume label ``cidata``), shared by the local VM drivers."""

from __future__ import annotations

import io
import ipaddress
import json

import pycdlib


def user_data(hostname: str, user: str, authorized_key: str) -> str:
    """A cloud-config with one passwordless-sudo user reachable by key only.

    The ``docker`` group is created as a *system* group before users are added, so a user named
    ``docker`` works both on images with Docker pre-installed (group exists) and on bare images
    (the docker.io package then finds the system group it expects).
    """
    config = {
        "hostname": hostname,
        "manage_etc_hosts": True,
        "bootcmd": ["getent group docker >/dev/null || groupadd --system docker"],
        "users": [
            {
                "name": user,
                "gecos": "Docker machine user",
                "primary_group": "docker",
                "groups": ["sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": [authorized_key],
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        "package_update": False,
        "package_upgrade": False,
    }
    # JSON is valid YAML; cloud-init only needs the #cloud-config header.
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def ethernet(mac: str, *, dhcp: bool = False, address: str | None = None, cidr: str | None = None,
             gateway: str | None = None) -> dict:  # fmt: skip
    """One NIC of a network-config, matched by its MAC (cloud-init names it after the device that has it).

    ``address`` is a static address in ``cidr``; a ``gateway`` is also the NIC's DNS server (the host's forwarder in
    bridge mode).
    """
    nic: dict = {"match": {"macaddress": mac}, "dhcp4": dhcp}
    if address and cidr:
        nic["addresses"] = [f"{address}/{ipaddress.IPv4Network(cidr).prefixlen}"]
    if gateway:
        nic["routes"] = [{"to": "0.0.0.0/0", "via": gateway}]
        nic["nameservers"] = {"addresses": [gateway]}
    return nic


def network_config(ethernets: dict[str, dict]) -> str:
    """cloud-init network-config v2 (JSON is valid YAML) for the NICs of ``ethernet``, by name."""
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=1) + "\n"


def meta_data(instance_id: str, hostname: str) -> str:
    return f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n"


def build_iso(files: dict[str, str]) -> bytes:
    """An ISO9660 image with Joliet and Rock Ridge names, labelled ``cidata``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, content) in enumerate(sorted(files.items())):
        data = content.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
