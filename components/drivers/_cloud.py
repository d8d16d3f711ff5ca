"""What the cloud drivers (aws, azure, digitalocean) share: allowed CIDRs, ``open_ports`` and file helpers (the
user's own SSH key is checked by ``components.sshkeys``, shared with the generic driver).

Not a driver (``components.drivers.available()`` skips modules starting with ``_``) and imports no cloud SDK, so
that each SDK is still imported by its own driver only.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from typing import Annotated, Any

import pulumi
from pydantic import BeforeValidator, Field, field_validator

from components import cloudinit
from components.drivers.base import DriverContext, Host
from components.model import StrictModel

ANYWHERE = "0.0.0.0/0"


def cidr(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as err:
        raise ValueError(f"{value!r} is not a valid CIDR ({err})") from None


class AllowedCidrs(StrictModel):
    """Sources allowed in, per group of ports. docker-machine opened everything to 0.0.0.0/0; the engine port
    only speaks mutual TLS, so that stays the default. The machine running ``pulumi up`` must stay inside both
    ``ssh`` (provisioning) and ``engine`` (the API check)."""

    ssh: list[str] = Field([ANYWHERE], min_length=1)
    engine: list[str] = Field([ANYWHERE], min_length=1)
    open_ports: list[str] = Field([ANYWHERE], min_length=1)

    @field_validator("ssh", "engine", "open_ports")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(cidr(c) for c in v))


def split_cidrs(cidrs: list[str]) -> tuple[list[str], list[str]]:
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    return v4, [c for c in cidrs if c not in v4]


def parse_open_ports(value: Any, protocols: tuple[str, ...]) -> list[str]:
    """docker-machine's ``--*-open-port`` values (``8080``, ``53/udp``) normalised to ``port/protocol``."""
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    ports = []
    for item in value:
        match = re.fullmatch(r"(\d{1,5})(?:/([a-z*]+))?", str(item).strip().lower())
        if not match:
            raise ValueError(f"open port {item!r} must look like PORT or PORT/PROTOCOL (e.g. 8080, 53/udp)")
        port, protocol = int(match[1]), match[2] or "tcp"
        if not 1 <= port <= 65535:
            raise ValueError(f"open port {item!r}: port {port} is out of range 1-65535")
        if protocol not in protocols:
            raise ValueError(f"open port {item!r}: protocol must be one of {', '.join(protocols)}")
        ports.append(f"{port}/{protocol}")
    return list(dict.fromkeys(ports))


def md5_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint of an OpenSSH public key line, colon-separated (what DigitalOcean shows)."""
    digest = hashlib.md5(base64.b64decode(public_key.split()[1]), usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def readable_file(path: str, limit: int, what: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ValueError(f"{what} file {full} does not exist")
    size = os.path.getsize(full)
    if size > limit:
        raise ValueError(f"{what} file {full} is {size} bytes; the limit is {limit}")
    return path


def read_file(path: str) -> bytes:
    with open(os.path.abspath(os.path.expanduser(path)), "rb") as f:
        return f.read()


# docker-machine's ``--*-open-port`` values, normalised to ``port/protocol``, for clouds that open TCP and UDP.
OpenPorts = Annotated[list[str], BeforeValidator(lambda value: parse_open_ports(value, ("tcp", "udp")))]


def cloud_host(ctx: DriverContext, address: pulumi.Input[str], ssh_port: int, ssh_user: str,
               private_key: pulumi.Input[str], ready: pulumi.Resource,
               private_address: pulumi.Input[str]) -> Host:  # fmt: skip
    """A cloud VM: SSH, the Docker client and the server certificate all use ``address``; the stack's other machines
    reach it at its ``private_address`` in the cloud's network."""
    return Host(ssh_host=address, ssh_port=ssh_port, ssh_user=ssh_user, ssh_private_key=private_key,
                host_key=ctx.host_key.public_key, address=address, engine_port=ctx.machine.engine.port, ready=ready,
                private_address=private_address)  # fmt: skip


def user_data(ctx: DriverContext, user_data_file: str | None) -> pulumi.Output[str]:
    """The VM's user-data: the SSH host key we made (cloud-init installs it, so the first dial can pin it) and the
    user's own user-data file, if any; a secret, as it holds the host's private key."""
    extra = read_file(user_data_file) if user_data_file else None
    keys = pulumi.Output.all(ctx.host_key.private_key, ctx.host_key.public_key)
    return pulumi.Output.secret(keys.apply(lambda k: cloudinit.cloud_user_data((k[0], k[1]), extra)))


def ports(value: Any) -> range | None:
    """A port or range as clouds write it ("22", "1000-2000", 22.0 from the engine); None for every port ("*", "all",
    "", -1)."""
    text = str(value if value is not None else "").strip().lower()
    if text in ("", "*", "all", "any", "-1", "-1.0"):
        return None
    low, _, high = text.partition("-")
    return range(int(float(low)), int(float(high or low)) + 1)
