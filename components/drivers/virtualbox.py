"""VirtualBox driver: docker-machine's default local driver, through VirtualBox's own API (pyvbox).

One VM per machine, owned by a Python dynamic provider, the way docker-machine's driver laid it out:
NIC 1 NAT with an SSH port forward on 127.0.0.1, NIC 2 on a host-only network whose address is the
one the Docker client dials, a disk cloned from a cloud image (VMDK/VDI/OVA, path or URL, cached),
the cloud-init NoCloud seed ISO as a DVD, and a headless start. Unlike docker-machine the host-only
address is static: allocated from the host-only CIDR when the VM is created and written into the
seed's network-config, so it is known before the guest boots and never changes (docker-machine's
DHCP addresses invalidated the server certificate).

pyvbox (the ``virtualbox`` package) is generated for the VirtualBox 6.1 API; it needs VirtualBox's
own Python bindings (``vboxapi``, from the VirtualBox SDK). Where either is missing, ``check_host``
fails the program before any resource exists, with one message saying what to install.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from typing import Any, Literal

import pulumi
from pulumi.dynamic import CreateResult, ReadResult, UpdateResult
from pydantic import Field, ValidationInfo, field_validator, model_validator

from components import cloudinit, outputs
from components.drivers._local import images
from components.drivers._local.paths import free_port
from components.drivers._local.process import settle
from components.drivers._local.shares import Mounts, mounts_field
from components.drivers._local.vm import LocalVm, LocalVmProvider, boot_token, vm_host
from components.drivers._vbox import (
    DEFAULT_HOSTONLY_CIDR,
    HOSTONLY_ALLOWED,
    VBoxUnavailable,
    _library,
    _nic_type,
    check_version,
    clone_disk,
    connect,
    dhcp_reserved,
    ensure_hostonly,
    extract_ova_disk,
    find,
    guest_table,
    hostonly_conflict,
    is_online,
    launch,
    lease_address,
    locked,
    macs,
    network_config,
    parse_hostonly_cidr,
    release_address,
    share_folders,
    state_name,
    wait,
)  # fmt: skip
from components.drivers.base import GUEST_SSH_PORT, BaseDriver, DriverContext, Host, VmResource
from components.model import ConfigError, MachineConfig, StrictModel

DEFAULT_IMAGE = "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.vmdk"
IMAGE_SUFFIXES = (".vmdk", ".vdi", ".ova")
VM = outputs.DynamicType("virtualbox", "Vm")
POWERDOWN_TIMEOUT = 90
UNLOCK_TIMEOUT = 30
CONTROLLER = "SATA"
# VirtualBox's NAT: the host as NIC 1 sees it.
NAT_GATEWAY = "10.0.2.2"
NicType = Literal["82540EM", "82543GC", "82545EM", "Am79C970A", "Am79C973", "virtio"]

class Options(StrictModel):
    cpus: int = Field(1, description="docker-machine's default 1; -1 = all host CPUs (at most 32)")
    memory: int = Field(1024, ge=512, description="MiB, docker-machine's default 1024")
    disk: int = Field(20000, ge=4096, description="MiB, docker-machine's default 20000")
    image: str = Field(DEFAULT_IMAGE, description="path or https URL of a .vmdk, .vdi or .ova cloud image")
    image_sha256: str | None = Field(
        None, description="an image URL's sha256, or 'published' (SHA256SUMS beside it, the default image's way)"
    )
    os_type: str = Field("Ubuntu_64", pattern=r"^[A-Za-z0-9_]+$", description="VirtualBox guest OS type id")
    ssh_user: str = Field("docker", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    allow_any_hostonly_cidr: bool = Field(
        False, description="allow a hostonly_cidr outside 192.168.56.0/21 (needs /etc/vbox/networks.conf)"
    )
    hostonly_cidr: str = Field(DEFAULT_HOSTONLY_CIDR, description="the host's address/prefix on the network")
    hostonly_ip: str | None = Field(None, description="the VM's fixed host-only address (default: allocated)")
    hostonly_nictype: NicType = "82540EM"
    nat_nictype: NicType = "82540EM"
    ui_type: Literal["headless", "gui", "sdl", "separate"] = "headless"
    mounts: Mounts = mounts_field()

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: int) -> int:
        if v != -1 and not 1 <= v <= 32:
            raise ValueError("must be between 1 and 32, or -1 for all host CPUs")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v.startswith(("http://", "https://")):
            images.check_url(v)
        elif not v.startswith(("/", "./", "~")):
            raise ValueError("must be an absolute path or an https URL")
        path = v.split("?", 1)[0].split("#", 1)[0]
        if not path.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"must name a {', '.join(s[1:].upper() for s in IMAGE_SUFFIXES)} image")
        return v

    @field_validator("hostonly_cidr")
    @classmethod
    def _cidr(cls, v: str, info: ValidationInfo) -> str:
        host_ip, network = parse_hostonly_cidr(v)
        if not info.data.get("allow_any_hostonly_cidr") and not network.subnet_of(HOSTONLY_ALLOWED):
            raise ValueError(
                f"{network} is outside {HOSTONLY_ALLOWED}, the only host-only range VirtualBox >= 6.1.28 allows "
                "on Linux and macOS unless /etc/vbox/networks.conf lists it; if yours does, set "
                "allow_any_hostonly_cidr: true"
            )
        return f"{host_ip}/{network.prefixlen}"

    @field_validator("hostonly_ip")
    @classmethod
    def _ip(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or "hostonly_cidr" not in info.data:
            return v
        host_ip, network = parse_hostonly_cidr(info.data["hostonly_cidr"])
        try:
            ip = ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None
        if ip not in network or ip in (network.network_address, network.broadcast_address, host_ip):
            raise ValueError(f"{v} must be a host address of {network} other than {host_ip} (the host's)")
        return v


    @model_validator(mode="after")
    def _image_sha256(self) -> Options:
        # The default image is checked against the SHA256SUMS its publisher puts beside it.
        default = self.image == DEFAULT_IMAGE and self.image_sha256 is None
        images.check_sha256(images.PUBLISHED if default else self.image_sha256, self.image)
        return self

    @property
    def image_checksum(self) -> str | None:
        return images.PUBLISHED if self.image == DEFAULT_IMAGE and self.image_sha256 is None else self.image_sha256


def check_host(machines: list[MachineConfig]) -> None:
    """Program-time check (preview and up), before any resource exists: VirtualBox 6.1 and its Python API
    are installed and answer, and each machine's host-only CIDR does not collide with a host interface.

    Raises ConfigError with one message.
    """
    try:
        _, vbox = connect()
        check_version(vbox.version, vbox.api_version)
        problems = []
        for machine in machines:
            host_ip, network = parse_hostonly_cidr(machine.options.hostonly_cidr)
            conflict = hostonly_conflict(vbox, network, host_ip)
            if conflict:
                problems.append(f"machines[{machine.name}].options.hostonly_cidr: {conflict}")
    except VBoxUnavailable as err:
        raise ConfigError(f"machines[{machines[0].name}].driver: virtualbox: {err}") from None
    if problems:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(problems))


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def local_image(image: str, sha256: str | None) -> str:
    """A local VMDK/VDI for ``image``: URLs are fetched into the cache once (checked against ``sha256``), and an
    OVA's first disk is extracted into the cache once."""
    remote = image.startswith(("http://", "https://"))
    path = images.fetch(image, sha256) if remote else os.path.abspath(os.path.expanduser(image))
    if not os.path.isfile(path):
        raise RuntimeError(f"image {path} does not exist")
    if path.lower().endswith(".ova"):
        path = extract_ova_disk(path)
    return path


# --- the VM -------------------------------------------------------------------------------------------


def power_off(vb: Any, machine: Any) -> None:
    """Kill: VirtualBox's power off (docker-machine's `kill`)."""
    if not is_online(machine.state):
        return
    with locked(vb, machine, "shared") as session:
        wait(session.console.power_down(), f"powering off VM {machine.name}")
    wait_unlocked(machine)


def acpi_stop(vb: Any, machine: Any, timeout: float) -> None:
    """Stop: the ACPI power button (docker-machine's `stop`); power off when the guest ignores it."""
    lib = _library()
    if machine.state == lib.MachineState.running:
        with locked(vb, machine, "shared") as session:
            session.console.power_button()
        settle(lambda: not is_online(machine.state), timeout, 1, sleep=lambda seconds: _pause(seconds))
    power_off(vb, machine)
    wait_unlocked(machine)


def wait_unlocked(machine: Any) -> None:
    """The VM process releases its lock a moment after the machine powers off."""
    unlocked = _library().SessionState.unlocked
    settle(lambda: machine.session_state == unlocked, UNLOCK_TIMEOUT, sleep=lambda seconds: _pause(seconds))


def destroy_vm(vb: Any, machine: Any) -> None:
    """docker-machine's rm: power off, unregister with all media, delete the settings and media files."""
    lib = _library()
    power_off(vb, machine)
    wait_unlocked(machine)  # unregister refuses a machine that is still locked
    media = machine.unregister(lib.CleanupMode.full)
    wait(machine.delete_config(media), f"deleting VM {machine.name}")


def remove_leftover(vb: Any, vbox: Any, name: str, instance_dir: str) -> None:
    """A VM of this name made by an interrupted create (its settings live in instance_dir) is removed;
    any other VM of this name is a collision, as in docker-machine."""
    machine = find(vbox, name)
    if machine is None:
        return
    settings = machine.settings_file_path
    if os.path.dirname(os.path.abspath(settings)) != os.path.abspath(instance_dir):
        raise RuntimeError(
            f"a VirtualBox VM named {name!r} already exists ({settings}); remove it "
            f"(VBoxManage unregistervm {name} --delete) or give the machine another name"
        )
    destroy_vm(vb, machine)


def _define_machine(vbox: Any, lib: Any, props: dict[str, Any], iface: str, nat_mac: str, hostonly_mac: str,
                    ssh_port: int) -> Any:  # fmt: skip
    """A new, unregistered machine: CPUs, memory, firmware, boot order, disk controller, NAT (with the SSH forward)
    and host-only NICs."""
    name, d = props["name"], props["instance_dir"]
    machine = vbox.create_machine(os.path.join(d, f"{name}.vbox"), name, [], props["os_type"], "")
    machine.memory_size = int(props["memory"])
    machine.cpu_count = int(props["cpus"])
    machine.rtc_use_utc = True
    # docker-machine's --acpi on --ioapic on: the power button needs ACPI, more than one CPU an IO-APIC.
    bios = machine.bios_settings
    bios.acpi_enabled = True
    bios.ioapic_enabled = True
    machine.set_boot_order(1, lib.DeviceType.hard_disk)  # the seed DVD is data, not a boot medium
    for position in (2, 3, 4):
        machine.set_boot_order(position, lib.DeviceType.null)
    machine.add_storage_controller(CONTROLLER, lib.StorageBus.sata)
    nat = machine.get_network_adapter(0)
    nat.enabled = True
    nat.attachment_type = lib.NetworkAttachmentType.nat
    nat.adapter_type = _nic_type(props["nat_nictype"])
    nat.mac_address = nat_mac
    engine = nat.nat_engine
    engine.dns_proxy = True
    engine.add_redirect("ssh", lib.NATProtocol.tcp, "127.0.0.1", ssh_port, "", GUEST_SSH_PORT)
    hostonly = machine.get_network_adapter(1)
    hostonly.enabled = True
    hostonly.attachment_type = lib.NetworkAttachmentType.host_only
    hostonly.host_only_interface = iface
    hostonly.adapter_type = _nic_type(props["hostonly_nictype"])
    hostonly.mac_address = hostonly_mac
    share_folders(machine, props.get("mounts") or [])
    return machine


def create_vm(props: dict[str, Any]) -> dict[str, Any]:
    vb, vbox = connect()
    lib = vb.library
    check_version(vbox.version, vbox.api_version)
    name, d = props["name"], props["instance_dir"]
    remove_leftover(vb, vbox, name, d)
    outs: dict[str, Any] = {**props}
    disk = dvd = None
    try:
        image = local_image(props["image"], props.get("image_sha256"))
        iface = ensure_hostonly(vbox, props["hostonly_cidr"])
        address = lease_address(props["hostonly_cidr"], d, props.get("hostonly_ip"), dhcp_reserved(vbox, iface))
        nat_mac, hostonly_mac = macs(d)
        ssh_port = free_port()
        outs.update(
            ip=address, ssh_host="127.0.0.1", ssh_port=ssh_port, hostonly_interface=iface,
            nat_mac=nat_mac, hostonly_mac=hostonly_mac, image_resolved=image,
        )
        files = {
            "user-data": cloudinit.user_data(name, props["ssh_user"], props["authorized_key"],
                                             (props["host_key"], props["host_key_public"])),
            "meta-data": cloudinit.meta_data(f"{name}-{secrets.token_hex(4)}", name),
            "network-config": network_config(nat_mac, hostonly_mac, address, props["hostonly_cidr"]),
        }
        with open(os.open(os.path.join(d, "seed.iso"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(cloudinit.build_iso(files))
        disk = clone_disk(vbox, image, os.path.join(d, "disk.vdi"), props["disk"])

        machine = _define_machine(vbox, lib, props, iface, nat_mac, hostonly_mac, ssh_port)
        machine.save_settings()
        vbox.register_machine(machine)
        outs["vm_id"] = machine.id_p

        # Media can be attached only to a registered machine, through a write-locked session.
        dvd = vbox.open_medium(os.path.join(d, "seed.iso"), lib.DeviceType.dvd, lib.AccessMode.read_only, False)
        with locked(vb, machine, "write") as session:
            mutable = session.machine
            mutable.attach_device(CONTROLLER, 0, 0, lib.DeviceType.hard_disk, disk)
            mutable.attach_device(CONTROLLER, 1, 0, lib.DeviceType.dvd, dvd)
            mutable.save_settings()

        if props.get("power", "running") == "running":
            launch(vb, machine, props["ui_type"])
        outs["state"] = state_name(machine.state)
    except BaseException:
        # Leave nothing behind: the VM (with its media), else the media registered so far.
        with contextlib.suppress(Exception):
            leftover = find(vbox, outs["vm_id"]) if outs.get("vm_id") else None
            if leftover is not None:
                destroy_vm(vb, leftover)
        with contextlib.suppress(Exception):
            if disk is not None:
                wait(disk.delete_storage(), "deleting the disk")
        with contextlib.suppress(Exception):
            if dvd is not None:
                dvd.close()
        release_address(props["hostonly_cidr"], outs.get("ip"), d)
        shutil.rmtree(d, ignore_errors=True)
        raise
    return outs


def delete_vm(vm_id: str, props: dict[str, Any]) -> None:
    vb, vbox = connect()
    machine = find(vbox, vm_id) if vm_id else None
    if machine is not None:
        destroy_vm(vb, machine)
    release_address(props["hostonly_cidr"], props.get("ip"), props["instance_dir"])
    shutil.rmtree(props["instance_dir"], ignore_errors=True)


def power_matches(state: str | None, power: str) -> bool:
    # A saved VM is not running: it satisfies `stopped` (docker-machine lists it as Saved, not Running).
    return state == "running" if power == "running" else state in ("stopped", "saved")


def update_vm(vm_id: str, olds: dict[str, Any], news: dict[str, Any], restart_on: tuple[str, ...]) -> dict[str, Any]:
    vb, vbox = connect()
    lib = vb.library
    machine = find(vbox, vm_id)
    if machine is None:
        raise RuntimeError(f"VirtualBox VM {news['name']} ({vm_id}) is gone; run `pulumi refresh` to recreate it")
    outs = {**olds, **news}
    if any(olds.get(k) != news.get(k) for k in restart_on):
        if is_online(machine.state):
            acpi_stop(vb, machine, POWERDOWN_TIMEOUT)
        with locked(vb, machine, "write") as session:
            mutable = session.machine
            if machine.state == lib.MachineState.saved:
                mutable.discard_saved_state(True)  # a saved state cannot survive a hardware change
            mutable.memory_size = int(news["memory"])
            mutable.cpu_count = int(news["cpus"])
            share_folders(mutable, news.get("mounts") or [])
            mutable.save_settings()
    state = state_name(machine.state)
    if news.get("power", "running") == "stopped":
        if state == "paused":
            power_off(vb, machine)
        elif state in ("running", "starting"):
            acpi_stop(vb, machine, POWERDOWN_TIMEOUT)
    elif state == "paused":
        with locked(vb, machine, "shared") as session:
            session.console.resume()
    elif state != "running":
        launch(vb, machine, news["ui_type"])
        outs["boot"] = boot_token()
    return {**outs, "state": state_name(machine.state)}


class VmProvider(LocalVmProvider):
    # Inputs whose change needs a new VM; cpus/memory/ui_type/mounts only a power cycle.
    REPLACE_ON = (
        "name", "instance_dir", "image", "image_sha256", "os_type", "disk", "ssh_user", "authorized_key", "host_key",
        "hostonly_cidr", "hostonly_ip", "nat_nictype", "hostonly_nictype",
    )  # fmt: skip
    RESTART_ON = ("cpus", "memory", "ui_type", "mounts")

    def power_matches(self, olds: dict[str, Any], power: str) -> bool:
        return power_matches(olds.get("state"), power)

    def disk(self, props: dict[str, Any]) -> str:
        return os.path.join(props["instance_dir"], "disk.vdi")

    def lost(self, olds: dict[str, Any]) -> bool:
        # VirtualBox keeps the machine registered: a missing disk file shows as an inaccessible VM, not here.
        return False

    def create(self, props: dict[str, Any]) -> CreateResult:
        # A directory left by an interrupted create of ours holds no registered VM any more (remove_leftover).
        self.claim_new(props, lambda leftover: self.remove_instance_dir(leftover["instance_dir"]))
        outs = create_vm(props)
        return CreateResult(outs["vm_id"], {**outs, "boot": boot_token()})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        _, vbox = connect()
        machine = find(vbox, id_)
        if machine is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, "state": state_name(machine.state)})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if not self.keep_ours(olds, news):
            raise self.refuse_change(olds)
        return UpdateResult(update_vm(id_, olds, news, self.RESTART_ON))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if self.keep_ours(props):
            delete_vm(id_, props)
        else:
            self.leave_alone(props)


class Vm(LocalVm, module=VM.module, name=VM.name):
    OUTPUTS = (*LocalVm.OUTPUTS, "vm_id", "hostonly_interface")
    SECRET_OUTPUTS = ("host_key",)

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(VmProvider(), name, props, opts)


class VirtualBoxDriver(
    BaseDriver, name="virtualbox", options=Options, supports_power=True,
    vm=VmResource(VM.token, replace_inputs=VmProvider.REPLACE_ON, power_cycle_inputs=VmProvider.RESTART_ON),
):  # fmt: skip
    def check_host(self, machines: Sequence[MachineConfig]) -> None:
        check_host(list(machines))

    def create_host(self, ctx: DriverContext) -> Host:
        options: Options = ctx.options
        cpus = options.cpus if options.cpus > 0 else min(os.cpu_count() or 1, 32)
        instance_dir = os.path.join(ctx.state_dir, "virtualbox", ctx.machine.name)
        vm = Vm(
            f"{ctx.name}-vm",
            {
                "name": ctx.machine.name,
                "instance_dir": instance_dir,
                "owner": ctx.owner.as_dict(),
                "image": options.image,
                "image_sha256": options.image_checksum,
                "os_type": options.os_type,
                "cpus": cpus,
                "memory": options.memory,
                "disk": options.disk,
                "ssh_user": options.ssh_user,
                "authorized_key": ctx.ssh_key.public_key,
                "host_key": pulumi.Output.secret(ctx.host_key.private_key),
                "host_key_public": ctx.host_key.public_key,
                "hostonly_cidr": options.hostonly_cidr,
                "hostonly_ip": options.hostonly_ip,
                "nat_nictype": options.nat_nictype,
                "hostonly_nictype": options.hostonly_nictype,
                "ui_type": options.ui_type,
                "mounts": [mount.model_dump() for mount in options.mounts],
                "power": ctx.machine.state,
            },
            opts=pulumi.ResourceOptions.merge(
                ctx.opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="30m"))
            ),
        )
        # The host-only address is also where the stack's other VirtualBox machines reach it.
        mounts = [mount.model_dump() for mount in options.mounts]
        return vm_host(vm, ctx, options.ssh_user, ctx.machine.engine.port, private_address=vm.ip,
                       details={"instanceDir": instance_dir, "mounts": mounts}, mounts=guest_table(mounts),
                       host_address=NAT_GATEWAY)  # fmt: skip

    def kill(self, name: str, details: Any) -> bool | None:
        """VirtualBox's power off (the VM is not asked)."""
        vb, vbox = connect()
        machine = find(vbox, name)
        if machine is None or not is_online(machine.state):
            return False
        power_off(vb, machine)
        return True


DRIVER = VirtualBoxDriver()
