"""An in-memory VirtualBox 6.1 behind a fake ``vboxapi``, so the real pyvbox runs against it.

The driver talks to pyvbox (``import virtualbox``); pyvbox talks to VirtualBox through ``vboxapi``'s
XPCOM objects: camelCase methods and attributes, integers for enums, and ``xpcom.Exception``-like
errors carrying an ``errno`` that pyvbox turns into ``VBoxErrorObjectNotFound`` & co. This module
fakes that bottom layer, so pyvbox's own argument checks, enum wrapping and error mapping are
exercised for real, and the fake only has to be faithful to VirtualBox's documented behaviour:

* machines: createMachine → mutable until registerMachine; afterwards changes need a write lock
  (``lockMachine`` + ``session.machine`` + ``saveSettings``); media only attach to registered machines;
  ``launchVMProcess`` needs an unlocked machine and session; the VM process holds the machine locked
  while it runs and releases it a moment after power off; ``unregister`` refuses a locked machine;
  ``deleteConfig`` refuses a registered one and deletes the settings and the returned media files;
* states (6.1 numbering): PoweredOff, Saved, Aborted, Running, Paused…; the ACPI power button powers
  off only a guest that honours it; powerDown works from any online state;
* media: openMedium finds existing files (and returns the already opened medium), createMedium +
  cloneToBase write the target, resize only grows, close refuses attached media;
* host-only networking: interfaces vboxnetN, ``enableStaticIPConfig`` refused outside the ranges
  VirtualBox >= 6.1.28 allows (192.168.56.0/21 unless /etc/vbox/networks.conf widens it), DHCP servers
  found by network name.

Every COM call and attribute write is logged in ``World.calls`` as ``"IInterface.method"`` (writes as
``"IInterface.attribute="``) with its arguments, so tests assert the calls and their order.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import types
import uuid
from dataclasses import dataclass, field
from typing import Any

# --- VirtualBox 6.1 constants (VirtualBox.xidl of 6.1; pyvbox 2.1.1's library.py is generated from it) ----------

S_OK = 0
E_ACCESSDENIED = 0x80070005
E_INVALIDARG = 0x80070057
E_UNEXPECTED = 0x8000FFFF
VBOX_E_OBJECT_NOT_FOUND = 0x80BB0001
VBOX_E_INVALID_VM_STATE = 0x80BB0002
VBOX_E_FILE_ERROR = 0x80BB0004
VBOX_E_IPRT_ERROR = 0x80BB0005
VBOX_E_INVALID_OBJECT_STATE = 0x80BB0007
VBOX_E_NOT_SUPPORTED = 0x80BB0009
VBOX_E_INVALID_SESSION_STATE = 0x80BB000B
VBOX_E_OBJECT_IN_USE = 0x80BB000C


class MachineState:
    Null, PoweredOff, Saved, Teleported, Aborted, Running, Paused, Stuck = range(8)
    Starting, Stopping, Saving, Restoring = 10, 11, 12, 13
    FirstOnline, LastOnline = 5, 18


class SessionState:
    Null, Unlocked, Locked, Spawning, Unlocking = range(5)


class LockType:
    Null, Shared, Write, VM = range(4)


class CleanupMode:
    UnregisterOnly, DetachAllReturnNone, DetachAllReturnHardDisksOnly, Full = 1, 2, 3, 4


class DeviceType:
    Null, Floppy, DVD, HardDisk = 0, 1, 2, 3


class AccessMode:
    ReadOnly, ReadWrite = 1, 2


class StorageBus:
    Null, IDE, SATA = 0, 1, 2


class NetworkAttachmentType:
    Null, NAT, Bridged, Internal, HostOnly = range(5)


class NetworkAdapterType:
    Null, Am79C970A, Am79C973, I82540EM, I82543GC, I82545EM, Virtio = range(7)


class NATProtocol:
    UDP, TCP = 0, 1


class HostNetworkInterfaceType:
    Bridged, HostOnly = 1, 2


class MediumState:
    NotCreated, Created = 0, 1


OS_TYPES = {"Ubuntu_64", "Debian_64", "Linux26_64", "Linux_64", "Other_64", "Fedora_64", "RedHat_64"}
FRONTENDS = {"", "headless", "gui", "sdl", "separate"}


def signed(hresult: int) -> int:
    """HRESULTs arrive from XPCOM as signed 32-bit integers."""
    return hresult - (1 << 32) if hresult & 0x80000000 else hresult


class XPCOMError(Exception):
    """Like ``xpcom.Exception``: pyvbox reads ``errno`` (and ``msg``) to pick its VBoxError subclass."""

    def __init__(self, errno: int, msg: str):
        super().__init__(errno, msg)
        self.errno = errno
        self.msg = msg


def label(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [label(v) for v in value]
    return value._label() if hasattr(value, "_label") else value


# --- the world --------------------------------------------------------------------------------------------


@dataclass
class World:
    """One host with VirtualBox installed; tests tweak its attributes to stage situations."""

    version: str = "6.1.50"
    api_version: str = "6_1"
    # Ranges VirtualBox allows for host-only interfaces (None: any, as before 6.1.28 or with networks.conf).
    hostonly_allowed: list[ipaddress.IPv4Network] | None = field(
        default_factory=lambda: [ipaddress.IPv4Network("192.168.56.0/21")]
    )
    acpi_honoured: bool = True  # whether the guest powers off on the ACPI power button
    session_unlock_lag: int = 2  # sessionState reads before a powered-off VM's lock is released
    launch_error: str | None = None  # e.g. "VT-x is not available (VERR_VMX_NO_VMX)"
    image_sizes: dict[str, int] = field(default_factory=dict)  # logical size of image files by path
    calls: list[tuple[str, tuple]] = field(default_factory=list)
    machines: dict[str, MachineData] = field(default_factory=dict)
    media: dict[str, Medium] = field(default_factory=dict)
    host_interfaces: list[HostNetworkInterface] = field(default_factory=list)
    dhcp_servers: dict[str, DHCPServer] = field(default_factory=dict)
    threads_attached: int = 0

    def __post_init__(self):
        self.host_interfaces.append(HostNetworkInterface(self, "lo", "127.0.0.1", "255.0.0.0", 1))
        self.host_interfaces.append(HostNetworkInterface(self, "eth0", "10.0.2.15", "255.255.255.0", 1))
        self.vbox = VirtualBox(self)

    def log(self, name: str, *args: Any) -> None:
        self.calls.append((name, tuple(label(a) for a in args)))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> list[tuple]:
        return [args for n, args in self.calls if n == name]

    # Staging helpers.
    def add_interface(self, name: str, ip: str, mask: str, host_only: bool = False) -> HostNetworkInterface:
        kind = HostNetworkInterfaceType.HostOnly if host_only else HostNetworkInterfaceType.Bridged
        iface = HostNetworkInterface(self, name, ip, mask, kind)
        self.host_interfaces.append(iface)
        return iface

    def add_dhcp_server(self, iface: str, ip: str, mask: str, lower: str, upper: str, enabled: bool = True):
        name = f"HostInterfaceNetworking-{iface}"
        self.dhcp_servers[name] = DHCPServer(self, name, ip, mask, lower, upper, enabled)

    def add_vm(self, name: str, settings_dir: str, state: int = MachineState.PoweredOff) -> MachineData:
        """A VM registered by someone else (or a leftover), with its settings file on disk."""
        data = MachineData(self, name, os.path.join(settings_dir, f"{name}.vbox"), "Ubuntu_64")
        data.write_settings()
        data.registered = True
        data.state = state
        data.online = MachineState.FirstOnline <= state <= MachineState.LastOnline
        self.machines[data.uuid] = data
        return data

    def machine_named(self, name: str) -> MachineData:
        (found,) = [m for m in self.machines.values() if m.name == name]
        return found


def fail(errno: int, msg: str) -> XPCOMError:
    return XPCOMError(errno, msg)


class Progress:
    def __init__(self, world: World, what: str, error: tuple[int, str] | None = None):
        self.world = world
        self.what = what
        self.completed = True
        self.canceled = False
        self.percent = 100
        self.operation, self.operationCount, self.operationDescription, self.timeRemaining = 1, 1, what, 0
        self.resultCode = signed(error[0]) if error else S_OK
        self.errorInfo = ErrorInfo(error[0], error[1]) if error else None

    def _label(self):
        return f"progress:{self.what}"

    def waitForCompletion(self, timeout):  # noqa: N802 - COM name
        self.world.log("IProgress.waitForCompletion", self.what, timeout)


class ErrorInfo:
    def __init__(self, hresult: int, text: str):
        self.resultCode = signed(hresult)
        self.text = text
        self.component = "VirtualBoxWrap"
        self.next = None


# --- media ---------------------------------------------------------------------------------------------------

FORMATS = {".vdi": "VDI", ".vmdk": "VMDK", ".vhd": "VHD", ".iso": "RAW"}


class Medium:
    def __init__(self, world: World, location: str, fmt: str, device_type: int, state: int, logical: int = 0):
        self.world = world
        self.id = str(uuid.uuid4())
        self.location = location
        self.format = fmt
        self.deviceType = device_type
        self.state = state
        self.logicalSize = logical
        self.size = logical
        self.attached_to: set[str] = set()  # machine uuids

    def _label(self):
        return os.path.basename(self.location)

    def cloneToBase(self, target, variant):  # noqa: N802
        self.world.log("IMedium.cloneToBase", self, target, variant)
        if self.state != MediumState.Created:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, f"Medium '{self.location}' is not created")
        if target.state != MediumState.NotCreated:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, f"Storage for the medium '{target.location}' is already created")
        os.makedirs(os.path.dirname(target.location), exist_ok=True)
        with open(target.location, "wb") as f:
            f.write(b"<<< Oracle VM VirtualBox Disk Image >>>\n")
        target.state = MediumState.Created
        target.logicalSize = target.size = self.logicalSize
        return Progress(self.world, "cloneToBase")

    def resize(self, logical_size):
        self.world.log("IMedium.resize", self, logical_size)
        if self.state != MediumState.Created:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, f"Medium '{self.location}' is not created")
        if logical_size < self.logicalSize:
            return Progress(
                self.world,
                "resize",
                (VBOX_E_NOT_SUPPORTED, f"Shrinking is not yet supported for medium '{self.location}'"),
            )
        self.logicalSize = logical_size
        return Progress(self.world, "resize")

    def close(self):
        self.world.log("IMedium.close", self)
        if self.attached_to:
            raise fail(
                VBOX_E_OBJECT_IN_USE,
                f"Medium '{self.location}' cannot be closed because it is still attached to "
                f"{len(self.attached_to)} virtual machines",
            )
        self.world.media.pop(self.location, None)

    def deleteStorage(self):  # noqa: N802
        self.world.log("IMedium.deleteStorage", self)
        if self.attached_to:
            raise fail(VBOX_E_OBJECT_IN_USE, f"Cannot delete storage: medium '{self.location}' is still attached")
        self._delete()
        return Progress(self.world, "deleteStorage")

    def _delete(self):
        if os.path.exists(self.location):
            os.remove(self.location)
        self.state = MediumState.NotCreated
        self.world.media.pop(self.location, None)


# --- host networking -----------------------------------------------------------------------------------------


class HostNetworkInterface:
    def __init__(self, world: World, name: str, ip: str, mask: str, kind: int):
        self.world = world
        self.name = name
        self.id = str(uuid.uuid4())
        self.IPAddress = ip
        self.networkMask = mask
        self.interfaceType = kind
        self.networkName = f"HostInterfaceNetworking-{name}"
        self.status = 1
        self.DHCPEnabled = False

    def _label(self):
        return self.name

    def enableStaticIPConfig(self, ip_address, network_mask):  # noqa: N802
        self.world.log("IHostNetworkInterface.enableStaticIPConfig", self, ip_address, network_mask)
        if self.interfaceType != HostNetworkInterfaceType.HostOnly:
            raise fail(E_ACCESSDENIED, "Access denied")
        network = ipaddress.IPv4Interface(f"{ip_address}/{network_mask}").network
        allowed = self.world.hostonly_allowed
        if allowed is not None and not any(network.subnet_of(a) for a in allowed):
            # What VirtualBox >= 6.1.28 answers outside /etc/vbox/networks.conf's ranges.
            raise fail(E_ACCESSDENIED, "Access denied (extended info not available)")
        self.IPAddress, self.networkMask = ip_address, network_mask


class DHCPServer:
    def __init__(self, world, name, ip, mask, lower, upper, enabled):
        self.world = world
        self.networkName = name
        self.IPAddress, self.networkMask, self.lowerIP, self.upperIP = ip, mask, lower, upper
        self.enabled = enabled


class Host:
    def __init__(self, world: World):
        self.world = world

    @property
    def networkInterfaces(self):  # noqa: N802
        return list(self.world.host_interfaces)

    def findHostNetworkInterfacesOfType(self, type_p):  # noqa: N802
        self.world.log("IHost.findHostNetworkInterfacesOfType", type_p)
        return [i for i in self.world.host_interfaces if i.interfaceType == type_p]

    def createHostOnlyNetworkInterface(self):  # noqa: N802
        self.world.log("IHost.createHostOnlyNetworkInterface")
        taken = {i.name for i in self.world.host_interfaces}
        n = next(n for n in range(128) if f"vboxnet{n}" not in taken)
        iface = HostNetworkInterface(
            self.world, f"vboxnet{n}", f"192.168.{56 + n}.1", "255.255.255.0", HostNetworkInterfaceType.HostOnly
        )
        self.world.host_interfaces.append(iface)
        # XPCOM returns (retval, out): pyvbox's IHost extension swaps them back.
        return Progress(self.world, "createHostOnlyNetworkInterface"), iface

    def removeHostOnlyNetworkInterface(self, id_p):  # noqa: N802
        self.world.log("IHost.removeHostOnlyNetworkInterface", id_p)
        matches = [i for i in self.world.host_interfaces if i.id == id_p]
        if not matches:
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Host network interface with ID {{{id_p}}} could not be found")
        self.world.host_interfaces.remove(matches[0])
        return Progress(self.world, "removeHostOnlyNetworkInterface")


# --- machines --------------------------------------------------------------------------------------------------


@dataclass
class Adapter:
    slot: int
    enabled: bool = False
    attachment: int = NetworkAttachmentType.Null
    host_only_interface: str = ""
    adapter_type: int = NetworkAdapterType.I82540EM
    mac: str = ""
    cable: bool = True
    dns_proxy: bool = False
    redirects: list[str] = field(default_factory=list)


class MachineData:
    """What VirtualBox keeps about one machine; the COM objects below are views of it."""

    def __init__(self, world: World, name: str, settings_file: str, os_type: str):
        self.world = world
        self.uuid = str(uuid.uuid4())
        self.name = name
        self.settings_file = settings_file
        self.os_type = os_type
        self.memory = 128
        self.cpus = 1
        self.rtc_utc = False
        self.acpi = True
        self.ioapic = False
        self.boot_order = [DeviceType.Floppy, DeviceType.DVD, DeviceType.HardDisk, 4]  # 4: Network
        self.registered = False
        self.state = MachineState.PoweredOff
        self.online = False  # the VM process holds the machine's lock
        self.unlock_lag = 0
        self.sessions: list[Session] = []
        self.controllers: dict[str, int] = {}
        self.attachments: dict[tuple[str, int, int], tuple[int, Medium]] = {}
        self.adapters = [Adapter(slot) for slot in range(8)]
        self.shared_folders: dict[str, SharedFolder] = {}

    def locked(self) -> bool:
        return bool(self.sessions) or self.online or self.unlock_lag > 0

    def write_settings(self):
        os.makedirs(os.path.dirname(self.settings_file), exist_ok=True)
        with open(self.settings_file, "w") as f:
            f.write(f'<VirtualBox><Machine uuid="{{{self.uuid}}}" name="{self.name}"/></VirtualBox>\n')

    def power_off(self):
        self.state = MachineState.PoweredOff
        self.online = False
        self.unlock_lag = self.world.session_unlock_lag


class Machine:
    """IMachine: ``kind`` is "new" (createMachine: mutable until registered), "plain" (findMachine:
    read-only) or "session" (``session.machine`` of a write lock: mutable while the lock is held)."""

    def __init__(self, data: MachineData, kind: str, session: Session | None = None):
        self._data = data
        self._kind = kind
        self._session = session

    def _label(self):
        return self._data.name

    @property
    def _world(self) -> World:
        return self._data.world

    def _mutable(self) -> bool:
        if self._kind == "new":
            return not self._data.registered
        if self._kind == "session":
            session = self._session
            return session is not None and session.state == SessionState.Locked and session.lock_type == LockType.Write
        return False

    def _require_mutable(self, what: str):
        if not self._mutable():
            raise fail(
                VBOX_E_INVALID_VM_STATE,
                f"The machine is not mutable (state is {self._data.state}) while setting {what}",
            )

    def _set(self, what: str, value: Any):
        self._world.log(f"IMachine.{what}=", value)
        self._require_mutable(what)

    # Attributes.
    id = property(lambda self: self._data.uuid)
    name = property(lambda self: self._data.name)
    settingsFilePath = property(lambda self: self._data.settings_file)  # noqa: N815
    OSTypeId = property(lambda self: self._data.os_type)  # noqa: N815
    state = property(lambda self: self._data.state)

    @property
    def sessionState(self):  # noqa: N802
        data = self._data
        if data.sessions or data.online:
            return SessionState.Locked
        if data.unlock_lag > 0:
            data.unlock_lag -= 1
            return SessionState.Unlocking
        return SessionState.Unlocked

    @property
    def memorySize(self):  # noqa: N802
        return self._data.memory

    @memorySize.setter
    def memorySize(self, value):  # noqa: N802
        self._set("memorySize", value)
        if self._data.state == MachineState.Saved:
            raise fail(VBOX_E_INVALID_VM_STATE, "The machine is in saved state")
        if not 4 <= value <= 2097152:
            raise fail(E_INVALIDARG, f"Invalid RAM size: {value} MB (must be in range [4, 2097152] MB)")
        self._data.memory = value

    @property
    def CPUCount(self):  # noqa: N802
        return self._data.cpus

    @CPUCount.setter
    def CPUCount(self, value):  # noqa: N802
        self._set("CPUCount", value)
        if self._data.state == MachineState.Saved:
            raise fail(VBOX_E_INVALID_VM_STATE, "The machine is in saved state")
        if not 1 <= value <= 32:
            raise fail(E_INVALIDARG, f"Invalid virtual CPU count: {value} (must be in range [1, 32])")
        self._data.cpus = value

    @property
    def RTCUseUTC(self):  # noqa: N802
        return self._data.rtc_utc

    @RTCUseUTC.setter
    def RTCUseUTC(self, value):  # noqa: N802
        self._set("RTCUseUTC", value)
        self._data.rtc_utc = value

    @property
    def BIOSSettings(self):  # noqa: N802
        return BIOSSettings(self)

    # Methods.
    def setBootOrder(self, position, device):  # noqa: N802
        self._world.log("IMachine.setBootOrder", self, position, device)
        self._require_mutable("boot order")
        if not 1 <= position <= 4:
            raise fail(E_INVALIDARG, f"Invalid boot position: {position} (must be in range [1, 4])")
        if device not in (DeviceType.Null, DeviceType.Floppy, DeviceType.DVD, DeviceType.HardDisk, 4):
            raise fail(E_INVALIDARG, f"Booting from device type {device} is not supported")
        self._data.boot_order[position - 1] = device

    def saveSettings(self):  # noqa: N802
        self._world.log("IMachine.saveSettings", self)
        self._require_mutable("settings")
        if self._data.registered:
            self._data.write_settings()

    def addStorageController(self, name, connection_type):  # noqa: N802
        self._world.log("IMachine.addStorageController", self, name, connection_type)
        self._require_mutable("storage controllers")
        if name in self._data.controllers:
            raise fail(VBOX_E_OBJECT_IN_USE, f"Storage controller named '{name}' already exists")
        self._data.controllers[name] = connection_type
        return StorageController(name, connection_type)

    @property
    def sharedFolders(self):  # noqa: N802
        return list(self._data.shared_folders.values())

    def createSharedFolder(self, name, host_path, writable, automount, auto_mount_point):  # noqa: N802
        # VirtualBox's Machine::createSharedFolder: a mutable machine, a unique name, an absolute host path.
        self._world.log("IMachine.createSharedFolder", self, name, host_path, writable, automount, auto_mount_point)
        self._require_mutable("shared folders")
        if name in self._data.shared_folders:
            raise fail(VBOX_E_OBJECT_IN_USE, f"Shared folder named '{name}' already exists")
        if not os.path.isabs(host_path):
            raise fail(E_INVALIDARG, f"Shared folder path '{host_path}' is not absolute")
        self._data.shared_folders[name] = SharedFolder(name, host_path, writable, automount, auto_mount_point)

    def removeSharedFolder(self, name):  # noqa: N802
        self._world.log("IMachine.removeSharedFolder", self, name)
        self._require_mutable("shared folders")
        if self._data.shared_folders.pop(name, None) is None:
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a shared folder named '{name}'")

    def getNetworkAdapter(self, slot):  # noqa: N802
        self._world.log("IMachine.getNetworkAdapter", self, slot)
        if not 0 <= slot < len(self._data.adapters):
            raise fail(E_INVALIDARG, f"Invalid slot number: {slot} (must be in range [0, 7])")
        return NetworkAdapter(self, self._data.adapters[slot])

    def attachDevice(self, name, controller_port, device, type_p, medium):  # noqa: N802
        self._world.log("IMachine.attachDevice", self, name, controller_port, device, type_p, medium)
        data = self._data
        if not data.registered:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, "Machine must be registered before media can be attached")
        self._require_mutable("attachments")
        if name not in data.controllers:
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a storage controller named '{name}'")
        if not 0 <= controller_port < 30 or device != 0:
            raise fail(E_INVALIDARG, f"Invalid port {controller_port} / device {device}")
        if (name, controller_port, device) in data.attachments:
            raise fail(VBOX_E_OBJECT_IN_USE, f"Medium already attached to port {controller_port} of '{name}'")
        if medium.deviceType != type_p:
            raise fail(E_INVALIDARG, f"The medium '{medium.location}' is of a different device type")
        if type_p == DeviceType.HardDisk and medium.attached_to - {data.uuid}:
            raise fail(VBOX_E_OBJECT_IN_USE, f"Medium '{medium.location}' is already attached to another machine")
        data.attachments[(name, controller_port, device)] = (type_p, medium)
        medium.attached_to.add(data.uuid)

    def discardSavedState(self, f_remove_file):  # noqa: N802
        self._world.log("IMachine.discardSavedState", self, f_remove_file)
        self._require_mutable("saved state")
        if self._data.state != MachineState.Saved:
            raise fail(VBOX_E_INVALID_VM_STATE, "Cannot discard the saved state as the machine is not in saved state")
        self._data.state = MachineState.PoweredOff

    def lockMachine(self, session, lock_type):  # noqa: N802
        self._world.log("IMachine.lockMachine", self, session, lock_type)
        data = self._data
        if not data.registered:
            raise fail(E_UNEXPECTED, "Virtual machine not registered")
        if session.state != SessionState.Unlocked:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, "Session already open or being opened")
        if lock_type == LockType.Shared and not data.online and not data.sessions:
            lock_type = LockType.Write  # nobody holds the machine: a shared request gets the write lock
        if lock_type == LockType.Write and data.locked():
            raise fail(
                VBOX_E_INVALID_OBJECT_STATE,
                f"The machine '{data.name}' is already locked for a session (or being unlocked)",
            )
        session._lock(data, lock_type)

    def launchVMProcess(self, session, name, environment_changes):  # noqa: N802
        self._world.log("IMachine.launchVMProcess", self, session, name, environment_changes)
        data = self._data
        if not data.registered:
            raise fail(E_UNEXPECTED, "Virtual machine not registered")
        if name not in FRONTENDS:
            raise fail(E_INVALIDARG, f"Invalid frontend name: '{name}'")
        if session.state != SessionState.Unlocked:
            raise fail(VBOX_E_INVALID_OBJECT_STATE, "Session already open or being opened")
        if data.locked():
            raise fail(
                VBOX_E_INVALID_OBJECT_STATE,
                f"The machine '{data.name}' is already locked by a session (or being locked or unlocked)",
            )
        offline = (MachineState.PoweredOff, MachineState.Saved, MachineState.Aborted, MachineState.Teleported)
        if data.state not in offline:
            raise fail(VBOX_E_INVALID_VM_STATE, f"The machine '{data.name}' is already running")
        if data.cpus > 1 and not data.ioapic:
            return Progress(self._world, "launchVMProcess", (E_UNEXPECTED, "IO-APIC must be enabled for SMP guests"))
        if self._world.launch_error:
            data.unlock_lag = 0
            return Progress(self._world, "launchVMProcess", (E_UNEXPECTED, self._world.launch_error))
        data.state = MachineState.Running
        data.online = True
        session._lock(data, LockType.Shared, remote=True)
        return Progress(self._world, "launchVMProcess")

    def unregister(self, cleanup_mode):
        self._world.log("IMachine.unregister", self, cleanup_mode)
        data = self._data
        if not data.registered:
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"The machine '{data.name}' is not registered")
        if data.locked():
            raise fail(
                VBOX_E_INVALID_OBJECT_STATE, f"Cannot unregister the machine '{data.name}' while it is locked"
            )
        if cleanup_mode == CleanupMode.UnregisterOnly and (data.attachments or data.state == MachineState.Saved):
            raise fail(VBOX_E_INVALID_OBJECT_STATE, f"Cannot unregister the machine '{data.name}': it has media")
        returned = []
        for (_, _, _), (kind, medium) in sorted(data.attachments.items(), key=lambda kv: (kv[1][0] != 3, kv[0])):
            medium.attached_to.discard(data.uuid)
            wanted = cleanup_mode == CleanupMode.Full or (
                cleanup_mode == CleanupMode.DetachAllReturnHardDisksOnly and kind == DeviceType.HardDisk
            )
            if wanted:
                returned.append(medium)
        data.attachments.clear()
        data.registered = False
        self._world.machines.pop(data.uuid, None)
        return returned

    def deleteConfig(self, media):  # noqa: N802
        self._world.log("IMachine.deleteConfig", self, media)
        data = self._data
        if data.registered:
            raise fail(VBOX_E_INVALID_VM_STATE, "Machine is registered but not write-locked")
        for medium in media:
            if not medium.attached_to:  # shared media are silently skipped
                medium._delete()
        if os.path.exists(data.settings_file):
            os.remove(data.settings_file)
        shutil.rmtree(os.path.join(os.path.dirname(data.settings_file), "Logs"), ignore_errors=True)
        return Progress(self._world, "deleteConfig")


class BIOSSettings:
    def __init__(self, machine: Machine):
        self._machine = machine

    def _set(self, what: str, value: Any):
        self._machine._world.log(f"IBIOSSettings.{what}=", value)
        self._machine._require_mutable(what)

    @property
    def ACPIEnabled(self):  # noqa: N802
        return self._machine._data.acpi

    @ACPIEnabled.setter
    def ACPIEnabled(self, value):  # noqa: N802
        self._set("ACPIEnabled", value)
        self._machine._data.acpi = value

    @property
    def IOAPICEnabled(self):  # noqa: N802
        return self._machine._data.ioapic

    @IOAPICEnabled.setter
    def IOAPICEnabled(self, value):  # noqa: N802
        self._set("IOAPICEnabled", value)
        self._machine._data.ioapic = value


class StorageController:
    def __init__(self, name, bus):
        self.name = name
        self.bus = bus
        self.portCount = 30
        self.controllerType = 3  # IntelAhci


class SharedFolder:
    """ISharedFolder, as a machine's shared folder reads."""

    def __init__(self, name: str, host_path: str, writable: bool, automount: bool, auto_mount_point: str):
        self.name, self.hostPath, self.writable = name, host_path, writable  # noqa: N815
        self.autoMount, self.autoMountPoint = automount, auto_mount_point  # noqa: N815
        self.accessible = os.path.isdir(host_path)


class NetworkAdapter:
    def __init__(self, machine: Machine, adapter: Adapter):
        self._machine = machine
        self._a = adapter

    def _set(self, what: str, value: Any):
        self._machine._world.log(f"INetworkAdapter.{what}=", self._a.slot, value)
        self._machine._require_mutable(f"network adapter {self._a.slot}")

    slot = property(lambda self: self._a.slot)

    @property
    def enabled(self):
        return self._a.enabled

    @enabled.setter
    def enabled(self, value):
        self._set("enabled", value)
        self._a.enabled = value

    @property
    def attachmentType(self):  # noqa: N802
        return self._a.attachment

    @attachmentType.setter
    def attachmentType(self, value):  # noqa: N802
        self._set("attachmentType", value)
        self._a.attachment = value

    @property
    def hostOnlyInterface(self):  # noqa: N802
        return self._a.host_only_interface

    @hostOnlyInterface.setter
    def hostOnlyInterface(self, value):  # noqa: N802
        self._set("hostOnlyInterface", value)
        self._a.host_only_interface = value

    @property
    def adapterType(self):  # noqa: N802
        return self._a.adapter_type

    @adapterType.setter
    def adapterType(self, value):  # noqa: N802
        self._set("adapterType", value)
        self._a.adapter_type = value

    @property
    def MACAddress(self):  # noqa: N802
        return self._a.mac

    @MACAddress.setter
    def MACAddress(self, value):  # noqa: N802
        self._set("MACAddress", value)
        if len(value) != 12 or any(c not in "0123456789ABCDEFabcdef" for c in value) or int(value[1], 16) & 1:
            raise fail(E_INVALIDARG, f"Invalid MAC address format: '{value}'")
        self._a.mac = value.upper()

    @property
    def NATEngine(self):  # noqa: N802
        return NATEngine(self._machine, self._a)


class NATEngine:
    def __init__(self, machine: Machine, adapter: Adapter):
        self._machine = machine
        self._a = adapter

    @property
    def redirects(self):
        return list(self._a.redirects)

    @property
    def DNSProxy(self):  # noqa: N802
        return self._a.dns_proxy

    @DNSProxy.setter
    def DNSProxy(self, value):  # noqa: N802
        self._machine._world.log("INATEngine.DNSProxy=", self._a.slot, value)
        self._machine._require_mutable("NAT settings")
        self._a.dns_proxy = value

    def addRedirect(self, name, proto, host_ip, host_port, guest_ip, guest_port):  # noqa: N802
        self._machine._world.log("INATEngine.addRedirect", name, proto, host_ip, host_port, guest_ip, guest_port)
        self._machine._require_mutable("NAT redirects")
        for rule in self._a.redirects:
            other = rule.split(",")
            if other[0] == name:
                raise fail(E_INVALIDARG, f"A NAT rule of this name already exists: {name}")
            if other[1] == str(proto) and other[3] == str(host_port) and other[2] == host_ip:
                raise fail(E_INVALIDARG, f"A NAT rule for this host port and this host IP already exists: {host_port}")
        self._a.redirects.append(f"{name},{proto},{host_ip},{host_port},{guest_ip},{guest_port}")


# --- sessions ----------------------------------------------------------------------------------------------------


class Session:
    counter = 0

    def __init__(self, world: World):
        self.world = world
        Session.counter += 1
        self.number = Session.counter
        self.state = SessionState.Unlocked
        self.lock_type = LockType.Null
        self._data: MachineData | None = None
        self.type = 0

    def _label(self):
        return f"session#{self.number}"

    def _lock(self, data: MachineData, lock_type: int, remote: bool = False):
        self._data = data
        self.lock_type = lock_type
        self.state = SessionState.Locked
        self.type = 3 if remote else (1 if lock_type == LockType.Write else 2)
        data.sessions.append(self)

    @property
    def machine(self):
        if self._data is None or self.state != SessionState.Locked:
            return None
        return Machine(self._data, "session", self)

    @property
    def console(self):
        if self._data is None or self.state != SessionState.Locked or not self._data.online:
            return None  # only sessions of a running VM have a console
        return Console(self.world, self._data)

    def unlockMachine(self):  # noqa: N802
        self.world.log("ISession.unlockMachine", self)
        if self.state != SessionState.Locked:
            raise fail(E_UNEXPECTED, "Session is not locked (session state: Unlocked)")
        if self in self._data.sessions:
            self._data.sessions.remove(self)
        self.state = SessionState.Unlocked
        self.lock_type = LockType.Null


class Console:
    def __init__(self, world: World, data: MachineData):
        self.world = world
        self._data = data

    state = property(lambda self: self._data.state)

    def powerButton(self):  # noqa: N802
        self.world.log("IConsole.powerButton", self._data.name)
        if self._data.state != MachineState.Running:
            raise fail(VBOX_E_INVALID_VM_STATE, f"Invalid machine state: {self._data.state}")
        if self.world.acpi_honoured and self._data.acpi:
            self._data.power_off()

    def powerDown(self):  # noqa: N802
        self.world.log("IConsole.powerDown", self._data.name)
        if not self._data.online:
            raise fail(
                VBOX_E_INVALID_VM_STATE, f"Invalid machine state: {self._data.state} (must be Running, Paused or Stuck)"
            )
        self._data.power_off()
        return Progress(self.world, "powerDown")

    def pause(self):
        self.world.log("IConsole.pause", self._data.name)
        if self._data.state != MachineState.Running:
            raise fail(VBOX_E_INVALID_VM_STATE, "Invalid machine state")
        self._data.state = MachineState.Paused

    def resume(self):
        self.world.log("IConsole.resume", self._data.name)
        if self._data.state != MachineState.Paused:
            raise fail(VBOX_E_INVALID_VM_STATE, "Invalid machine state")
        self._data.state = MachineState.Running


# --- IVirtualBox and the vboxapi manager -----------------------------------------------------------------------------


class VirtualBox:
    def __init__(self, world: World):
        self.world = world
        self.host = Host(world)

    version = property(lambda self: self.world.version)
    APIVersion = property(lambda self: self.world.api_version)  # noqa: N815
    revision = 0

    @property
    def machines(self):
        return [Machine(m, "plain") for m in self.world.machines.values()]

    def createMachine(self, settings_file, name, groups, os_type_id, flags):  # noqa: N802
        self.world.log("IVirtualBox.createMachine", settings_file, name, groups, os_type_id, flags)
        if not name:
            raise fail(E_INVALIDARG, "Machine name must not be empty")
        if os_type_id not in OS_TYPES:
            raise fail(E_INVALIDARG, f"'{os_type_id}' is not a valid Guest OS type")
        taken = {m.settings_file for m in self.world.machines.values()}
        if os.path.exists(settings_file) or settings_file in taken:
            raise fail(VBOX_E_FILE_ERROR, f"Machine settings file '{settings_file}' already exists")
        return Machine(MachineData(self.world, name, settings_file, os_type_id), "new")

    def registerMachine(self, machine):  # noqa: N802
        self.world.log("IVirtualBox.registerMachine", machine)
        data = machine._data
        if data.registered or data.uuid in self.world.machines:
            raise fail(VBOX_E_OBJECT_IN_USE, f"A machine with UUID {{{data.uuid}}} is already registered")
        data.write_settings()  # registerMachine implies saveSettings
        data.registered = True
        self.world.machines[data.uuid] = data

    def findMachine(self, name_or_id):  # noqa: N802
        self.world.log("IVirtualBox.findMachine", name_or_id)
        for data in self.world.machines.values():
            if name_or_id in (data.uuid, data.name):
                return Machine(data, "plain")
        raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a registered machine named '{name_or_id}'")

    def openMedium(self, location, device_type, access_mode, force_new_uuid):  # noqa: N802
        self.world.log("IVirtualBox.openMedium", location, device_type, access_mode, force_new_uuid)
        known = self.world.media.get(location)
        if known is not None:
            if known.deviceType != device_type:
                raise fail(VBOX_E_OBJECT_IN_USE, f"Medium '{location}' is already open with another device type")
            return known
        if not os.path.isfile(location):
            raise fail(VBOX_E_FILE_ERROR, f"Could not find file for the medium '{location}' (VERR_FILE_NOT_FOUND)")
        fmt = FORMATS.get(os.path.splitext(location)[1].lower())
        if fmt is None or (device_type == DeviceType.DVD) != (fmt == "RAW"):
            raise fail(
                VBOX_E_IPRT_ERROR, f"Could not get the storage format of the medium '{location}' (VERR_NOT_SUPPORTED)"
            )
        size = self.world.image_sizes.get(location, os.path.getsize(location))
        medium = Medium(self.world, location, fmt, device_type, MediumState.Created, size)
        self.world.media[location] = medium
        return medium

    def createMedium(self, format_p, location, access_mode, a_device_type_type):  # noqa: N802
        self.world.log("IVirtualBox.createMedium", format_p, location, access_mode, a_device_type_type)
        if format_p not in ("VDI", "VMDK", "VHD"):
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Invalid medium storage format '{format_p}'")
        if os.path.exists(location) or location in self.world.media:
            raise fail(VBOX_E_FILE_ERROR, f"Cannot create the medium storage unit '{location}': it already exists")
        medium = Medium(self.world, location, format_p, a_device_type_type, MediumState.NotCreated)
        self.world.media[location] = medium
        return medium

    def findDHCPServerByNetworkName(self, name):  # noqa: N802
        self.world.log("IVirtualBox.findDHCPServerByNetworkName", name)
        server = self.world.dhcp_servers.get(name)
        if server is None:
            raise fail(VBOX_E_OBJECT_NOT_FOUND, f"Could not find a DHCP server named '{name}'")
        return server


def vboxapi_module(world: World) -> types.ModuleType:
    """A stand-in for the VirtualBox SDK's ``vboxapi`` package, bound to ``world``."""

    class VirtualBoxManager:
        def __init__(self, style=None, params=None):
            self.style, self.params = style, params

        def getVirtualBox(self):  # noqa: N802
            return world.vbox

        def getSessionObject(self, vbox=None):  # noqa: N802
            return Session(world)

        def initPerThread(self):  # noqa: N802
            world.threads_attached += 1

        def deinitPerThread(self):  # noqa: N802
            pass

        def getBinDir(self):  # noqa: N802
            return "/usr/lib/virtualbox"

    module = types.ModuleType("vboxapi")
    module.VirtualBoxManager = VirtualBoxManager
    return module


def install(monkeypatch, world: World | None) -> World | None:
    """Make ``import vboxapi`` give the fake bound to ``world`` (None: vboxapi is not installed)."""
    import virtualbox

    monkeypatch.setitem(sys.modules, "vboxapi", vboxapi_module(world) if world is not None else None)
    # pyvbox keeps one vboxapi manager per process: each test gets its own registry of them.
    monkeypatch.setattr(virtualbox, "_managers", {})
    return world
