"""cloud-init for the machines we create: the user-data (user, key, SSH host key), network-config and the NoCloud
seed ISO (volume label ``cidata``) of the local drivers; the cloud drivers pass the same user-data to their clouds."""

from __future__ import annotations

import gzip
import io
import ipaddress
import json
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pycdlib


def host_key_config(private_key: str, public_key: str) -> dict:
    """The machine's SSH host key, which we generated and every dial pins: the only one sshd serves."""
    return {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": private_key.strip() + "\n", "ed25519_public": public_key.strip()},
    }


def user_data(hostname: str, user: str, authorized_key: str, host_key: tuple[str, str]) -> str:
    """A cloud-config with one passwordless-sudo user reachable by key only, and the SSH host key we made
    (``host_key``: private key, public key line).

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
        **host_key_config(*host_key),
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


def cloud_user_data(host_key: tuple[str, str], extra: bytes | None = None) -> str:
    """A cloud VM's user-data: our cloud-config (the SSH host key), plus the user's own user-data file if any, as
    a multipart message whose parts cloud-init reads by their first line (#cloud-config, #!…)."""
    ours = "#cloud-config\n" + json.dumps(host_key_config(*host_key), indent=1) + "\n"
    if extra is None:
        return ours
    if extra[:2] == b"\x1f\x8b":
        extra = gzip.decompress(extra)
    try:
        theirs = extra.decode()
    except UnicodeDecodeError:
        raise ValueError("the user data file is neither text nor gzip-compressed text") from None
    message = MIMEMultipart()
    message.attach(MIMEText(ours, "cloud-config"))
    message.attach(MIMEText(theirs, "plain"))
    return message.as_string()
