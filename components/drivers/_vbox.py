"""VirtualBox's API as the virtualbox driver uses it (pyvbox, VirtualBox 6.1): connecting, media, the host-only
network and the addresses we hand out on it, machine states. Not a driver (its name starts with ``_``); see
``virtualbox.py``."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

from components import cloudinit
from components.drivers._local.leases import claim_lease, release_lease
from components.drivers._local.paths import cache_root, state_root
from components.drivers._local.shares import fstab_line

# VirtualBox >= 6.1.28 on Linux and macOS refuses host-only addresses outside this range unless
# /etc/vbox/networks.conf allows more (docker-machine's 192.168.99.1/24 default broke with it).
HOSTONLY_ALLOWED = ipaddress.IPv4Network("192.168.56.0/21")
DEFAULT_HOSTONLY_CIDR = "192.168.56.1/24"  # VirtualBox's own default (vboxnet0)
# pyvbox 2.1.1 is generated from the VirtualBox 6.1 XIDL: its enums and method signatures are 6.1's.
SUPPORTED_API = (6, 1)
# docker-machine's --virtualbox-*-nictype values → VirtualBox's NetworkAdapterType labels.
NIC_TYPES = {
    "82540EM": "I82540EM",
    "82543GC": "I82543GC",
    "82545EM": "I82545EM",
    "Am79C970A": "Am79C970A",
    "Am79C973": "Am79C973",
    "virtio": "Virtio",
}
INSTALL_HINT = (
    "install VirtualBox 6.1 and its SDK, then the SDK's Python bindings into the project's virtualenv: "
    "`cd VirtualBoxSDK/sdk/installer && VBOX_INSTALL_PATH=/usr/lib/virtualbox <project>/.venv/bin/python "
    "vboxapisetup.py install` (or create .venv with --system-site-packages where your VirtualBox package "
    "installed vboxapi system-wide)"
)


class VBoxUnavailable(RuntimeError):
    """VirtualBox or its Python API cannot be used here; the message says what to install."""


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


def wait(progress: Any, what: str) -> None:
    progress.wait_for_completion(-1)
    if progress.result_code != 0:
        info = progress.error_info
        text = info.text if info is not None else ""
        raise RuntimeError(f"{what} failed: {text or hex(progress.result_code & 0xFFFFFFFF)}")


_image_lock = threading.Lock()


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


def _nic_type(option: str) -> Any:
    lib = _library()
    values = {label: value for label, value, _ in lib.NetworkAdapterType._enums}
    return lib.NetworkAdapterType(values[NIC_TYPES[option]])


# --- addresses on the host-only network ------------------------------------------------------------------


def _lease_dir(network: ipaddress.IPv4Network) -> str:
    return os.path.join(state_root(), "virtualbox", "hostonly", str(network).replace("/", "_"))


def lease_address(cidr: str, owner: str, wanted: str | None, reserved: set[ipaddress.IPv4Address]) -> str:
    """Reserve a host-only address for ``owner`` (shared by every stack on this host)."""
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
    release_lease(_lease_dir(parse_hostonly_cidr(cidr)[1]), address, owner)


def macs(instance_dir: str) -> tuple[str, str]:
    """Two stable MACs under VirtualBox's OUI 08:00:27, in VirtualBox's notation (12 hex digits)."""
    digest = hashlib.sha256(instance_dir.encode()).hexdigest().upper()
    return "080027" + digest[:6], "080027" + digest[6:12]


def colon_mac(mac: str) -> str:
    return ":".join(mac[i : i + 2] for i in range(0, 12, 2)).lower()


def network_config(nat_mac: str, hostonly_mac: str, address: str, cidr: str) -> str:
    """cloud-init network-config v2: DHCP on the NAT NIC (its default route), the static host-only address."""
    network = str(parse_hostonly_cidr(cidr)[1])
    return cloudinit.network_config({
        "nat": cloudinit.ethernet(colon_mac(nat_mac), dhcp=True),
        "hostonly": cloudinit.ethernet(colon_mac(hostonly_mac), address=address, cidr=network),
    })  # fmt: skip


# --- shared folders ------------------------------------------------------------------------------------------------


def share_folders(machine: Any, mounts: list[dict[str, Any]]) -> None:
    """The machine's shared folders are exactly ``mounts`` (named mount0…); the guest mounts them itself (fstab)."""
    for folder in machine.shared_folders:
        machine.remove_shared_folder(folder.name)
    for index, mount in enumerate(mounts):
        machine.create_shared_folder(f"mount{index}", mount["path"], bool(mount["writable"]), False, "")


def guest_table(mounts: list[dict[str, Any]]) -> list[str]:
    """vboxsf (in Linux since 5.6): the host user's files belong to the SSH user, as with docker-machine's /Users."""
    return [fstab_line(f"mount{index}", mount["path"], "vboxsf",
                       ["rw" if mount["writable"] else "ro", "uid=1000", "gid=1000"])
            for index, mount in enumerate(mounts)]  # fmt: skip
