"""The user's own SSH private key (``ssh_key`` or ``ssh_key_path``): one check for every driver that takes one."""

from __future__ import annotations

import os
from typing import Any

import pulumi
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import Field, field_validator, model_validator

from components.model import StrictModel

# Larger than any private key: a bigger file is not one (and is not read whole).
_KEY_FILE_LIMIT = 64 * 1024


def public_key_of(data: bytes, where: str) -> str:
    """Check an unencrypted SSH private key (OpenSSH or PEM); return its public key as an OpenSSH line."""
    if data.lstrip().startswith((b"ssh-", b"ecdsa-")):
        raise ValueError(f"{where} is a public key: give the private key (the file without .pub)")
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
        if os.path.exists(full) and not os.path.isfile(full):
            raise ValueError(f"{full} is not a file")
        with open(full, "rb") as f:
            data = f.read(_KEY_FILE_LIMIT + 1)
        if len(data) > _KEY_FILE_LIMIT:
            raise ValueError(f"{full} is not an OpenSSH or PEM private key (it is larger than any key)")
    except FileNotFoundError:
        raise ValueError(f"cannot read {full}: it does not exist") from None
    except OSError as err:
        raise ValueError(f"cannot read {full}: {err.strerror}") from None
    public = public_key_of(data, full)
    return data.decode("ascii"), public


def own_private_key(ssh_key: str | None, ssh_key_path: str | None) -> tuple[str, str] | None:
    """The user's own key, given as a (secret) config value or a file: (private key text, public key line)."""
    if ssh_key_path:
        return read_private_key(ssh_key_path)
    if ssh_key:
        return ssh_key, public_key_of(ssh_key.encode(), "ssh_key")
    return None


class OwnKey(StrictModel):
    """``ssh_key`` (the private key itself, set as a secret) or ``ssh_key_path``: the user's key instead of the one
    the stack generates (docker-machine's ``--*-ssh-keypath``)."""

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

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("ssh_key") and data.get("ssh_key_path"):
            raise ValueError("give exactly one of ssh_key (a secret) or ssh_key_path, not both")
        return data


def login_key(options: OwnKey, stack_key: Any) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
    """(private key, public key line) the machine is reached with: the user's own key from ``options`` (its private
    key kept a secret), else the stack's generated ``stack_key``."""
    own = own_private_key(options.ssh_key, options.ssh_key_path)
    if own:
        return pulumi.Output.secret(own[0]), own[1]
    return stack_key.private_key, stack_key.public_key


def check_public_key(line: str) -> str:
    """An SSH public key as known_hosts or a .pub file writes it (``type base64 [comment]``): ``type base64``."""
    parts = line.split()
    if len(parts) >= 3 and not parts[0].startswith(("ssh-", "ecdsa-")):
        parts = parts[1:]  # a known_hosts line starts with the host names
    try:
        serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
    except (ValueError, UnsupportedAlgorithm, IndexError):
        raise ValueError("is not an SSH public key line (e.g. 'ssh-ed25519 AAAA…', as in known_hosts)") from None
    return " ".join(parts[:2])


def known_host_key(known_hosts: str, host: str, port: int) -> str | None:
    """The key ``known_hosts`` (OpenSSH's format, hashed names too) holds for host:port, ed25519 first; None if none."""
    import paramiko

    try:
        entries = paramiko.HostKeys(known_hosts)
    except (OSError, paramiko.SSHException):
        return None
    found = entries.lookup(host if port == 22 else f"[{host}]:{port}") or {}
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"):
        if kind in found:
            return f"{kind} {found[kind].get_base64()}"
    return None
