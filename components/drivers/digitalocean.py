"""DigitalOcean driver (docker-machine's ``digitalocean``, docs/drivers.md#digitalocean) on pulumi-digitalocean.

Per machine: the stack's SSH key uploaded (or an existing key by fingerprint), a droplet named after the
machine from Ubuntu 24.04, and — unlike docker-machine, which left droplets wide open — a cloud firewall
letting in only SSH and the engine port (plus ``open_ports``). The API token comes from the provider's own
configuration (``DIGITALOCEAN_TOKEN`` or ``pulumi config set --secret digitalocean:token``).
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
from pydantic import Field, field_validator, model_validator

from components.drivers._cloud import (
    ANYWHERE,
    AllowedCidrs,
    OpenPorts,
    cloud_host,
    md5_fingerprint,
    ports,
    read_file,
    readable_file,
    user_data,
)
from components.drivers.base import BaseDriver, DriverContext, Firewall, Host, IngressRule, VmResource
from components.sshkeys import OwnKey, login_key, own_private_key

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
    open_ports: OpenPorts = Field([], description="PORT or PORT/tcp|udp, opened in the firewall")
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

    @field_validator("user_data_file")
    @classmethod
    def _user_data(cls, v: str | None) -> str | None:
        if v is None:
            return None
        readable_file(v, USER_DATA_LIMIT, "user data")
        try:
            read_file(v).decode()
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


def firewall_rules(inputs: Any) -> list[IngressRule]:
    """A cloud firewall's ``inboundRules``."""
    return [
        IngressRule(str(rule.get("protocol", "")).lower(), ports(rule.get("portRange")),
                    tuple(rule.get("sourceAddresses") or []))
        for rule in inputs.get("inboundRules") or []
    ]  # fmt: skip


class DigitalOceanDriver(
    BaseDriver, name="digitalocean", options=Options, plugin_package="pulumi_digitalocean",
    vm=VmResource("digitalocean:index/droplet:Droplet", identity_output="urn", size_path=("size",), size_option="size"),
    firewall=Firewall("digitalocean:index/firewall:Firewall", firewall_rules),
):  # fmt: skip
    def create_host(self, ctx: DriverContext) -> Host:
        import pulumi_digitalocean as do

        o: Options = ctx.options
        name, machine, opts = ctx.name, ctx.machine, ctx.opts

        private_key, public_key = login_key(o, ctx.ssh_key)
        if o.ssh_key_fingerprint:
            fingerprint: pulumi.Input[str] = o.ssh_key_fingerprint
        else:
            fingerprint = do.SshKey(f"{name}-key", name=machine.name, public_key=public_key, opts=opts).fingerprint

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
            user_data=user_data(ctx, o.user_data_file),
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
        # Provisioning starts once the firewall is in place: what it lets in is what provisioning relies on.
        return cloud_host(ctx, address, o.ssh_port, o.ssh_user, private_key, firewall, droplet.ipv4_address_private)


DRIVER = DigitalOceanDriver()
