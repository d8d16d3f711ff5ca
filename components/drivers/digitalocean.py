"""DigitalOcean driver (docker-machine's ``digitalocean``, docker-machine.md §2.3) on pulumi-digitalocean.

Per machine: the stack's SSH key uploaded (or an existing key by fingerprint), a droplet named after the
machine from Ubuntu 24.04, and — unlike docker-machine, which left droplets wide open — a cloud firewall
letting in only SSH and the engine port (plus ``open_ports``). The API token comes from the provider's own
configuration (``DIGITALOCEAN_TOKEN`` or ``pulumi config set --secret digitalocean:token``).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from typing import Any

import pulumi
import pulumi_digitalocean as do
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import Field, field_validator, model_validator

from components.config import MachineConfig, StrictModel
from components.drivers import Host

# --- shared by the cloud drivers (kept identical in aws.py, azure.py and digitalocean.py) ----------------------

ANYWHERE = "0.0.0.0/0"


def _cidr(value: Any) -> str:
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
        return list(dict.fromkeys(_cidr(c) for c in v))


def _split_cidrs(cidrs: list[str]) -> tuple[list[str], list[str]]:
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    return v4, [c for c in cidrs if c not in v4]


def _open_ports(value: Any, protocols: tuple[str, ...]) -> list[str]:
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


def md5_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint of an OpenSSH public key line, colon-separated (what DigitalOcean shows)."""
    digest = hashlib.md5(base64.b64decode(public_key.split()[1]), usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _readable_file(path: str, limit: int, what: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ValueError(f"{what} file {full} does not exist")
    size = os.path.getsize(full)
    if size > limit:
        raise ValueError(f"{what} file {full} is {size} bytes; the limit is {limit}")
    return path


def _read_file(path: str) -> bytes:
    with open(os.path.abspath(os.path.expanduser(path)), "rb") as f:
        return f.read()


# --- DigitalOcean ------------------------------------------------------------------------------------------------

USER_DATA_LIMIT = 65536  # bytes (DigitalOcean's limit)
_TAG_RE = re.compile(r"^[A-Za-z0-9_:-]{1,255}$")
OUTBOUND_ALL = [
    {"protocol": "tcp", "port_range": "1-65535", "destination_addresses": [ANYWHERE, "::/0"]},
    {"protocol": "udp", "port_range": "1-65535", "destination_addresses": [ANYWHERE, "::/0"]},
    {"protocol": "icmp", "destination_addresses": [ANYWHERE, "::/0"]},
]


class Options(OwnKey):
    region: str = Field("nyc3", pattern=r"^[a-z]{3}[0-9]$", description="a region slug (nyc3, fra1, sgp1…)")
    size: str = Field("s-1vcpu-1gb", pattern=r"^[a-z0-9][a-z0-9-]*$")
    image: str = Field("ubuntu-24-04-x64", pattern=r"^([a-z0-9][a-z0-9.-]*|[0-9]+)$", description="slug or ID")
    ssh_user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_key_fingerprint: str | None = Field(
        None, description="an SSH key already in the account (MD5 fingerprint); needs ssh_key or ssh_key_path"
    )
    ipv6: bool = False
    vpc_uuid: str | None = Field(None, description="default: the region's default VPC")
    use_private_address: bool = Field(False, description="keep the public IP but dial the private (VPC) address")
    private_address_only: bool = Field(False, description="no public networking; dial the private (VPC) address")
    backups: bool = False
    monitoring: bool = False
    tags: list[str] = []
    user_data_file: str | None = None
    open_ports: list[str] = Field([], description="PORT or PORT/tcp|udp, opened in the firewall")
    allowed_cidrs: AllowedCidrs = AllowedCidrs()

    @field_validator("ssh_key_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"([0-9a-f]{2}:){15}[0-9a-f]{2}", v.lower()):
            raise ValueError(f"{v!r} is not an MD5 key fingerprint (aa:bb:…, 16 pairs, as the control panel shows)")
        return None if v is None else v.lower()

    @field_validator("vpc_uuid")
    @classmethod
    def _vpc(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", v):
            raise ValueError(f"{v!r} is not a VPC UUID")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):  # docker-machine's comma list
            v = [t.strip() for t in v.split(",") if t.strip()]
        for tag in v:
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise ValueError(f"tag {tag!r}: letters, digits, colons, dashes and underscores, up to 255")
        return list(dict.fromkeys(v))

    @field_validator("open_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> list[str]:
        return _open_ports(v, ("tcp", "udp"))

    @field_validator("user_data_file")
    @classmethod
    def _user_data(cls, v: str | None) -> str | None:
        if v is None:
            return None
        _readable_file(v, USER_DATA_LIMIT, "user data")
        try:
            _read_file(v).decode()
        except UnicodeDecodeError:
            raise ValueError(f"user data file {v} is not UTF-8 text, which DigitalOcean requires") from None
        return v

    @model_validator(mode="after")
    def _combinations(self) -> Options:
        if self.ssh_key_fingerprint:
            own = own_private_key(self.ssh_key, self.ssh_key_path)
            if own is None:
                raise ValueError("ssh_key_fingerprint needs its private key: ssh_key (a secret) or ssh_key_path")
            if md5_fingerprint(own[1]) != self.ssh_key_fingerprint:
                raise ValueError(
                    f"ssh_key_fingerprint {self.ssh_key_fingerprint} is not the configured private key's "
                    f"(its fingerprint is {md5_fingerprint(own[1])})"
                )
        return self


def inbound_rules(options: Options, engine_port: int) -> list[dict[str, Any]]:
    cidrs = options.allowed_cidrs
    rules = [
        {"protocol": "tcp", "port_range": str(options.ssh_port), "source_addresses": cidrs.ssh},
        {"protocol": "tcp", "port_range": str(engine_port), "source_addresses": cidrs.engine},
    ]
    for item in options.open_ports:
        port, protocol = item.split("/")
        rules.append({"protocol": protocol, "port_range": port, "source_addresses": cidrs.open_ports})
    return rules


def create_host(name: str, machine: MachineConfig, ssh_key: Any, state_dir: str, opts: pulumi.ResourceOptions) -> Host:
    o: Options = machine.options

    private_key: pulumi.Input[str] = ssh_key.private_key
    public_key: pulumi.Input[str] = ssh_key.public_key
    own = own_private_key(o.ssh_key, o.ssh_key_path)
    if own:
        private_key, public_key = pulumi.Output.secret(own[0]), own[1]
    if o.ssh_key_fingerprint:
        fingerprint: pulumi.Input[str] = o.ssh_key_fingerprint
    else:
        fingerprint = do.SshKey(f"{name}-key", name=machine.name, public_key=public_key, opts=opts).fingerprint

    user_data = None
    if o.user_data_file:
        user_data = _read_file(o.user_data_file).decode()

    droplet = do.Droplet(
        f"{name}-droplet",
        name=machine.name,
        image=o.image,
        region=o.region,
        size=o.size,
        ssh_keys=[fingerprint],
        ipv6=o.ipv6,
        vpc_uuid=o.vpc_uuid,
        public_networking=False if o.private_address_only else None,
        backups=o.backups,
        monitoring=o.monitoring,
        tags=o.tags or None,
        user_data=user_data,
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m"))
        ),
    )
    firewall = do.Firewall(
        f"{name}-firewall",
        name=f"docker-machine-{machine.name}",
        droplet_ids=[droplet.id.apply(int)],
        inbound_rules=inbound_rules(o, machine.engine.port),
        outbound_rules=OUTBOUND_ALL,
        opts=opts,
    )

    private = o.private_address_only or o.use_private_address
    address = droplet.ipv4_address_private if private else droplet.ipv4_address
    return Host(
        ssh_host=address,
        ssh_port=o.ssh_port,
        ssh_user=o.ssh_user,
        ssh_private_key=private_key,
        address=address,
        engine_port=machine.engine.port,
        # Provisioning starts once the firewall is in place: what it lets in is what provisioning relies on.
        ready=firewall,
    )
