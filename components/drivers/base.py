"""The driver contract: what a driver is given, what it must return, and what it may declare.

A driver only makes a host reachable over SSH and says how to reach it (``Host``). Provisioning, TLS, outputs and
the CLI are written once, in ``components.machine`` and ``scripts/machinecli``. A driver module exposes ``DRIVER``,
an instance of a ``BaseDriver`` subclass; ``Driver`` is the protocol the registry and a unit test hold it to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import pulumi

from components.model import ConfigError, MachineConfig, StrictModel
from components.plugins import missing_plugin, plugin_of


@dataclass(frozen=True)
class PortForwarding:
    """A VM whose published ports reach the host only through forwards added at run time (QEMU user mode)."""

    instance_dir: str
    # The fixed HOST:GUEST[/udp] forwards the VM already has from boot.
    static: tuple[str, ...] = ()


@dataclass(frozen=True)
class Host:
    """How the shared provisioning reaches a host made by a driver."""

    ssh_host: pulumi.Input[str]
    ssh_port: pulumi.Input[int]
    ssh_user: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]
    # The address the Docker client dials: it goes into the server certificate's SANs.
    address: pulumi.Input[str]
    # The port the Docker client dials (a forwarded port for QEMU user networking).
    engine_port: pulumi.Input[int]
    # What the provisioning steps must wait for (e.g. the VM resource); None for an existing host.
    ready: pulumi.Resource | None
    # Changes whenever the host booted again (a VM restarted): the Docker API check then runs again.
    boot: pulumi.Input[str] = ""
    # Dial attempts while the host boots (every 2 s).
    dial_error_limit: int = 120
    # Whether destroy must undo our changes on the host (only for hosts we did not create).
    undo_on_delete: bool = False
    # Driver facts for the stack outputs (e.g. where a local VM's files are); plain JSON values.
    details: pulumi.Input[dict] | None = None
    # Published container ports to forward to the host (a QEMU user-mode VM), else None.
    port_forwarding: PortForwarding | None = None
    # The address the stack's other machines reach this one at (what a swarm advertises), which may differ from
    # ``address`` (127.0.0.1 for a QEMU user-mode VM); None when the driver knows of none.
    private_address: pulumi.Input[str] | None = None


@dataclass(frozen=True)
class DriverContext:
    """Everything ``create_host`` is given."""

    # Resource name prefix of this machine (its component's name).
    name: str
    machine: MachineConfig
    # The stack's generated SSH key for the machine (``components.tls.SshKey``): private_key, public_key outputs.
    ssh_key: Any
    # Where local drivers keep this stack's files (disks, sockets), unique per project and stack.
    state_dir: str
    # The project directory (scripts/build-image lives there).
    project_dir: str
    # Options for every resource the driver registers (parent = the machine's component).
    opts: pulumi.ResourceOptions

    @property
    def options(self) -> Any:
        return self.machine.options


@runtime_checkable
class Driver(Protocol):
    name: str
    # The pydantic model of the machine's ``options``.
    Options: type[StrictModel]
    # Whether the desired ``state: stopped`` can power the machine off (scripts/machine start/stop/kill).
    supports_power: bool
    # (plugin name, version) of the Pulumi resource plugin the driver needs, if any.
    plugin: tuple[str, str] | None

    def check_host(self, machines: Sequence[MachineConfig]) -> None:
        """Host prerequisites, before any resource exists; raises ConfigError with one line per problem."""

    def create_host(self, ctx: DriverContext) -> Host:
        """Register the resources that make the machine reachable over SSH."""

    def unreachable_by_peers(self, machine: MachineConfig) -> str | None:
        """Why the stack's other machines cannot reach this one (a swarm needs them to), naming the option that
        would fix it; None when they can (``Host.private_address``, or ``address`` itself)."""


class BaseDriver:
    """Defaults for the optional parts of the contract (docker-machine's drivers/base.go)."""

    name: ClassVar[str]
    Options: ClassVar[type[StrictModel]]
    supports_power: ClassVar[bool] = False
    # The pip package whose Pulumi plugin the driver needs (its pulumi-plugin.json gives name and version).
    plugin_package: ClassVar[str | None] = None

    def __init_subclass__(cls, *, name: str, options: type[StrictModel], supports_power: bool = False,
                          plugin_package: str | None = None, **kwargs: object) -> None:  # fmt: skip
        """``class QemuDriver(BaseDriver, name="qemu", options=Options, supports_power=True)``."""
        super().__init_subclass__(**kwargs)
        cls.name, cls.Options, cls.supports_power, cls.plugin_package = name, options, supports_power, plugin_package

    @property
    def plugin(self) -> tuple[str, str] | None:
        return plugin_of(self.plugin_package) if self.plugin_package else None

    def check_host(self, machines: Sequence[MachineConfig]) -> None:
        if self.plugin is not None:
            missing = missing_plugin(*self.plugin)
            if missing:
                raise ConfigError(f"machines[{machines[0].name}].driver: {missing}")

    def create_host(self, ctx: DriverContext) -> Host:
        raise NotImplementedError

    def unreachable_by_peers(self, machine: MachineConfig) -> str | None:
        return None
