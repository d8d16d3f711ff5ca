"""AWS EC2 driver (docker-machine's ``amazonec2``, docs/drivers.md#aws-ec2) on pulumi-aws.

Per machine: an EC2 key pair imported from the stack's SSH key (or an existing key pair), a security group
opening SSH and the engine port (plus ``open_ports``) and the instance, in the default VPC and the zone's
default subnet unless told otherwise. The AMI is the newest Ubuntu 24.04 LTS from Canonical unless given.
Credentials and provider settings (profile, endpoints, retries) come from the AWS provider's own
configuration: the environment or ``pulumi config set --secret aws:…``, never from this driver's options.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Literal

import pulumi
from pydantic import Field, field_validator, model_validator

from components.drivers._cloud import (
    ANYWHERE,
    AllowedCidrs,
    OpenPorts,
    cloud_host,
    ports,
    readable_file,
    split_cidrs,
    user_data,
)
from components.drivers.base import BaseDriver, DriverContext, Firewall, Host, IngressRule, VmResource
from components.sshkeys import OwnKey, login_key

if TYPE_CHECKING:
    import pulumi_aws as aws

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
    open_ports: OpenPorts = Field([], description="PORT or PORT/tcp|udp, opened in the created group")
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
        return None if v is None else readable_file(v, USER_DATA_LIMIT, "user data")

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
    v4, v6 = split_cidrs(cidrs)
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
    import pulumi_aws as aws

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
    import pulumi_aws as aws

    found = aws.ec2.get_key_pair(key_name=name, include_public_key=True, region=region)
    published = (found.public_key or "").split()[:2]
    if published and published != public_key.split()[:2]:
        _fail(f"key pair {name!r} holds another public key than the configured private key's")
    return found.key_name


def _ami(o: Options, region: str) -> str:
    """The image: the given AMI, else Canonical's newest Ubuntu LTS at creation (later releases do not replace it)."""
    import pulumi_aws as aws

    if o.ami:
        return o.ami
    arch = o.architecture or architecture_of(o.instance_type)
    return aws.ec2.get_ami(
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


def _key_name(ctx: DriverContext, public_key: str, region: str, tags: dict[str, str]) -> pulumi.Input[str]:
    """SSH: an existing key pair (validated to come with the user's own key), else the login key imported."""
    import pulumi_aws as aws

    o: Options = ctx.options
    if o.key_pair_name:
        return _existing_key_pair(o.key_pair_name, public_key, region)
    return aws.ec2.KeyPair(f"{ctx.name}-key", public_key=public_key, tags=tags, region=region, opts=ctx.opts).key_name


def _security_groups(ctx: DriverContext, vpc_id: str, region: str, tags: dict[str, str]) -> list[pulumi.Input[str]]:
    import pulumi_aws as aws

    o: Options = ctx.options
    groups: list[pulumi.Input[str]] = []
    if o.create_security_group:
        group = aws.ec2.SecurityGroup(
            f"{ctx.name}-sg",
            description="Docker Machine",
            vpc_id=vpc_id,
            ingress=ingress_rules(o, ctx.machine.engine.port),
            egress=[EGRESS_ALL],
            tags=tags,
            region=region,
            opts=ctx.opts,
        )
        groups.append(group.id)
    return groups + list(o.security_group_ids)


def _market(o: Options) -> dict[str, Any] | None:
    if not o.spot:
        return None
    spot_options: dict[str, Any] = {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}
    if o.spot_price:
        spot_options["max_price"] = o.spot_price
    return {"market_type": "spot", "spot_options": spot_options}


def _instance(ctx: DriverContext, placement: tuple[str, str], key_name: pulumi.Input[str], region: str,
              tags: dict[str, str]) -> aws.ec2.Instance:  # fmt: skip
    import pulumi_aws as aws

    o: Options = ctx.options
    subnet_id, vpc_id = placement
    return aws.ec2.Instance(
        f"{ctx.name}-instance",
        ami=_ami(o, region),
        instance_type=o.instance_type,
        subnet_id=subnet_id,
        vpc_security_group_ids=_security_groups(ctx, vpc_id, region, tags),
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
        instance_market_options=_market(o),
        tags=tags,
        region=region,
        opts=pulumi.ResourceOptions.merge(
            ctx.opts,
            pulumi.ResourceOptions(
                # A newer Ubuntu AMI must not replace a running machine (`up --replace` picks it up).
                ignore_changes=[] if o.ami else ["ami"],
                custom_timeouts=pulumi.CustomTimeouts(create="20m"),
            ),
        ),
        user_data=user_data(ctx, o.user_data_file),
    )


def firewall_rules(inputs: Any) -> list[IngressRule]:
    """A security group's ``ingress`` (protocol -1 or "all": every protocol and port)."""
    rules = []
    for rule in inputs.get("ingress") or []:
        protocol = str(rule.get("protocol", "")).lower()
        every = protocol in ("-1", "all")
        span = None if every else ports(f"{rule.get('fromPort')}-{rule.get('toPort', rule.get('fromPort'))}")
        sources = (*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or []))
        rules.append(IngressRule("*" if every else {"6": "tcp", "17": "udp"}.get(protocol, protocol), span, sources))
    return rules


class AwsDriver(
    BaseDriver, name="aws", options=Options, plugin_package="pulumi_aws",
    vm=VmResource("aws:ec2/instance:Instance", identity_output="arn", size_path=("instanceType",),
                  size_option="instance_type"),
    firewall=Firewall("aws:ec2/securityGroup:SecurityGroup", firewall_rules),
):  # fmt: skip
    def create_host(self, ctx: DriverContext) -> Host:
        o: Options = ctx.options
        region = o.region or default_region()
        tags = {**o.tags, "Name": ctx.machine.name}
        placement = _placement(o, region, f"{region}{o.zone}")
        private_key, public_key = login_key(o, ctx.ssh_key)
        instance = _instance(ctx, placement, _key_name(ctx, public_key, region, tags), region, tags)
        address = instance.private_ip if o.private_address_only or o.use_private_address else instance.public_ip
        return cloud_host(ctx, address, o.ssh_port, o.ssh_user, private_key, instance, instance.private_ip)


DRIVER = AwsDriver()
