"""QEMU driver: one local VM per machine (docs/local-vms.md).

``options`` (the machine's options, a forward rule parsed once), ``vm`` (the VM resource: command line, power),
``instance`` (its directory and monitor), ``shares`` (host folders), ``forwarder`` (published container ports),
``network`` and ``hub`` (the stack's private network), ``bridge`` (bridge mode). This module is the driver the registry
loads.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

from components.drivers._local import images
from components.drivers._local.paths import run
from components.drivers._local.vm import vm_host
from components.drivers.base import BaseDriver, Docker, DriverContext, Host, LocalState, VmResource
from components.drivers.qemu import bridge, forwarder, shares, templates
from components.drivers.qemu.options import USER_NETWORK_GATEWAY, Options
from components.drivers.qemu.vm import VM, Vm, VmProvider, detect_accel, instance_dir_of, kill_vm, vm_props
from components.model import ConfigError, MachineConfig


def qemu_has_dgram() -> bool | None:
    """Whether this host's QEMU has the ``dgram`` netdev (7.2 and later) the private network needs; None: no QEMU."""
    if not shutil.which("qemu-system-x86_64"):
        return None
    result = run("qemu-system-x86_64", "-netdev", "help", check=False)
    return "dgram" in result.stdout.split()


def _forward_lines(machines: Sequence[MachineConfig]) -> list[str]:
    """Fixed forwards must not reuse the engine's port, nor a host port of another machine of the stack."""
    lines, owners = [], {}
    for machine in machines:
        where = f"machines[{machine.name}].options.forwards"
        for forward in machine.options.forwards:
            if forward.guest == machine.engine.port and forward.protocol == "tcp":
                lines.append(f"{where}: {str(forward)!r}: the engine port {forward.guest} is already forwarded "
                             "(the machine URL)")  # fmt: skip
            key = (forward.host, forward.protocol)
            if key in owners:
                lines.append(f"{where}: {str(forward)!r}: host port {forward.host}/{forward.protocol} is also "
                             f"forwarded by {owners[key]}")  # fmt: skip
            owners[key] = machine.name
    return lines


def _private_network_lines(machines: Sequence[MachineConfig]) -> list[str]:
    members = [m for m in machines if m.options.private_network]
    if not members:
        return []
    first, lines = members[0], []
    for machine in members[1:]:
        if machine.options.private_cidr != first.options.private_cidr:
            lines.append(
                f"machines[{machine.name}].options.private_cidr: {machine.options.private_cidr!r} differs from "
                f"machines[{first.name}]'s {first.options.private_cidr!r}; a stack has one private network"
            )
    size = len(list(ipaddress.IPv4Network(first.options.private_cidr).hosts()))
    if not lines and len(members) > size:
        lines.append(
            f"machines[{members[size].name}].options.private_network: {len(members)} machines on the private "
            f"network, but private_cidr {first.options.private_cidr} has {size} addresses"
        )
    if qemu_has_dgram() is False:
        lines.append(
            f"machines[{first.name}].options.private_network: needs QEMU 7.2 or later (-netdev dgram); "
            f"this host's qemu-system-x86_64 is older"
        )
    return lines


def _bridge_lines(machines: Sequence[MachineConfig]) -> list[str]:
    bridged = [m for m in machines if m.options.network == "bridge"]
    if not bridged:
        return []
    lines = [f"machines[{bridged[0].name}].options.network: 'bridge' {problem}" for problem in bridge.problems()]
    cidrs: dict[str, MachineConfig] = {}
    for machine in bridged:
        first = cidrs.setdefault(machine.options.bridge, machine)
        if machine.options.bridge_cidr != first.options.bridge_cidr:
            lines.append(
                f"machines[{machine.name}].options.bridge_cidr: {machine.options.bridge_cidr!r} differs from "
                f"machines[{first.name}]'s {first.options.bridge_cidr!r} on bridge {machine.options.bridge}"
            )
    return lines


def _mount_lines(machines: Sequence[MachineConfig]) -> list[str]:
    return [
        f"machines[{m.name}].options.mount_type: 'virtiofs' needs virtiofsd, which this host lacks (scripts/host-tools "
        "builds it where cargo is); use auto or 9p"
        for m in machines if m.options.mounts and m.options.mount_type == shares.VIRTIOFS and not shares.virtiofsd()
    ]  # fmt: skip


def _image_lines(machines: Sequence[MachineConfig]) -> list[str]:
    """A local image file is checked before anything exists (no backing file, no external data)."""
    lines = []
    for machine in machines:
        path = os.path.abspath(os.path.expanduser(machine.options.image))
        if machine.options.image.startswith(("/", "./", "~")) and os.path.isfile(path) and shutil.which("qemu-img"):
            try:
                images.check_disk(path)
            except images.ImageError as err:
                lines.append(f"machines[{machine.name}].options.image: {err}")
    return lines


class QemuDriver(
    BaseDriver, name="qemu", options=Options, supports_power=True,
    vm=VmResource(VM.token, replace_inputs=VmProvider.REPLACE_ON, power_cycle_inputs=VmProvider.RESTART_ON),
):  # fmt: skip
    def check_host(self, machines: Sequence[MachineConfig]) -> None:
        """Forwards, the one private network and the bridges of a stack, its local images and its shares."""
        lines = _forward_lines(machines) + _private_network_lines(machines) + _bridge_lines(machines)
        lines += _image_lines(machines) + _mount_lines(machines)
        if lines:
            raise ConfigError("\n".join(lines))

    def unreachable_by_peers(self, machine: MachineConfig) -> str | None:
        options = machine.options
        if options.network == "user" and not options.private_network:
            return "a QEMU VM in user mode is reachable from this host only: set private_network: true (or bridge mode)"
        return None

    def create_host(self, ctx: DriverContext) -> Host:
        options: Options = ctx.options
        accel, reason = detect_accel(options.accel)
        if accel == "tcg":
            pulumi.log.info(f"qemu: {reason}")
        props = vm_props(ctx.machine.name, options, ctx.state_dir, ctx.project_dir,
                         authorized_key=ctx.ssh_key.public_key, owner=ctx.owner.as_dict(),
                         host_key=(pulumi.Output.secret(ctx.host_key.private_key), ctx.host_key.public_key),
                         engine_port=ctx.machine.engine.port, power=ctx.machine.state)  # fmt: skip
        vm = Vm(f"{ctx.name}-vm", props, opts=pulumi.ResourceOptions.merge(
            ctx.opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m"))
        ))  # fmt: skip
        instance_dir = instance_dir_of(ctx.state_dir, ctx.machine.name)
        publishes = options.network == "user" and options.publish
        # Where the stack's other machines reach this one: its own address on a bridge, else the private network's.
        private_address = vm.ip if options.network == "bridge" else vm.private_ip if options.private_network else None
        details = {"instanceDir": instance_dir, "publishes": publishes, "forwards": [str(f) for f in options.forwards]}
        details["mounts"] = [mount.model_dump() for mount in options.mounts]
        # The guest reaches this host at user mode's gateway, or the bridge's address; published ports come from that
        # gateway in user mode (slirp's own TCP stack relays them).
        user_mode = options.network == "user"
        host_address = USER_NETWORK_GATEWAY if user_mode else bridge.gateway(options.bridge_cidr)
        return vm_host(vm, ctx, options.ssh_user, vm.engine_host_port, details=details, private_address=private_address,
                       mounts=vm.shares, host_address=host_address,
                       published_from=USER_NETWORK_GATEWAY if user_mode else None)  # fmt: skip

    def after_docker(self, ctx: DriverContext, host: Host, docker: Docker) -> None:
        """Published container ports follow to the host's loopback (user mode)."""
        options: Options = ctx.options
        if options.network != "user" or not options.publish:
            return
        forwarder.PortForwarder(
            f"{ctx.name}-port-forwarder", machine=ctx.machine.name,
            instance_dir=instance_dir_of(ctx.state_dir, ctx.machine.name), docker_port=host.engine_port,
            client=docker.client, boot=docker.boot, running=docker.running,
            static=[str(f) for f in options.forwards],
            opts=pulumi.ResourceOptions(parent=ctx.opts.parent, depends_on=[docker.ready]),
        )  # fmt: skip

    def local_state(self, details: Mapping[str, Any]) -> LocalState:
        """The published ports the forwarder could not forward (``ls`` ERRORS) and its report (``inspect``)."""
        instance_dir = details.get("instanceDir")
        if not instance_dir or not details.get("publishes"):
            return LocalState()
        report = forwarder.read_report(instance_dir)
        return LocalState(errors=list(report.get("conflicts", {}).values()), record={"Forwards": report})

    def kill(self, name: str, details: Mapping[str, Any]) -> bool | None:
        """QMP quit: QEMU exits at once, like pulling the plug; its helpers follow."""
        instance_dir = details.get("instanceDir")
        return kill_vm(instance_dir) if instance_dir else None

    def templates(self, clear: bool = False) -> list[dict[str, Any]]:
        if clear:
            templates.clear()
        return templates.listing()


DRIVER = QemuDriver()
