"""Generic driver: an existing host over SSH (docker-machine's ``generic``, docs/drivers.md).

It creates nothing: the host, its user and its key are given, directly or as outputs of another stack (read through
a StackReference). The component provisions it like any other host. On destroy the component removes what it added
(drop-in, certificates) and restarts Docker, which stays installed.

Its SSH host key, which every dial pins, comes from ``ssh_host_key``, else the other stack's output, else the user's
~/.ssh/known_hosts, else it is read on first use and kept in the state (``HostKeyScan``).
"""

from __future__ import annotations

import os
from typing import Any

import pulumi
from pydantic import Field, field_validator, model_validator

from components.drivers.base import BaseDriver, DriverContext, Host
from components.model import StrictModel, address_or_dns_name
from components.sshkeys import OwnKey, check_public_key, known_host_key, own_private_key
from components.steps.remote import HostKeyScan


class FromStack(StrictModel):
    """Read the host's coordinates from another stack's outputs (dotted paths into nested outputs)."""

    stack: str = Field(pattern=r"^[A-Za-z0-9_.\-/]+$", description="e.g. organization/vms/dev")
    address: str = "address"
    ssh_port: str | None = "sshPort"
    ssh_user: str | None = "sshUser"
    ssh_key: str = Field("sshPrivateKey", description="a secret output holding the private key")
    # The host's SSH public key (an OpenSSH line); a stack without such an output leaves the key to known_hosts or
    # to the first use.
    ssh_host_key: str | None = "sshHostKey"
    # For a host behind a port forward: the output holding the port the Docker client dials.
    engine_port: str | None = None


class Options(OwnKey):
    address: str | None = Field(None, description="IP address or DNS name of the host")
    ssh_user: str = Field("root", pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    ssh_port: int = Field(22, ge=1, le=65535)
    from_stack: FromStack | None = None
    dial_attempts: int = Field(10, ge=1, le=1000, description="SSH dial attempts before the host is unreachable")
    ssh_host_key: str | None = Field(None, description="the host's SSH public key (a known_hosts/.pub line) to pin")

    @field_validator("ssh_host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        return v if v is None else check_public_key(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return v if v is None else address_or_dns_name(v, wildcard=False)

    @model_validator(mode="after")
    def _sources(self) -> Options:
        if self.from_stack is None:
            if self.address is None:
                raise ValueError("address is required (or from_stack to read it from another stack)")
            if self.ssh_key is None and self.ssh_key_path is None:
                raise ValueError("give exactly one of ssh_key (a secret) or ssh_key_path")
        elif self.address or self.ssh_key or self.ssh_key_path:
            raise ValueError("from_stack provides address and key: do not also set address, ssh_key or ssh_key_path")
        return self


def _dig(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _stack_output(ref: pulumi.StackReference, dotted: str, required: bool = True) -> pulumi.Output[Any]:
    head, *rest = dotted.split(".")
    found = ref.require_output(head) if required else ref.get_output(head)
    return found.apply(lambda v: _dig(v, rest))


def _host_key(ctx: DriverContext, address: pulumi.Input[str], port: pulumi.Input[int],
              given: pulumi.Input[str | None]) -> pulumi.Output[str]:  # fmt: skip
    """The key given (config, the other stack), else the user's known_hosts entry, else the key read on first use."""
    options: Options = ctx.options
    known = pulumi.Output.all(address, port, given).apply(
        lambda v: v[2] or known_host_key(os.path.expanduser("~/.ssh/known_hosts"), v[0], int(v[1]))
    )

    def scanned(found: str | None) -> pulumi.Input[str]:
        if found:
            return found
        scan = HostKeyScan(f"{ctx.name}-host-key-scan", machine=ctx.machine.name, host=address, port=port,
                           attempts=options.dial_attempts, opts=ctx.opts)  # fmt: skip
        return scan.host_key

    return known.apply(scanned)


class GenericDriver(BaseDriver, name="generic", options=Options):
    def create_host(self, ctx: DriverContext) -> Host:
        options: Options = ctx.options
        engine_port: pulumi.Input[int] = ctx.machine.engine.port
        given: pulumi.Input[str | None] = options.ssh_host_key
        if options.from_stack:
            source = options.from_stack
            ref = pulumi.StackReference(f"{ctx.name}-host", stack_name=source.stack, opts=ctx.opts)
            address = _stack_output(ref, source.address)
            port = _stack_output(ref, source.ssh_port) if source.ssh_port else options.ssh_port
            user = _stack_output(ref, source.ssh_user) if source.ssh_user else options.ssh_user
            private_key = pulumi.Output.secret(_stack_output(ref, source.ssh_key))
            if source.engine_port:
                engine_port = _stack_output(ref, source.engine_port)
            if source.ssh_host_key and given is None:
                given = _stack_output(ref, source.ssh_host_key, required=False)
        else:
            address, port, user = options.address, options.ssh_port, options.ssh_user
            own = own_private_key(options.ssh_key, options.ssh_key_path)
            private_key = pulumi.Output.secret(own[0] if own else "")
        # Nothing to create: provisioning waits for nothing but the host answering SSH.
        return Host(
            ssh_host=address,
            ssh_port=port,
            ssh_user=user,
            ssh_private_key=private_key,
            host_key=_host_key(ctx, address, port, given),
            address=address,
            engine_port=engine_port,
            ready=ref if options.from_stack else None,
            dial_error_limit=options.dial_attempts,
            undo_on_delete=True,
        )


DRIVER = GenericDriver()
