"""Azure driver (docker-machine's ``azure``, docs/drivers.md#azure) on pulumi-azure-native.

Per machine, docker-machine's set: a resource group (or an existing one), a virtual network and subnet (or
existing ones), a network security group ``<name>-firewall`` with docker-machine's rules and priorities, a
Standard static public IP (optionally with a DNS label), a NIC and the VM from Canonical's Ubuntu 24.04
image with a managed OS disk, key-only login as ``docker-user``. Subscription, tenant, cloud environment and
credentials come from the provider's own configuration (``az login``, ``ARM_*`` variables or
``pulumi config set azure-native:…``), never from this driver's options.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Annotated, Any, Literal

import pulumi
from pydantic import BeforeValidator, Field, field_validator, model_validator

from components.drivers._cloud import (
    AllowedCidrs,
    cidr,
    cloud_host,
    parse_open_ports,
    ports,
    readable_file,
    user_data,
)
from components.drivers.base import BaseDriver, DriverContext, Firewall, Host, IngressRule, VmResource
from components.sshkeys import OwnKey, login_key

# --- Azure -------------------------------------------------------------------------------------------------------

# Ubuntu 24.04 LTS from Canonical (docker-machine's canonical:UbuntuServer:16.04.0-LTS is long out of support).
DEFAULT_IMAGE = "canonical:ubuntu-24_04-lts:server:latest"
# Names Azure refuses for a Linux admin user (besides root).
RESERVED_USERS = frozenset(
    "administrator admin user user1 test user2 test1 user3 admin1 1 123 a actuser adm admin2 aspnet backup console "
    "david guest john owner root server sql support support_388945a0 sys test2 test3 user4 user5".split()
)
CUSTOM_DATA_LIMIT = 65535  # bytes before base64 (Azure's limit for customData)
# docker-machine's NSG rules (inbound): SSH 100, Docker 300, user ports 1000 + i.
SSH_PRIORITY, DOCKER_PRIORITY, OPEN_PORT_PRIORITY = 100, 300, 1000
_PROTOCOLS = {"tcp": "Tcp", "udp": "Udp", "*": "*"}
_RULE_PROTOCOL_NAMES = {"tcp": "tcp", "udp": "udp", "*": "any"}


class Options(OwnKey):
    resource_group: str | None = Field(
        None, pattern=r"^[-\w.()]{0,89}[-\w()]$", description="an existing group; default: one created per machine"
    )
    location: str = Field("westus", description="docker-machine's default")
    size: str = Field("Standard_B2s", pattern=r"^Standard_[A-Za-z0-9_-]+$")
    image: str = Field(DEFAULT_IMAGE, description="publisher:offer:sku:version")
    ssh_user: str = Field("docker-user", description="the VM's admin user; root and Azure's reserved names refused")
    vnet: str | None = Field(None, description="an existing virtual network, [resource-group:]name")
    subnet: str = Field("docker-machine", pattern=r"^[\w][\w.-]{0,78}[\w]$|^\w$")
    subnet_prefix: str = Field("192.168.0.0/16", description="of the created virtual network and subnet")
    open_ports: Annotated[list[str], BeforeValidator(lambda v: parse_open_ports(v, tuple(_PROTOCOLS)))] = Field(
        [], description="PORT or PORT/tcp|udp|*"
    )
    allowed_cidrs: AllowedCidrs = AllowedCidrs()
    private_ip_address: str | None = Field(None, description="a static private address in the subnet")
    use_private_ip: bool = Field(False, description="keep the public IP but dial the private address")
    no_public_ip: bool = Field(False, description="no public IP; dial the private address")
    static_public_ip: bool = Field(True, description="Standard public IPs are always static")
    dns_label: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$",
        description="<label>.<location>.cloudapp.azure.com becomes the machine's address",
    )
    os_disk_type: Literal["Standard_LRS", "StandardSSD_LRS", "Premium_LRS", "StandardSSD_ZRS", "Premium_ZRS"] = (
        "StandardSSD_LRS"
    )
    os_disk_size: int | None = Field(None, ge=30, le=4095, description="GiB; default: the image's (30)")
    custom_data_file: str | None = None
    tags: dict[str, str] = {}

    @field_validator("location", mode="before")
    @classmethod
    def _location(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        name = v.replace(" ", "").lower()  # "West US 2" → westus2
        if not re.fullmatch(r"[a-z]+[a-z0-9]*", name):
            raise ValueError(f"{v!r} is not an Azure location name (e.g. westus, westeurope)")
        return name

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        parts = v.split(":")
        if len(parts) != 4 or not all(re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts):
            raise ValueError(f"{v!r} must be publisher:offer:sku:version (e.g. {DEFAULT_IMAGE})")
        return v

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,63}", v):
            raise ValueError(f"{v!r} is not a valid Linux user name")
        if v.lower() in RESERVED_USERS:
            raise ValueError(f"{v!r} is not allowed as the Azure admin user (root and Azure's reserved names)")
        return v

    @field_validator("vnet")
    @classmethod
    def _vnet(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"([-\w.()]{1,90}:)?[\w][\w.-]{0,62}[\w]", v):
            raise ValueError(f"{v!r} must be [resource-group:]name")
        return v

    @field_validator("subnet_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        network = ipaddress.ip_network(cidr(v))
        if network.version != 4 or network.prefixlen > 29:
            raise ValueError(f"{v!r} must be an IPv4 CIDR of /29 or larger")
        return str(network)

    @field_validator("private_ip_address")
    @classmethod
    def _private_ip(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IPv4 address") from None
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("tags must be a mapping")
        for k, value in v.items():
            if not 1 <= len(str(k)) <= 512 or re.search(r"[<>%&\\?/]", str(k)) or len(str(value)) > 256:
                raise ValueError(f"tag {k!r}: names are 1-512 characters without <>%&\\?/, values at most 256")
        return {str(k): str(value) for k, value in v.items()}

    @field_validator("custom_data_file")
    @classmethod
    def _custom_data(cls, v: str | None) -> str | None:
        return None if v is None else readable_file(v, CUSTOM_DATA_LIMIT, "custom data")

    @model_validator(mode="after")
    def _combinations(self) -> Options:
        if not self.static_public_ip:
            raise ValueError(
                "static_public_ip: false would need a Basic SKU public IP, which Azure retired (none can be "
                "created since 2025-03-31); Standard public IPs are static"
            )
        if self.no_public_ip and self.dns_label:
            raise ValueError("dns_label names the public IP: it cannot be combined with no_public_ip")
        if self.vnet and ":" not in self.vnet and self.resource_group is None:
            raise ValueError("vnet: give it as <resource-group>:<name> when resource_group is not set")
        if self.private_ip_address and self.vnet is None:
            network = ipaddress.IPv4Network(self.subnet_prefix)
            address = ipaddress.IPv4Address(self.private_ip_address)
            # Azure reserves the network address, the next three and the broadcast address.
            offset = int(address) - int(network.network_address)
            if address not in network or offset < 4 or address == network.broadcast_address:
                raise ValueError(
                    f"private_ip_address {address} must be a usable address of subnet_prefix {network} "
                    "(Azure reserves the first four and the last)"
                )
        return self


def security_rules(options: Options, engine_port: int) -> list[dict[str, Any]]:
    """docker-machine's NSG rules, with the configured sources instead of "any"."""

    def rule(name: str, priority: int, port: int, protocol: str, cidrs: list[str]) -> dict[str, Any]:
        source = {"source_address_prefix": cidrs[0]} if len(cidrs) == 1 else {"source_address_prefixes": cidrs}
        return {
            "name": name,
            "priority": priority,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": _PROTOCOLS[protocol],
            "source_port_range": "*",
            "destination_address_prefix": "*",
            "destination_port_range": str(port),
            **source,
        }

    cidrs = options.allowed_cidrs
    rules = [
        rule("SSHAllowAny", SSH_PRIORITY, 22, "tcp", cidrs.ssh),
        rule("DockerAllowAny", DOCKER_PRIORITY, engine_port, "tcp", cidrs.engine),
    ]
    for index, item in enumerate(options.open_ports):
        port, protocol = item.split("/")
        name = f"Port{port}-{_RULE_PROTOCOL_NAMES[protocol]}AllowAny"
        rules.append(rule(name, OPEN_PORT_PRIORITY + index, int(port), protocol, cidrs.open_ports))
    return rules


def _resource_group(ctx: DriverContext, tags: dict[str, str] | None) -> pulumi.Input[str]:
    import pulumi_azure_native as azure

    o: Options = ctx.options
    if o.resource_group:
        return o.resource_group
    return azure.resources.ResourceGroup(f"{ctx.name}-rg", location=o.location, tags=tags, opts=ctx.opts).name


def _subnet_id(ctx: DriverContext, group: pulumi.Input[str], tags: dict[str, str] | None) -> pulumi.Input[str]:
    import pulumi_azure_native as azure

    o: Options = ctx.options
    if o.vnet:
        vnet_group, _, vnet_name = o.vnet.rpartition(":")
        # Looked up now, so that a missing network fails before anything is created.
        return azure.network.get_subnet(
            resource_group_name=vnet_group or o.resource_group, virtual_network_name=vnet_name, subnet_name=o.subnet
        ).id
    vnet = azure.network.VirtualNetwork(
        f"{ctx.name}-vnet",
        resource_group_name=group,
        location=o.location,
        address_space={"address_prefixes": [o.subnet_prefix]},
        subnets=[{"name": o.subnet, "address_prefix": o.subnet_prefix}],
        tags=tags,
        opts=ctx.opts,
    )
    return pulumi.Output.concat(vnet.id, "/subnets/", o.subnet)


def _firewall(ctx: DriverContext, group: pulumi.Input[str], tags: dict[str, str] | None):
    import pulumi_azure_native as azure

    o: Options = ctx.options
    return azure.network.NetworkSecurityGroup(
        f"{ctx.name}-firewall",
        resource_group_name=group,
        location=o.location,
        security_rules=security_rules(o, ctx.machine.engine.port),
        tags=tags,
        opts=ctx.opts,
    )


def _public_ip(ctx: DriverContext, group: pulumi.Input[str], tags: dict[str, str] | None):
    import pulumi_azure_native as azure

    o: Options = ctx.options
    if o.no_public_ip:
        return None
    return azure.network.PublicIPAddress(
        f"{ctx.name}-ip",
        resource_group_name=group,
        location=o.location,
        sku={"name": "Standard", "tier": "Regional"},
        public_ip_allocation_method="Static",
        public_ip_address_version="IPv4",
        dns_settings={"domain_name_label": o.dns_label} if o.dns_label else None,
        tags=tags,
        opts=ctx.opts,
    )


def _nic(ctx: DriverContext, group: pulumi.Input[str], subnet_id: pulumi.Input[str], firewall: Any, public_ip: Any,
         tags: dict[str, str] | None):  # fmt: skip
    import pulumi_azure_native as azure

    o: Options = ctx.options
    ip_configuration: dict[str, Any] = {
        "name": "ipconfig",
        "primary": True,
        "subnet": {"id": subnet_id},
        "private_ip_allocation_method": "Static" if o.private_ip_address else "Dynamic",
    }
    if o.private_ip_address:
        ip_configuration["private_ip_address"] = o.private_ip_address
    if public_ip is not None:
        ip_configuration["public_ip_address"] = {"id": public_ip.id}
    return azure.network.NetworkInterface(
        f"{ctx.name}-nic",
        resource_group_name=group,
        location=o.location,
        ip_configurations=[ip_configuration],
        network_security_group={"id": firewall.id},
        tags=tags,
        opts=ctx.opts,
    )


def _os_profile(ctx: DriverContext, public_key: str) -> dict[str, Any]:
    o: Options = ctx.options
    profile: dict[str, Any] = {
        "computer_name": ctx.machine.name,
        "admin_username": o.ssh_user,
        "linux_configuration": {
            "disable_password_authentication": True,
            "provision_vm_agent": True,
            "ssh": {
                "public_keys": [{"path": f"/home/{o.ssh_user}/.ssh/authorized_keys", "key_data": public_key}]
            },
        },
    }
    encoded = user_data(ctx, o.custom_data_file).apply(lambda text: base64.b64encode(text.encode()).decode())
    profile["custom_data"] = encoded
    return profile


def _vm(ctx: DriverContext, group: pulumi.Input[str], nic: Any, public_key: str, tags: dict[str, str] | None):
    import pulumi_azure_native as azure

    o: Options = ctx.options
    publisher, offer, sku, version = o.image.split(":")
    os_disk: dict[str, Any] = {
        "create_option": "FromImage",
        "caching": "ReadWrite",
        "delete_option": "Delete",
        "managed_disk": {"storage_account_type": o.os_disk_type},
    }
    if o.os_disk_size:
        os_disk["disk_size_gb"] = o.os_disk_size
    return azure.compute.VirtualMachine(
        f"{ctx.name}-vm",
        resource_group_name=group,
        location=o.location,
        hardware_profile={"vm_size": o.size},
        storage_profile={
            "image_reference": {"publisher": publisher, "offer": offer, "sku": sku, "version": version},
            "os_disk": os_disk,
        },
        os_profile=_os_profile(ctx, public_key),
        network_profile={"network_interfaces": [{"id": nic.id, "primary": True}]},
        tags=tags,
        opts=pulumi.ResourceOptions.merge(
            ctx.opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="30m"))
        ),
    )


def firewall_rules(inputs: Any) -> list[IngressRule]:
    """A network security group's allowed inbound ``securityRules``."""
    rules = []
    for rule in inputs.get("securityRules") or []:
        direction, access = (str(rule.get(k, "")).lower() for k in ("direction", "access"))
        if (direction or "inbound", access or "allow") != ("inbound", "allow"):
            continue
        protocol = str(rule.get("protocol", "*")).lower()
        sources = tuple(s for s in (rule.get("sourceAddressPrefix"), *(rule.get("sourceAddressPrefixes") or [])) if s)
        spans = [rule.get("destinationPortRange"), *(rule.get("destinationPortRanges") or [])]
        rules += [IngressRule(protocol, ports(span), sources) for span in spans if span is not None]
    return rules


class AzureDriver(
    BaseDriver, name="azure", options=Options, plugin_package="pulumi_azure_native",
    vm=VmResource("azure-native:compute:VirtualMachine", identity_output="vmId",
                  size_path=("hardwareProfile", "vmSize"), size_option="size"),
    firewall=Firewall("azure-native:network:NetworkSecurityGroup", firewall_rules),
):  # fmt: skip
    def create_host(self, ctx: DriverContext) -> Host:
        o: Options = ctx.options
        tags = o.tags or None
        private_key, public_key = login_key(o, ctx.ssh_key)
        group = _resource_group(ctx, tags)
        subnet_id = _subnet_id(ctx, group, tags)
        firewall = _firewall(ctx, group, tags)
        public_ip = _public_ip(ctx, group, tags)
        nic = _nic(ctx, group, subnet_id, firewall, public_ip, tags)
        vm = _vm(ctx, group, nic, public_key, tags)
        private_ip = nic.ip_configurations.apply(lambda configs: configs[0].private_ip_address)
        if o.no_public_ip or o.use_private_ip:
            address: pulumi.Output[str] = private_ip
        elif o.dns_label:
            address = public_ip.dns_settings.apply(lambda dns: dns.fqdn)
        else:
            address = public_ip.ip_address
        return cloud_host(ctx, address, 22, o.ssh_user, private_key, vm, private_ip)


DRIVER = AzureDriver()
