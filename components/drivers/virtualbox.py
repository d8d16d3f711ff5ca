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
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult
from pydantic import Field, ValidationInfo, field_validator

from components import seed
from components.config import ConfigError, MachineConfig, StrictModel
from components.drivers import Host
from components.drivers.qemu import cache_root, claim_lease, free_port, resolve_image, state_root

# scripts/machine start/stop/kill act through the machine's desired `state`.
SUPPORTS_POWER = True

DEFAULT_IMAGE = "https://cloud-images.ubuntu.com/releases/noble/release/ubuntu-24.04-server-cloudimg-amd64.vmdk"
IMAGE_SUFFIXES = (".vmdk", ".vdi", ".ova")
# VirtualBox >= 6.1.28 on Linux and macOS refuses host-only addresses outside this range unless
# /etc/vbox/networks.conf allows more (docker-machine's 192.168.99.1/24 default broke with it).
HOSTONLY_ALLOWED = ipaddress.IPv4Network("192.168.56.0/21")
DEFAULT_HOSTONLY_CIDR = "192.168.56.1/24"  # VirtualBox's own default (vboxnet0)
# pyvbox 2.1.1 is generated from the VirtualBox 6.1 XIDL: its enums and method signatures are 6.1's.
SUPPORTED_API = (6, 1)
GUEST_SSH_PORT = 22
POWERDOWN_TIMEOUT = 90
UNLOCK_TIMEOUT = 30
CONTROLLER = "SATA"
# docker-machine's --virtualbox-*-nictype values → VirtualBox's NetworkAdapterType labels.
NIC_TYPES = {
    "82540EM": "I82540EM",
    "82543GC": "I82543GC",
    "82545EM": "I82545EM",
    "Am79C970A": "Am79C970A",
    "Am79C973": "Am79C973",
    "virtio": "Virtio",
}
NicType = Literal["82540EM", "82543GC", "82545EM", "Am79C970A", "Am79C973", "virtio"]

INSTALL_HINT = (
    "install VirtualBox 6.1 and its SDK, then the SDK's Python bindings into the project's virtualenv: "
    "`cd VirtualBoxSDK/sdk/installer && VBOX_INSTALL_PATH=/usr/lib/virtualbox <project>/.venv/bin/python "
    "vboxapisetup.py install` (or create .venv with --system-site-packages where your VirtualBox package "
    "installed vboxapi system-wide)"
)


class VBoxUnavailable(RuntimeError):
    """VirtualBox or its Python API cannot be used here; the message says what to install."""


class Options(StrictModel):
    cpus: int = Field(1, description="docker-machine's default 1; -1 = all host CPUs (at most 32)")
    memory: int = Field(1024, ge=512, description="MiB, docker-machine's default 1024")
    disk: int = Field(20000, ge=4096, description="MiB, docker-machine's default 20000")
    image: str = Field(DEFAULT_IMAGE, description="path or http(s) URL of a .vmdk, .vdi or .ova cloud image")
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

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: int) -> int:
        if v != -1 and not 1 <= v <= 32:
            raise ValueError("must be between 1 and 32, or -1 for all host CPUs")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v.startswith(("http://", "https://", "/", "./", "~")):
            raise ValueError("must be an absolute path or an http(s) URL")
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


def parse_hostonly_cidr(value: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Network]:
    """docker-machine's form, the host's address with a prefix (192.168.56.1/24), or a network (→ its first host)."""
    try:
        interface = ipaddress.IPv4Interface(value)
    except ValueError as err:
        raise ValueError(f"{value!r} is not a valid IPv4 CIDR ({err})") from None
    if "/" not in value:
        raise ValueError(f"{value!r} needs a prefix length, e.g. {DEFAULT_HOSTONLY_CIDR}")
    network = interface.network
    if network.prefixlen > 29 or network.prefixlen < 8:
        raise ValueError(f"{value!r}: use a prefix between /8 and /29")
    host_ip = interface.ip
    if host_ip == network.network_address:
        host_ip = next(network.hosts())
    if host_ip == network.broadcast_address:
        raise ValueError(f"{value!r}: {host_ip} is the broadcast address")
    return host_ip, network


# --- VirtualBox's API ---------------------------------------------------------------------------------


def _api_version(api: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", api)[:2])


def check_version(version: str, api: str) -> None:
    found = _api_version(api)
    if found < SUPPORTED_API:
        raise VBoxUnavailable(f"VirtualBox {version} is too old: the virtualbox driver needs VirtualBox 6.1")
    if found > SUPPORTED_API:
        raise VBoxUnavailable(
            f"VirtualBox {version} (API {api}) is not supported: pyvbox 2.1.1, the Python API this driver uses, "
            "is generated for VirtualBox 6.1, and later versions renumbered machine states and changed methods; "
            "install VirtualBox 6.1"
        )


def connect() -> tuple[Any, Any]:
    """(the pyvbox module, an IVirtualBox) for this thread, or VBoxUnavailable saying what to install."""
    try:
        import virtualbox
    except ImportError as err:
        raise VBoxUnavailable(
            f"pyvbox (the virtualbox package) is not installed ({err}): run `.venv/bin/pip install -r requirements.txt`"
        ) from None
    try:
        manager = virtualbox.Manager()
    except ImportError as err:
        raise VBoxUnavailable(
            f"VirtualBox's Python API (vboxapi) is not installed ({err}): " + INSTALL_HINT
        ) from None
    except Exception as err:  # noqa: BLE001 - vboxapi raises plain Exceptions (VBoxPython missing, no VBoxSVC)
        raise VBoxUnavailable(f"VirtualBox's Python API could not reach VirtualBox ({err}): " + INSTALL_HINT) from None
    # XPCOM needs every thread that calls into it attached; the provider runs methods on worker threads.
    with contextlib.suppress(Exception):
        manager.manager.initPerThread()
    try:
        vbox = virtualbox.VirtualBox(manager=manager)
    except Exception as err:  # noqa: BLE001
        raise VBoxUnavailable(f"VirtualBox's Python API could not reach VirtualBox ({err}): " + INSTALL_HINT) from None
    return virtualbox, vbox


def hostonly_conflict(vbox: Any, network: ipaddress.IPv4Network, host_ip: ipaddress.IPv4Address) -> str | None:
    """Why ``network`` cannot be a host-only network here, or None (free, or a matching host-only interface)."""
    lib = _library()
    for iface in vbox.host.network_interfaces:
        address = iface.ip_address
        if not address or address == "0.0.0.0":
            continue
        try:
            theirs = ipaddress.IPv4Interface(f"{address}/{iface.network_mask}")
        except ValueError:
            continue
        if not theirs.network.overlaps(network):
            continue
        host_only = iface.interface_type == lib.HostNetworkInterfaceType.host_only
        if host_only and theirs.ip == host_ip and theirs.network == network:
            continue
        kind = "host-only interface" if host_only else "host interface"
        return (
            f"host-only cidr conflicts with the network address of a host interface: {network} overlaps "
            f"{kind} {iface.name} ({theirs.with_prefixlen}); choose another hostonly_cidr"
        )
    return None


def _library() -> Any:
    from virtualbox import library

    return library


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
        raise ConfigError(f"virtualbox driver: {err}") from None
    if problems:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(problems))


def wait(progress: Any, what: str) -> None:
    progress.wait_for_completion(-1)
    if progress.result_code != 0:
        info = progress.error_info
        text = info.text if info is not None else ""
        raise RuntimeError(f"{what} failed: {text or hex(progress.result_code & 0xFFFFFFFF)}")


def _pause(seconds: float) -> None:
    time.sleep(seconds)


# --- images -------------------------------------------------------------------------------------------

_image_lock = threading.Lock()


def local_image(image: str) -> str:
    """A local VMDK/VDI for ``image``: URLs are downloaded into the cache (the QEMU driver's helper) and
    an OVA's first disk is extracted into the cache once."""
    path = resolve_image({"image": image, "cmdline": ""})["disk"]
    if path.lower().endswith(".ova"):
        path = extract_ova_disk(path)
    return path


def extract_ova_disk(ova: str) -> str:
    stat = os.stat(ova)
    key = hashlib.sha256(f"{ova}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target_dir = os.path.join(cache_root(), "images", f"ova-{key}")
    with tarfile.open(ova) as archive:
        disks = [m for m in archive.getmembers() if m.isfile() and m.name.lower().endswith((".vmdk", ".vdi"))]
        if not disks:
            raise RuntimeError(f"{ova} contains no VMDK or VDI disk")
        target = os.path.join(target_dir, os.path.basename(disks[0].name))
        if not os.path.exists(target):
            os.makedirs(target_dir, exist_ok=True)
            partial = target + ".partial"
            source = archive.extractfile(disks[0])
            with source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
            os.replace(partial, target)
    return target


def clone_disk(vbox: Any, image: str, target: str, size_mib: int) -> Any:
    """Clone the cached image into the VM's own VDI (the image stays pristine) and grow it to ``size_mib``."""
    lib = _library()
    # Parallel creates share the opened image: open, clone and close it one at a time.
    with _image_lock:
        base = vbox.open_medium(image, lib.DeviceType.hard_disk, lib.AccessMode.read_only, False)
        disk = None
        try:
            disk = vbox.create_medium("VDI", target, lib.AccessMode.read_write, lib.DeviceType.hard_disk)
            wait(base.clone_to_base(disk, [lib.MediumVariant.standard]), f"cloning {image}")
        except BaseException:
            if disk is not None:
                with contextlib.suppress(Exception):
                    disk.close()
            raise
        finally:
            with contextlib.suppress(lib.VBoxError):
                base.close()
    try:
        wanted = int(size_mib) * 1024 * 1024
        if disk.logical_size < wanted:
            wait(disk.resize(wanted), f"resizing {target}")
    except BaseException:
        with contextlib.suppress(Exception):
            wait(disk.delete_storage(), f"deleting {target}")
        raise
    return disk


# --- host-only network ----------------------------------------------------------------------------------


def ensure_hostonly(vbox: Any, cidr: str) -> str:
    """The host-only interface carrying ``cidr`` (the host's address on it), created when missing."""
    lib = _library()
    host_ip, network = parse_hostonly_cidr(cidr)
    netmask = str(network.netmask)
    host = vbox.host
    for iface in host.find_host_network_interfaces_of_type(lib.HostNetworkInterfaceType.host_only):
        if iface.ip_address == str(host_ip) and iface.network_mask == netmask:
            return iface.name
    conflict = hostonly_conflict(vbox, network, host_ip)
    if conflict:
        raise RuntimeError(conflict)
    iface, progress = host.create_host_only_network_interface()
    wait(progress, "creating a host-only interface")
    try:
        iface.enable_static_ip_config(str(host_ip), netmask)
    except lib.VBoxError as err:
        with contextlib.suppress(lib.VBoxError):
            wait(host.remove_host_only_network_interface(iface.id_p), f"removing {iface.name}")
        hint = ""
        if not network.subnet_of(HOSTONLY_ALLOWED):
            hint = (
                f" (VirtualBox >= 6.1.28 allows only {HOSTONLY_ALLOWED} unless /etc/vbox/networks.conf "
                f"lists {network})"
            )
        raise RuntimeError(f"setting {host_ip}/{network.prefixlen} on {iface.name} failed: {err}{hint}") from None
    return iface.name


def dhcp_reserved(vbox: Any, iface: str) -> set[ipaddress.IPv4Address]:
    """Addresses the host-only network's DHCP server hands out (its own and its range), if it has one."""
    lib = _library()
    try:
        server = vbox.find_dhcp_server_by_network_name(f"HostInterfaceNetworking-{iface}")
    except lib.VBoxErrorObjectNotFound:
        return set()
    if not server.enabled:
        return set()
    lower, upper = ipaddress.IPv4Address(server.lower_ip), ipaddress.IPv4Address(server.upper_ip)
    reserved = {ipaddress.IPv4Address(server.ip_address)}
    reserved.update(ipaddress.IPv4Address(n) for n in range(int(lower), int(upper) + 1))
    return reserved


def _lease_dir(network: ipaddress.IPv4Network) -> str:
    return os.path.join(state_root(), "virtualbox", "hostonly", str(network).replace("/", "_"))


def lease_address(cidr: str, owner: str, wanted: str | None, reserved: set[ipaddress.IPv4Address]) -> str:
    """Reserve a host-only address for ``owner`` (one file per address, created exclusively, shared by stacks)."""
    host_ip, network = parse_hostonly_cidr(cidr)
    leases = _lease_dir(network)
    if wanted and ipaddress.IPv4Address(wanted) in reserved:
        raise RuntimeError(f"hostonly_ip {wanted} is handed out by the DHCP server of the host-only network")
    candidates = [wanted] if wanted else [str(h) for h in network.hosts() if h != host_ip and h not in reserved]
    address = claim_lease(leases, candidates, owner)
    if address is None and wanted:
        raise RuntimeError(f"host-only address {wanted} is already used by {os.path.join(leases, wanted)}")
    if address is None:
        raise RuntimeError(f"no free address left in {network}")
    return address


def release_address(cidr: str, address: str | None, owner: str) -> None:
    if not address:
        return
    path = os.path.join(_lease_dir(parse_hostonly_cidr(cidr)[1]), address)
    with contextlib.suppress(OSError):
        with open(path) as f:
            if f.read().strip() != owner:
                return
        os.unlink(path)


def macs(instance_dir: str) -> tuple[str, str]:
    """Two stable MACs under VirtualBox's OUI 08:00:27, in VirtualBox's notation (12 hex digits)."""
    digest = hashlib.sha256(instance_dir.encode()).hexdigest().upper()
    return "080027" + digest[:6], "080027" + digest[6:12]


def colon_mac(mac: str) -> str:
    return ":".join(mac[i : i + 2] for i in range(0, 12, 2)).lower()


def network_config(nat_mac: str, hostonly_mac: str, address: str, cidr: str) -> str:
    """cloud-init network-config v2: DHCP on the NAT NIC (its default route), the static host-only address."""
    prefix = parse_hostonly_cidr(cidr)[1].prefixlen
    config = {
        "version": 2,
        "ethernets": {
            "nat": {"match": {"macaddress": colon_mac(nat_mac)}, "dhcp4": True},
            "hostonly": {
                "match": {"macaddress": colon_mac(hostonly_mac)},
                "dhcp4": False,
                "addresses": [f"{address}/{prefix}"],
            },
        },
    }
    return json.dumps(config, indent=1) + "\n"


# --- the VM -------------------------------------------------------------------------------------------


def state_name(state: Any) -> str:
    """docker-machine's mapping: running, paused, saved; poweroff/aborted → stopped."""
    s = _library().MachineState
    named = {
        int(s.running): "running",
        int(s.paused): "paused",
        int(s.saved): "saved",
        int(s.powered_off): "stopped",
        int(s.aborted): "stopped",
        int(s.teleported): "stopped",
        int(s.starting): "starting",
        int(s.restoring): "starting",
        int(s.stopping): "stopping",
        int(s.saving): "stopping",
        int(s.stuck): "error",
    }
    if int(state) in named:
        return named[int(state)]
    return "running" if s.first_online <= state <= s.last_online else "stopped"


def is_online(state: Any) -> bool:
    s = _library().MachineState
    return s.first_online <= state <= s.last_online


def find(vbox: Any, name_or_id: str) -> Any | None:
    try:
        return vbox.find_machine(name_or_id)
    except _library().VBoxErrorObjectNotFound:
        return None


def launch(vb: Any, machine: Any, ui_type: str) -> None:
    session = vb.Session()
    progress = machine.launch_vm_process(session, ui_type, [])
    try:
        wait(progress, f"starting VM {machine.name}")
    finally:
        # A failed start leaves the session unlocked already; its error is the one to report.
        with contextlib.suppress(_library().VBoxError):
            session.unlock_machine()


@contextlib.contextmanager
def locked(vb: Any, machine: Any, lock: str) -> Iterator[Any]:
    session = vb.Session()
    machine.lock_machine(session, getattr(_library().LockType, lock))
    try:
        yield session
    finally:
        session.unlock_machine()


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
        deadline = time.monotonic() + timeout
        while is_online(machine.state) and time.monotonic() < deadline:
            _pause(1)
    power_off(vb, machine)
    wait_unlocked(machine)


def wait_unlocked(machine: Any) -> None:
    """The VM process releases its lock a moment after the machine powers off."""
    unlocked = _library().SessionState.unlocked
    deadline = time.monotonic() + UNLOCK_TIMEOUT
    while machine.session_state != unlocked and time.monotonic() < deadline:
        _pause(0.5)


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


def create_vm(props: dict[str, Any]) -> dict[str, Any]:
    vb, vbox = connect()
    lib = vb.library
    check_version(vbox.version, vbox.api_version)
    name, d = props["name"], props["instance_dir"]
    remove_leftover(vb, vbox, name, d)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d, mode=0o700)
    outs: dict[str, Any] = {**props}
    disk = dvd = None
    try:
        image = local_image(props["image"])
        iface = ensure_hostonly(vbox, props["hostonly_cidr"])
        address = lease_address(props["hostonly_cidr"], d, props.get("hostonly_ip"), dhcp_reserved(vbox, iface))
        nat_mac, hostonly_mac = macs(d)
        ssh_port = free_port()
        outs.update(
            ip=address, ssh_host="127.0.0.1", ssh_port=ssh_port, hostonly_interface=iface,
            nat_mac=nat_mac, hostonly_mac=hostonly_mac, image_resolved=image,
        )
        files = {
            "user-data": seed.user_data(name, props["ssh_user"], props["authorized_key"]),
            "meta-data": seed.meta_data(f"{name}-{secrets.token_hex(4)}", name),
            "network-config": network_config(nat_mac, hostonly_mac, address, props["hostonly_cidr"]),
        }
        with open(os.path.join(d, "seed.iso"), "wb") as f:
            f.write(seed.build_iso(files))
        disk = clone_disk(vbox, image, os.path.join(d, "disk.vdi"), props["disk"])

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


def _nic_type(option: str) -> Any:
    lib = _library()
    values = {label: value for label, value, _ in lib.NetworkAdapterType._enums}
    return lib.NetworkAdapterType(values[NIC_TYPES[option]])


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
    return {**outs, "state": state_name(machine.state)}


class VmProvider(ResourceProvider):
    # Inputs whose change needs a new VM; cpus/memory/ui_type only a power cycle.
    REPLACE_ON = (
        "name", "instance_dir", "image", "os_type", "disk", "ssh_user", "authorized_key", "hostonly_cidr",
        "hostonly_ip", "nat_nictype", "hostonly_nictype",
    )
    RESTART_ON = ("cpus", "memory", "ui_type")

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = create_vm(props)
        return CreateResult(outs["vm_id"], outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        _, vbox = connect()
        machine = find(vbox, id_)
        if machine is None:
            return ReadResult(None, {})
        return ReadResult(id_, {**props, "state": state_name(machine.state)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in self.REPLACE_ON if olds.get(k) != news.get(k)]
        restart = [k for k in self.RESTART_ON if olds.get(k) != news.get(k)]
        power = not power_matches(olds.get("state"), news.get("power", "running"))
        return DiffResult(
            changes=bool(replaces or restart or power), replaces=replaces, delete_before_replace=True
        )

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(update_vm(id_, olds, news, self.RESTART_ON))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        delete_vm(id_, props)


class Vm(pulumi.dynamic.Resource, module="virtualbox", name="Vm"):
    vm_id: pulumi.Output[str]
    ip: pulumi.Output[str]
    ssh_host: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    hostonly_interface: pulumi.Output[str]
    state: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outputs = dict.fromkeys(
            ("vm_id", "ip", "ssh_host", "ssh_port", "hostonly_interface", "nat_mac", "hostonly_mac",
             "image_resolved", "state")
        )
        super().__init__(VmProvider(), name, {**props, **outputs}, opts)


def create_host(name: str, machine: MachineConfig, ssh_key: Any, state_dir: str, opts: pulumi.ResourceOptions) -> Host:
    try:
        check_host([machine])
    except ConfigError as err:
        # One line from the CLI, no traceback (also when __main__.py has not called check_host already).
        raise pulumi.RunError(str(err)) from None
    options: Options = machine.options
    cpus = options.cpus if options.cpus > 0 else min(os.cpu_count() or 1, 32)
    vm = Vm(
        f"{name}-vm",
        {
            "name": machine.name,
            "instance_dir": os.path.join(state_dir, "virtualbox", machine.name),
            "image": options.image,
            "os_type": options.os_type,
            "cpus": cpus,
            "memory": options.memory,
            "disk": options.disk,
            "ssh_user": options.ssh_user,
            "authorized_key": ssh_key.public_key,
            "hostonly_cidr": options.hostonly_cidr,
            "hostonly_ip": options.hostonly_ip,
            "nat_nictype": options.nat_nictype,
            "hostonly_nictype": options.hostonly_nictype,
            "ui_type": options.ui_type,
            "power": machine.state,
        },
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="30m"))
        ),
    )
    return Host(
        ssh_host=vm.ssh_host,
        ssh_port=vm.ssh_port,
        ssh_user=options.ssh_user,
        ssh_private_key=ssh_key.private_key,
        address=vm.ip,
        engine_port=machine.engine.port,
        ready=vm,
    )
