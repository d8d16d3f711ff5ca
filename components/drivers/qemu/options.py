"""The ``qemu`` driver's options (docs/drivers.md#qemu), checked once: a forward rule is parsed here into a typed
``Forward`` and never again from its text."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from components.drivers._local import images
from components.drivers._local.shares import Mounts, mounts_field
from components.drivers.base import GUEST_SSH_PORT
from components.model import StrictModel

# Built by scripts/build-image into the cache; the default is Debian 13 with Docker pre-installed.
BUILTIN_IMAGES = ("debian-13-docker", "debian-13", "debian-12-docker", "debian-12")
DEFAULT_PRIVATE_CIDR = "192.168.125.0/24"
# What QEMU's user-mode network gives the first NIC (and the guest's routes to the host): a private network there
# would hide it.
USER_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
# Where the guest reaches the host in user mode (slirp forwards it to the host's loopback).
USER_NETWORK_GATEWAY = "10.0.2.2"
_FORWARD_RE = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")


class Forward(NamedTuple):
    """A fixed forward from the host's loopback to the guest: ``HOST:GUEST[/tcp|udp]``."""

    host: int
    guest: int
    protocol: str = "tcp"

    @classmethod
    def parse(cls, value: Any) -> Forward:
        if isinstance(value, Forward):
            return value
        match = _FORWARD_RE.match(value) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"forward {value!r} must look like HOST:GUEST or HOST:GUEST/udp (e.g. 8443:443)")
        forward = cls(int(match[1]), int(match[2]), match[3] or "tcp")
        for port in (forward.host, forward.guest):
            if not 1 <= port <= 65535:
                raise ValueError(f"forward {value!r}: port {port} is out of range 1-65535")
        return forward

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}" + ("/udp" if self.protocol == "udp" else "")


ForwardRule = Annotated[Forward, BeforeValidator(Forward.parse)]


class Options(StrictModel):
    cpus: int = Field(2, ge=1, le=64)
    memory: int = Field(2048, ge=256, le=1048576, description="MiB")
    disk: int = Field(20000, ge=4096, le=16777216, description="MiB, docker-machine's default 20000")
    image: str = Field("debian-13-docker", description="built-in name, a path, or an https URL (with image_sha256)")
    image_sha256: str | None = Field(None, description="an image URL's sha256, or 'published' (SHA256SUMS beside it)")
    kernel: str | None = Field(None, description="for images without a bootloader: kernel path")
    initrd: str | None = None
    cmdline: str = Field("root=LABEL=rootfs ro console=ttyS0,115200n8", description="for images without image.json")
    ssh_user: str = Field("docker", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    network: Literal["user", "bridge"] = "user"
    bridge: str = Field("dmbr0", pattern=r"^[a-zA-Z0-9_-]{1,15}$")
    bridge_cidr: str = "192.168.124.0/24"
    address: str | None = Field(None, description="bridge mode: the VM's fixed address inside bridge_cidr")
    forwards: list[ForwardRule] = Field([], description="user mode: fixed HOST:GUEST[/udp] forwards on 127.0.0.1")
    publish: bool = Field(True, description="user mode: forward every port a container publishes, as it comes")
    private_network: bool = Field(
        False, description="user mode: a second NIC on the stack's private network, where its machines reach each other"
    )
    private_cidr: str = Field(DEFAULT_PRIVATE_CIDR, description="the stack's private network (the same for all)")
    mounts: Mounts = mounts_field()
    mount_type: Literal["auto", "virtiofs", "9p"] = Field(
        "auto", description="how mounts reach the VM: auto = virtiofs where virtiofsd is, else 9p"
    )
    template: bool = Field(True, description="start from a booted template of this image and shape (seconds); false: "
                                             "boot cold")  # fmt: skip

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v.startswith(("http://", "https://")):
            return images.check_url(v)
        if v in BUILTIN_IMAGES or v.startswith(("/", "./", "~")):
            return v
        raise ValueError(f"must be one of {', '.join(BUILTIN_IMAGES)}, an absolute path or an https URL")

    @field_validator("bridge_cidr", "private_cidr")
    @classmethod
    def _cidr(cls, v: str, info: ValidationInfo) -> str:
        try:
            network = ipaddress.IPv4Network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"{v!r} is not a valid IPv4 CIDR ({err})") from None
        if network.prefixlen > 29:
            raise ValueError(f"{v!r} is too small: use a prefix of /29 or shorter")
        if info.field_name == "private_cidr" and network.overlaps(USER_NETWORK):
            raise ValueError(f"{v!r} overlaps {USER_NETWORK}, QEMU's user network on the first NIC")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or "bridge_cidr" not in info.data:
            return v
        network = ipaddress.IPv4Network(info.data["bridge_cidr"])
        try:
            ip = ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None
        gateway = next(network.hosts())
        if ip not in network or ip in (network.network_address, network.broadcast_address, gateway):
            raise ValueError(f"{v} must be a host address of {network} other than {gateway} (the host's)")
        return v

    @field_validator("forwards")
    @classmethod
    def _forwards(cls, v: list[Forward]) -> list[Forward]:
        seen: dict[tuple[int, str], Forward] = {}
        for forward in v:
            if (forward.host, forward.protocol) in seen:
                first = seen[forward.host, forward.protocol]
                raise ValueError(f"host port {forward.host}/{forward.protocol} is forwarded twice ({first}, {forward})")
            if forward.guest == GUEST_SSH_PORT and forward.protocol == "tcp":
                raise ValueError(f"forward {str(forward)!r}: the guest's SSH port is already forwarded "
                                 "(scripts/machine ssh)")  # fmt: skip
            if forward.host < 1024 and os.geteuid() != 0:
                raise ValueError(f"forward {str(forward)!r}: host port {forward.host} is privileged; use 1024 or above")
            seen[forward.host, forward.protocol] = forward
        return v

    @model_validator(mode="after")
    def _combinations(self) -> Options:
        images.check_sha256(self.image_sha256, self.image)
        if self.network == "bridge" and self.forwards:
            raise ValueError("forwards: in bridge mode the VM has its own address; every port is reachable there")
        if self.network == "bridge" and self.private_network:
            raise ValueError(
                "private_network: in bridge mode the VM's own address is the one the stack's machines reach; "
                "use private_network with network: user"
            )
        if "private_cidr" in self.model_fields_set and not self.private_network:
            raise ValueError("private_cidr: only used with private_network: true")
        return self
