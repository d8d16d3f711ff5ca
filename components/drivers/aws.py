"""AWS EC2 driver (docker-machine's ``amazonec2``, docker-machine.md §2.1) on pulumi-aws.

Per machine: an EC2 key pair imported from the stack's SSH key (or an existing key pair), a security group
opening SSH and the engine port (plus ``open_ports``) and the instance, in the default VPC and the zone's
default subnet unless told otherwise. The AMI is the newest Ubuntu 24.04 LTS from Canonical unless given.
Credentials and provider settings (profile, endpoints, retries) come from the AWS provider's own
configuration: the environment or ``pulumi config set --secret aws:…``, never from this driver's options.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
from typing import Any, Literal

import pulumi
import pulumi_aws as aws
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


# --- AWS ---------------------------------------------------------------------------------------------------------

# Canonical's AWS account: the owner of the official Ubuntu AMIs.
CANONICAL_OWNER_ID = "099720109477"
# Ubuntu 24.04 LTS (standard support until 2029), the current docker-machine-style default.
UBUNTU_AMI_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"
REGION_RE = r"^[a-z]{2,4}(-[a-z]+)+-\d{1,2}$"
# Graviton (arm64) families: a1, and a "g" right after the generation (t4g, m7g, c7gn, im4gn, x2gd…).
_ARM_FAMILY_RE = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)(-[a-z]+)?\.")
USER_DATA_LIMIT = 16384  # bytes, before base64 (EC2's limit)


def architecture_of(instance_type: str) -> Literal["x86_64", "arm64"]:
    return "arm64" if _ARM_FAMILY_RE.match(instance_type) else "x86_64"


def _tags(value: Any) -> dict[str, str]:
    """A mapping, a list of ``key=value``, or docker-machine's ``k1,v1,k2,v2`` string."""
    if value is None:
        return {}
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")] if value.strip() else []
        if len(parts) % 2:
            raise ValueError("tags as a string must be docker-machine's key1,value1,key2,value2 form")
        value = dict(zip(parts[::2], parts[1::2], strict=True))
    elif isinstance(value, list):
        pairs = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"tag {item!r} must look like key=value")
            k, v = item.split("=", 1)
            pairs[k] = v
        value = pairs
    if not isinstance(value, dict):
        raise ValueError("tags must be a mapping, a list of key=value or key1,value1,key2,value2")
    tags = {}
    for k, v in value.items():
        k, v = str(k), "" if v is None else str(v)
        if not 1 <= len(k) <= 128 or len(v) > 256:
            raise ValueError(f"tag {k!r}: keys are 1-128 characters, values at most 256")
        if k.lower().startswith("aws:"):
            raise ValueError(f"tag {k!r}: the aws: prefix is reserved")
        if k == "Name":
            raise ValueError("tag 'Name' is always the machine name")
        if any(ord(c) < 32 for c in k + v):
            raise ValueError(f"tag {k!r} contains a control character")
        tags[k] = v
    return tags


class Options(OwnKey):
    region: str | None = Field(
        None, description="default: aws:region, else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1"
    )
    zone: str = Field("a", pattern=r"^[a-z]$", description="availability zone letter: AZ = region + zone")
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]{8,17}$", description="default: the default VPC")
    subnet_id: str | None = Field(
        None, pattern=r"^subnet-[0-9a-f]{8,17}$", description="default: the zone's default subnet"
    )
    ami: str | None = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$", description="default: Canonical's Ubuntu 24.04")
    architecture: Literal["x86_64", "arm64"] | None = Field(None, description="of the AMI looked up; from the type")
    instance_type: str = Field("t3.small", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
    root_size: int = Field(16, ge=8, le=16384, description="GiB (docker-machine's 16)")
    volume_type: Literal["gp3", "gp2", "standard"] = "gp3"
    iam_instance_profile: str | None = Field(None, pattern=r"^[\w+=,.@-]{1,128}$")
    security_group_ids: list[str] = Field([], description="existing groups to attach, never modified")
    create_security_group: bool = Field(True, description="a group opening SSH, the engine port and open_ports")
    open_ports: list[str] = Field([], description="PORT or PORT/tcp|udp, opened in the created group")
    allowed_cidrs: AllowedCidrs = AllowedCidrs()
    key_pair_name: str | None = Field(
        None, min_length=1, max_length=255, description="an existing EC2 key pair (needs ssh_key or ssh_key_path)"
    )
    ssh_user: str = Field("ubuntu", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ssh_port: int = Field(22, ge=1, le=65535)
    tags: dict[str, str] = {}
    spot: bool = Field(False, description="request a (one-time) spot instance")
    spot_price: str | None = Field(None, description="max USD/hour; default: capped at the on-demand price")
    private_address_only: bool = Field(False, description="no public IP; dial the private address")
    use_private_address: bool = Field(False, description="keep the public IP but dial the private address")
    user_data_file: str | None = None
    monitoring: bool = Field(False, description="detailed CloudWatch monitoring")
    ebs_optimized: bool = False

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not re.match(REGION_RE, v):
            raise ValueError(f"{v!r} is not an AWS region name (e.g. us-east-1, eu-central-1)")
        return v

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for group in v:
            if not re.match(r"^sg-[0-9a-f]{8,17}$", group):
                raise ValueError(f"{group!r} is not a security group ID (sg-…)")
        return list(dict.fromkeys(v))

    @field_validator("open_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> list[str]:
        return _open_ports(v, ("tcp", "udp"))

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_values(cls, v: Any) -> dict[str, str]:
        return _tags(v)

    @field_validator("spot_price", mode="before")
    @classmethod
    def _price(cls, v: Any) -> str | None:
        if v is None:
            return None
        text = str(v).strip()
        if isinstance(v, bool) or not re.fullmatch(r"\d+(\.\d+)?", text) or float(text) <= 0:
            raise ValueError(f"{v!r} is not a price in USD per hour (e.g. 0.05)")
        return text

    @field_validator("user_data_file")
    @classmethod
    def _user_data(cls, v: str | None) -> str | None:
        return None if v is None else _readable_file(v, USER_DATA_LIMIT, "user data")

    @model_validator(mode="after")
    def _combinations(self) -> Options:
        if self.spot_price is not None and not self.spot:
            raise ValueError("spot_price needs spot: true")
        if self.key_pair_name and not (self.ssh_key or self.ssh_key_path):
            raise ValueError("key_pair_name needs its private key: ssh_key (a secret) or ssh_key_path")
        if not self.create_security_group and not self.security_group_ids:
            raise ValueError("create_security_group: false needs security_group_ids")
        if self.open_ports and not self.create_security_group:
            raise ValueError("open_ports are opened in the created security group: create_security_group is false")
        return self


def default_region() -> str:
    """The AWS provider's region: ``aws:region``, else the SDK's environment variables, else docker-machine's."""
    return (
        pulumi.Config("aws").get("region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def _rule(port: int, protocol: str, cidrs: list[str], description: str) -> dict[str, Any]:
    v4, v6 = _split_cidrs(cidrs)
    rule: dict[str, Any] = {"description": description, "protocol": protocol, "from_port": port, "to_port": port}
    if v4:
        rule["cidr_blocks"] = v4
    if v6:
        rule["ipv6_cidr_blocks"] = v6
    return rule


def ingress_rules(options: Options, engine_port: int) -> list[dict[str, Any]]:
    cidrs = options.allowed_cidrs
    rules = [
        _rule(options.ssh_port, "tcp", cidrs.ssh, "SSH (provisioning)"),
        _rule(engine_port, "tcp", cidrs.engine, "Docker engine (mutual TLS)"),
    ]
    for item in options.open_ports:
        port, protocol = item.split("/")
        rules.append(_rule(int(port), protocol, cidrs.open_ports, f"open port {item}"))
    return rules


EGRESS_ALL = {
    "description": "all outbound (packages, images)",
    "protocol": "-1",
    "from_port": 0,
    "to_port": 0,
    "cidr_blocks": [ANYWHERE],
    "ipv6_cidr_blocks": ["::/0"],
}


def _fail(message: str) -> None:
    # RunError: one line for the user, no traceback; raised before the instance is registered.
    raise pulumi.RunError(f"aws: {message}")


def _placement(o: Options, region: str, zone: str) -> tuple[str, str]:
    """(subnet ID, VPC ID) per docker-machine: the given subnet, else the zone's subnet of the given VPC, else the
    default VPC and the zone's default subnet. Looked up synchronously so that a bad value fails early."""
    if o.subnet_id:
        vpc_id = aws.ec2.get_subnet(id=o.subnet_id, region=region).vpc_id
        if o.vpc_id and vpc_id != o.vpc_id:
            _fail(f"subnet {o.subnet_id} belongs to {vpc_id}, not to vpc_id {o.vpc_id}")
        return o.subnet_id, vpc_id
    if o.vpc_id:
        ids = aws.ec2.get_subnets(
            filters=[{"name": "vpc-id", "values": [o.vpc_id]}, {"name": "availability-zone", "values": [zone]}],
            region=region,
        ).ids
        if not ids:
            _fail(f"VPC {o.vpc_id} has no subnet in {zone}; set subnet_id or another zone")
        return sorted(ids)[0], o.vpc_id
    vpc_id = aws.ec2.get_vpc(default=True, region=region).id
    subnet = aws.ec2.get_subnet(vpc_id=vpc_id, availability_zone=zone, default_for_az=True, region=region)
    return subnet.id, vpc_id


def _existing_key_pair(name: str, public_key: str, region: str) -> str:
    found = aws.ec2.get_key_pair(key_name=name, include_public_key=True, region=region)
    published = (found.public_key or "").split()[:2]
    if published and published != public_key.split()[:2]:
        _fail(f"key pair {name!r} holds another public key than the configured private key's")
    return found.key_name


def create_host(name: str, machine: MachineConfig, ssh_key: Any, state_dir: str, opts: pulumi.ResourceOptions) -> Host:
    o: Options = machine.options
    region = o.region or default_region()
    zone = f"{region}{o.zone}"
    tags = {**o.tags, "Name": machine.name}

    subnet_id, vpc_id = _placement(o, region, zone)

    # The image: Canonical's newest Ubuntu LTS at creation; later releases do not replace the instance.
    if o.ami:
        ami: pulumi.Input[str] = o.ami
    else:
        arch = o.architecture or architecture_of(o.instance_type)
        ami = aws.ec2.get_ami(
            most_recent=True,
            owners=[CANONICAL_OWNER_ID],
            filters=[
                {"name": "name", "values": [UBUNTU_AMI_NAME.format(arch="amd64" if arch == "x86_64" else "arm64")]},
                {"name": "architecture", "values": [arch]},
                {"name": "virtualization-type", "values": ["hvm"]},
                {"name": "root-device-type", "values": ["ebs"]},
            ],
            region=region,
        ).id

    # SSH: the stack's key imported as a key pair, the user's key imported, or an existing key pair.
    private_key: pulumi.Input[str] = ssh_key.private_key
    public_key: pulumi.Input[str] = ssh_key.public_key
    own = own_private_key(o.ssh_key, o.ssh_key_path)
    if own:
        private_key, public_key = pulumi.Output.secret(own[0]), own[1]
    if own and o.key_pair_name:
        key_name: pulumi.Input[str] = _existing_key_pair(o.key_pair_name, own[1], region)
    else:
        key_pair = aws.ec2.KeyPair(
            f"{name}-key",
            public_key=public_key,
            tags=tags,
            region=region,
            opts=opts,
        )
        key_name = key_pair.key_name

    groups: list[pulumi.Input[str]] = []
    if o.create_security_group:
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="Docker Machine",
            vpc_id=vpc_id,
            ingress=ingress_rules(o, machine.engine.port),
            egress=[EGRESS_ALL],
            tags=tags,
            region=region,
            opts=opts,
        )
        groups.append(group.id)
    groups += o.security_group_ids

    market = None
    if o.spot:
        spot_options: dict[str, Any] = {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}
        if o.spot_price:
            spot_options["max_price"] = o.spot_price
        market = {"market_type": "spot", "spot_options": spot_options}

    user_data = user_data_base64 = None
    if o.user_data_file:
        raw = _read_file(o.user_data_file)
        try:
            user_data = raw.decode()
        except UnicodeDecodeError:  # e.g. gzip-compressed cloud-config
            user_data_base64 = base64.b64encode(raw).decode()

    instance = aws.ec2.Instance(
        f"{name}-instance",
        ami=ami,
        instance_type=o.instance_type,
        subnet_id=subnet_id,
        vpc_security_group_ids=groups,
        associate_public_ip_address=not o.private_address_only,
        key_name=key_name,
        iam_instance_profile=o.iam_instance_profile,
        monitoring=o.monitoring,
        ebs_optimized=True if o.ebs_optimized else None,
        root_block_device={
            "volume_size": o.root_size,
            "volume_type": o.volume_type,
            "delete_on_termination": True,
            "tags": tags,
        },
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required"},
        instance_market_options=market,
        user_data=user_data,
        user_data_base64=user_data_base64,
        tags=tags,
        region=region,
        opts=pulumi.ResourceOptions.merge(
            opts,
            pulumi.ResourceOptions(
                # A newer Ubuntu AMI must not replace a running machine (`up --replace` picks it up).
                ignore_changes=[] if o.ami else ["ami"],
                custom_timeouts=pulumi.CustomTimeouts(create="20m"),
            ),
        ),
    )

    private = o.private_address_only or o.use_private_address
    address = instance.private_ip if private else instance.public_ip
    return Host(
        ssh_host=address,
        ssh_port=o.ssh_port,
        ssh_user=o.ssh_user,
        ssh_private_key=private_key,
        address=address,
        engine_port=machine.engine.port,
        ready=instance,
    )
