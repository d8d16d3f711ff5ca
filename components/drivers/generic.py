"""Generic driver: an existing host over SSH (docker-machine's ``generic``, docker-machine.md §2.5).

It creates nothing: the host, its user and its key are given, directly or as outputs of another stack
(read through a StackReference). The component provisions it like any other host. On destroy the
component removes what it added (drop-in, certificates) and restarts Docker, which stays installed.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pulumi
from pydantic import Field, field_validator, model_validator

from components.config import DNS_NAME_RE, MachineConfig, StrictModel
from components.drivers import Host


class FromStack(StrictModel):
    """Read the host's coordinates from another stack's outputs (dotted paths into nested outputs)."""

    stack: str = Field(pattern=r"^[A-Za-z0-9_.\-/]+$", description="e.g. organization/vms/dev")
    address: str = "address"
    ssh_port: str | None = "sshPort"
    ssh_user: str | None = "sshUser"
    ssh_key: str = Field("sshPrivateKey", description="a secret output holding the private key")
    # For a host behind a port forward: the output holding the port the Docker client dials.
    engine_port: str | None = None


class Options(StrictModel):
    MULTILINE = frozenset({"ssh_key"})

    address: str | None = Field(None, description="IP address or DNS name of the host")
    ssh_user: str = Field("root", pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_key: str | None = Field(None, description="private key (PEM/OpenSSH); set it as a secret")
    ssh_key_path: str | None = None
    from_stack: FromStack | None = None
    dial_attempts: int = Field(10, ge=1, le=1000, description="SSH dial attempts before the host is unreachable")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            if not DNS_NAME_RE.match(v) or v.startswith("*"):
                raise ValueError(f"{v!r} is neither an IP address nor a DNS name") from None
        return v

    @model_validator(mode="after")
    def _sources(self) -> Options:
        if self.from_stack is None:
            if self.address is None:
                raise ValueError("address is required (or from_stack to read it from another stack)")
            if (self.ssh_key is None) == (self.ssh_key_path is None):
                raise ValueError("give exactly one of ssh_key (a secret) or ssh_key_path")
        elif self.address or self.ssh_key or self.ssh_key_path:
            raise ValueError("from_stack provides address and key: do not also set address, ssh_key or ssh_key_path")
        if self.ssh_key_path and not os.path.isfile(os.path.expanduser(self.ssh_key_path)):
            raise ValueError(f"ssh_key_path {self.ssh_key_path!r} does not exist")
        return self


def _dig(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _stack_output(ref: pulumi.StackReference, dotted: str) -> pulumi.Output[Any]:
    head, *rest = dotted.split(".")
    return ref.require_output(head).apply(lambda v: _dig(v, rest))


def create_host(name: str, machine: MachineConfig, ssh_key: Any, state_dir: str, opts: pulumi.ResourceOptions) -> Host:
    options: Options = machine.options
    if options.from_stack:
        source = options.from_stack
        ref = pulumi.StackReference(f"{name}-host", stack_name=source.stack, opts=opts)
        address = _stack_output(ref, source.address)
        port = _stack_output(ref, source.ssh_port) if source.ssh_port else options.ssh_port
        user = _stack_output(ref, source.ssh_user) if source.ssh_user else options.ssh_user
        private_key = pulumi.Output.secret(_stack_output(ref, source.ssh_key))
        engine_port = _stack_output(ref, source.engine_port) if source.engine_port else machine.engine.port
    else:
        address, port, user = options.address, options.ssh_port, options.ssh_user
        engine_port = machine.engine.port
        if options.ssh_key_path:
            with open(os.path.expanduser(options.ssh_key_path)) as f:
                private_key = pulumi.Output.secret(f.read())
        else:
            private_key = pulumi.Output.secret(options.ssh_key)
    # Nothing to create: provisioning waits for nothing but the host answering SSH.
    return Host(
        ssh_host=address,
        ssh_port=port,
        ssh_user=user,
        ssh_private_key=private_key,
        address=address,
        engine_port=engine_port,
        ready=ref if options.from_stack else None,
        dial_error_limit=options.dial_attempts,
        undo_on_delete=True,
    )
