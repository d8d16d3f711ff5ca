"""What the cloud drivers (aws, azure, digitalocean) share: allowed CIDRs, ``open_ports``, the user's own SSH key
and file helpers.

Not a driver (``components.drivers.available()`` skips modules starting with ``_``) and imports no cloud SDK, so
that each SDK is still imported by its own driver only.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from typing import Any

import pulumi
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import Field, field_validator, model_validator

from components.config import StrictModel

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


def public_key_of(data: bytes, where: str) -> str:
    """Check an unencrypted SSH private key (OpenSSH or PEM); return its public key as an OpenSSH line."""
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{where} is protected by a passphrase, which unattended SSH cannot use") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{where} is not an OpenSSH or PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"{where} is not an RSA, ECDSA or Ed25519 key")
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def read_private_key(path: str) -> tuple[str, str]:
    """(the key's text, its public key line) from a private key file."""
    full = os.path.abspath(os.path.expanduser(path))
    try:
        with open(full, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"cannot read {full}: {err.strerror}") from None
    return data.decode(), public_key_of(data, full)


def own_private_key(ssh_key: str | None, ssh_key_path: str | None) -> tuple[str, str] | None:
    """The user's own key, given as a (secret) config value or a file: (private key text, public key line)."""
    if ssh_key_path:
        return read_private_key(ssh_key_path)
    if ssh_key:
        return ssh_key, public_key_of(ssh_key.encode(), "ssh_key")
    return None


class OwnKey(StrictModel):
    """``ssh_key`` (the private key itself, set as a secret) or ``ssh_key_path``: the user's key instead of the
    one the stack generates (docker-machine's ``--*-ssh-keypath``)."""

    MULTILINE = frozenset({"ssh_key"})

    ssh_key: str | None = Field(None, description="private key (OpenSSH/PEM, no passphrase); set it as a secret")
    ssh_key_path: str | None = Field(None, description="a private key file (OpenSSH/PEM, no passphrase)")

    @field_validator("ssh_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None:
            public_key_of(v.encode(), "ssh_key")
        return v

    @field_validator("ssh_key_path")
    @classmethod
    def _key_path(cls, v: str | None) -> str | None:
        if v is not None:
            read_private_key(v)
        return v

    @model_validator(mode="after")
    def _one_key(self) -> OwnKey:
        if self.ssh_key and self.ssh_key_path:
            raise ValueError("give one of ssh_key (a secret) or ssh_key_path, not both")
        return self


def login_key(options: OwnKey, stack_key: Any) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
    """(private key, public key line) the machine is reached with: the user's own key from ``options`` (its
    private key kept a secret), else the stack's generated ``stack_key``."""
    own = own_private_key(options.ssh_key, options.ssh_key_path)
    if own:
        return pulumi.Output.secret(own[0]), own[1]
    return stack_key.private_key, stack_key.public_key


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
