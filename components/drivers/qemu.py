"""QEMU driver: one local VM per machine, owned by a Python dynamic provider (docs/local-vms.md).

The VM is a qcow2 overlay on a cached base image, a cloud-init NoCloud seed (user, SSH key, hostname), and a
daemonized qemu with a pidfile, a QMP socket and a serial log, all in one instance directory. Hardware acceleration
is used only where it really works (/dev/kvm usable *and* vmx/svm in /proc/cpuinfo); otherwise TCG. Networking is
user-mode with free 127.0.0.1 port forwards (no root; published container ports follow through the port
forwarder, components/portforward.py), or a tap on a host bridge giving the VM its own address (root). A user-mode VM
may also have a second NIC on the stack's private network, where the stack's VMs reach each other (no root either:
components/drivers/_private.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
from collections.abc import Sequence
from typing import Any, Literal

import pulumi
from pulumi.dynamic import CreateResult, ReadResult, UpdateResult
from pydantic import Field, ValidationInfo, field_validator, model_validator

from components import outputs, seed
from components.drivers import _bridge, _private
from components.drivers._local import (
    LocalVm,
    LocalVmProvider,
    boot_token,
    download,
    free_port,
    pid_alive,
    read_pid,
    run,
    settle,
    vm_host,
)  # fmt: skip
from components.drivers.base import BaseDriver, DriverContext, Host, PortForwarding
from components.errors import StepError
from components.model import ConfigError, MachineConfig, StrictModel

# Built by scripts/build-image into the cache; the default is Debian 13 with Docker pre-installed.
BUILTIN_IMAGES = ("debian-13-docker", "debian-13", "debian-12-docker", "debian-12")
GUEST_SSH_PORT = 22
POWERDOWN_TIMEOUT = 90
NETDEV = "n0"
PRIVATE_NETDEV = "n1"
_FORWARD_RE = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")


class Files:
    """The instance directory of one VM."""

    def __init__(self, instance_dir: str):
        self.dir = instance_dir
        self.disk = os.path.join(instance_dir, "disk.qcow2")
        self.seed = os.path.join(instance_dir, "seed.iso")
        self.pid = os.path.join(instance_dir, "qemu.pid")
        self.qmp = os.path.join(instance_dir, "qmp.sock")
        self.serial = os.path.join(instance_dir, "serial.log")
        # The port forwarder's pidfile, log and report (components/portforward.py).
        self.forwarder_pid = os.path.join(instance_dir, "forwarder.pid")
        self.forwarder_log = os.path.join(instance_dir, "forwarder.log")
        self.forwards = os.path.join(instance_dir, "forwards.json")
        # The NIC on the stack's private network receives here.
        self.l2 = os.path.join(instance_dir, "l2.sock")


def parse_forward(value: str) -> tuple[int, int, str]:
    """``HOST:GUEST[/tcp|udp]`` → (host port, guest port, protocol)."""
    match = _FORWARD_RE.match(value)
    if not match:
        raise ValueError(f"forward {value!r} must look like HOST:GUEST or HOST:GUEST/udp (e.g. 8443:443)")
    host, guest, protocol = int(match[1]), int(match[2]), match[3] or "tcp"
    for port in (host, guest):
        if not 1 <= port <= 65535:
            raise ValueError(f"forward {value!r}: port {port} is out of range 1-65535")
    return host, guest, protocol


class Options(StrictModel):
    cpus: int = Field(2, ge=1, le=64)
    memory: int = Field(2048, ge=256, le=1048576, description="MiB")
    disk: int = Field(20000, ge=4096, le=16777216, description="MiB, docker-machine's default 20000")
    image: str = Field("debian-13-docker", description="built-in name, a path, or an http(s) URL")
    kernel: str | None = Field(None, description="for images without a bootloader: kernel path")
    initrd: str | None = None
    cmdline: str = Field("root=LABEL=rootfs ro console=ttyS0,115200n8", description="for images without image.json")
    ssh_user: str = Field("docker", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    network: Literal["user", "bridge"] = "user"
    bridge: str = Field("dmbr0", pattern=r"^[a-zA-Z0-9_-]{1,15}$")
    bridge_cidr: str = "192.168.124.0/24"
    address: str | None = Field(None, description="bridge mode: the VM's fixed address inside bridge_cidr")
    forwards: list[str] = Field([], description="user mode: fixed HOST:GUEST[/udp] forwards on 127.0.0.1 from boot")
    publish: bool = Field(True, description="user mode: forward every port a container publishes, as it comes")
    private_network: bool = Field(
        False, description="user mode: a second NIC on the stack's private network, where its machines reach each other"
    )
    private_cidr: str = Field(_private.DEFAULT_CIDR, description="the stack's private network (the same for all)")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v in BUILTIN_IMAGES or v.startswith(("http://", "https://", "/", "./", "~")):
            return v
        raise ValueError(f"must be one of {', '.join(BUILTIN_IMAGES)}, an absolute path or an http(s) URL")

    @field_validator("bridge_cidr", "private_cidr")
    @classmethod
    def _cidr(cls, v: str, info: ValidationInfo) -> str:
        try:
            network = ipaddress.IPv4Network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"{v!r} is not a valid IPv4 CIDR ({err})") from None
        if network.prefixlen > 29:
            raise ValueError(f"{v!r} is too small: use a prefix of /29 or shorter")
        if info.field_name == "private_cidr" and network.overlaps(_private.USER_NETWORK):
            raise ValueError(f"{v!r} overlaps {_private.USER_NETWORK}, QEMU's user network on the first NIC")
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
    def _forwards(cls, v: list[str]) -> list[str]:
        seen: dict[tuple[int, str], str] = {}
        for item in v:
            host, guest, protocol = parse_forward(item)
            if (host, protocol) in seen:
                raise ValueError(f"host port {host}/{protocol} is forwarded twice ({seen[host, protocol]}, {item})")
            if guest == GUEST_SSH_PORT and protocol == "tcp":
                raise ValueError(f"forward {item!r}: the guest's SSH port is already forwarded (scripts/machine ssh)")
            if host < 1024 and os.geteuid() != 0:
                raise ValueError(f"forward {item!r}: host port {host} is privileged; use 1024 or above")
            seen[host, protocol] = item
        return v

    @model_validator(mode="after")
    def _user_mode_only(self) -> Options:
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


# --- host facts ----------------------------------------------------------------------------------------------------


def detect_accel(requested: str = "auto") -> tuple[str, str]:
    """Return (accel, reason). KVM only where /dev/kvm is usable and the CPU has vmx/svm.

    /dev/kvm alone is not enough: nested "PVM" hypervisors provide it without VT-x/AMD-V and stock guest kernels
    then never boot (docs/local-vms.md).
    """
    if requested == "tcg":
        return "tcg", "TCG requested"
    usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    try:
        with open("/proc/cpuinfo") as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        flags = set()
    if usable and flags & {"vmx", "svm"}:
        return "kvm", "KVM"
    reason = "/dev/kvm is not usable" if not usable else "/dev/kvm exists but the CPU has no vmx/svm flag"
    if requested == "kvm":
        raise RuntimeError(f"accel kvm requested but {reason}")
    return "tcg", f"{reason}: using TCG software emulation (much slower)"


# --- images --------------------------------------------------------------------------------------------------------


def resolve_image(props: dict[str, Any]) -> dict[str, Any]:
    """Turn the ``image`` option into {disk, kernel, initrd, cmdline}, building or downloading into the cache."""
    image = props["image"]
    if image in BUILTIN_IMAGES:
        image = run(os.path.join(props["project_dir"], "scripts", "build-image"), image).stdout.strip().splitlines()[-1]
    elif image.startswith(("http://", "https://")):
        image = download(image)
    image = os.path.abspath(os.path.expanduser(image))
    if os.path.isdir(image):
        with open(os.path.join(image, "image.json")) as f:
            meta = json.load(f)
        return {
            "disk": os.path.join(image, "disk.qcow2"),
            "kernel": os.path.join(image, meta["kernel"]) if meta.get("kernel") else None,
            "initrd": os.path.join(image, meta["initrd"]) if meta.get("initrd") else None,
            "cmdline": meta.get("cmdline") or props["cmdline"],
        }
    if not os.path.isfile(image):
        raise RuntimeError(f"image {image} does not exist")
    return {"disk": image, "kernel": props.get("kernel"), "initrd": props.get("initrd"), "cmdline": props["cmdline"]}


def disk_format(path: str) -> str:
    return json.loads(run("qemu-img", "info", "--output=json", path).stdout)["format"]


# --- the VM --------------------------------------------------------------------------------------------------------


def qmp(socket_path: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    from qemu.qmp import QMPClient

    async def call() -> Any:
        client = QMPClient("docker-machine")
        await asyncio.wait_for(client.connect(socket_path), timeout=10)
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout=10)
        finally:
            await client.disconnect()

    return asyncio.run(call())


def hostfwd(host: int, guest: int | None, protocol: str) -> str:
    """A slirp forward rule on the host's loopback (``guest`` None: the rule's key, for hostfwd_remove)."""
    rule = f"{protocol}:127.0.0.1:{host}"
    return rule if guest is None else f"{rule}-:{guest}"


def qemu_command(props: dict[str, Any], outs: dict[str, Any], image: dict[str, Any]) -> list[str]:
    files, accel = Files(props["instance_dir"]), outs["accel"]
    cmd = [
        "qemu-system-x86_64", "-name", props["name"],
        "-machine", f"q35,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
        # Numbers arrive from the engine as floats.
        "-smp", str(int(props["cpus"])), "-m", str(int(props["memory"])),
    ]  # fmt: skip
    if image.get("kernel"):
        cmd += ["-kernel", image["kernel"], "-append", image["cmdline"]]
        if image.get("initrd"):
            cmd += ["-initrd", image["initrd"]]
    cmd += [
        "-drive", f"file={files.disk},if=virtio,format=qcow2,discard=unmap",
        "-drive", f"file={files.seed},if=virtio,format=raw,readonly=on",
    ]  # fmt: skip
    if props["network"] == "user":
        rules = [
            hostfwd(int(outs["ssh_port"]), GUEST_SSH_PORT, "tcp"),
            hostfwd(int(outs["engine_host_port"]), int(props["engine_port"]), "tcp"),
            *(hostfwd(*parse_forward(item)) for item in props.get("forwards") or []),
        ]
        cmd += ["-netdev", ",".join([f"user,id={NETDEV}", *(f"hostfwd={r}" for r in rules)])]
    else:
        cmd += ["-netdev", f"tap,id={NETDEV},ifname={outs['tap']},script=no,downscript=no"]
    cmd += ["-device", f"virtio-net-pci,netdev={NETDEV},mac={outs['mac']}"]
    if props.get("private_network"):
        # Frames go to the hub's socket and come back to the VM's own (components/l2hub.py).
        hub = _private.hub_socket(props["private_network"]["dir"])
        cmd += [
            "-netdev", f"dgram,id={PRIVATE_NETDEV},local.type=unix,local.path={files.l2},"
                       f"remote.type=unix,remote.path={hub}",
            "-device", f"virtio-net-pci,netdev={PRIVATE_NETDEV},mac={outs['private_mac']}",
        ]  # fmt: skip
    cmd += [
        "-device", "virtio-rng-pci",
        "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", f"file:{files.serial}",
        # One QMP socket: the provider and the port forwarder each connect briefly, one at a time.
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
        "-pidfile", files.pid, "-daemonize",
    ]  # fmt: skip
    return cmd


def stop_forwarder(files: Files) -> None:
    """The port forwarder goes with the VM (it also exits by itself once qemu is gone)."""
    pid = read_pid(files.forwarder_pid)
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        settle(lambda: not pid_alive(pid), 10)


class VmProvider(LocalVmProvider):
    # Inputs whose change needs a new VM; the rest (cpus, memory, accel, forwards) only a power cycle.
    REPLACE_ON = (
        "name", "instance_dir", "image", "kernel", "initrd", "cmdline", "disk", "ssh_user",
        "authorized_key", "network", "bridge", "bridge_cidr", "address", "engine_port", "private_network",
    )  # fmt: skip
    RESTART_ON = outputs.POWER_CYCLE_INPUTS[outputs.QEMU_VM.token]

    def power_matches(self, olds: dict[str, Any], power: str) -> bool:
        # `state` is what the last up/refresh saw; a VM whose qemu is gone since (killed, host rebooted) is stopped.
        running = olds.get("state") == "running" and pid_alive(read_pid(Files(olds["instance_dir"]).pid))
        return running if power == "running" else olds.get("state") != "running"

    def create(self, props: dict[str, Any]) -> CreateResult:
        files = Files(props["instance_dir"])
        self._destroy(props)  # leftovers of an interrupted create
        os.makedirs(files.dir, mode=0o700)
        try:
            outs = self._provision(props, files)
        except BaseException as err:
            self._destroy(props)
            if isinstance(err, (RuntimeError, OSError)):
                raise StepError(props["name"], "vm", str(err)) from None
            raise
        digest = hashlib.sha256(files.dir.encode()).hexdigest()
        return CreateResult(f"{os.path.basename(files.dir)}-{digest[:8]}", outs)

    def _provision(self, props: dict[str, Any], files: Files) -> dict[str, Any]:
        image = resolve_image(props)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", disk_format(image["disk"]),
            files.disk, f"{int(props['disk'])}M")  # fmt: skip
        digest = hashlib.sha256(files.dir.encode()).hexdigest()
        outs: dict[str, Any] = {
            **props,
            "image_resolved": image,
            "mac": "52:54:00:" + ":".join(digest[i : i + 2] for i in (0, 2, 4)),
            "accel": detect_accel(props["accel_requested"])[0],
            "private_ip": None,
        }
        seed_files = {
            "user-data": seed.user_data(props["name"], props["ssh_user"], props["authorized_key"]),
            "meta-data": seed.meta_data(f"{props['name']}-{secrets.token_hex(4)}", props["name"]),
        }
        if props["network"] == "bridge":
            cidr = props["bridge_cidr"]
            address = _bridge.lease_address(props["bridge"], cidr, files.dir, props.get("address"))
            nic = seed.ethernet(outs["mac"], address=address, cidr=cidr, gateway=_bridge.gateway(cidr))
            seed_files["network-config"] = seed.network_config({"primary": nic})
            outs.update(tap=f"dm{digest[:10]}", ip=address, ssh_host=address, ssh_port=GUEST_SSH_PORT)
            outs["engine_host_port"] = int(props["engine_port"])
        else:
            outs.update(ip="127.0.0.1", ssh_host="127.0.0.1", tap=None)
        if props.get("private_network"):
            cidr = props["private_network"]["cidr"]
            outs["private_mac"] = "52:54:00:" + ":".join(digest[i : i + 2] for i in (6, 8, 10))
            outs["private_ip"] = _private.lease(props["private_network"]["dir"], cidr, files.l2)
            seed_files["network-config"] = seed.network_config({
                "primary": seed.ethernet(outs["mac"], dhcp=True),
                "private": seed.ethernet(outs["private_mac"], address=outs["private_ip"], cidr=cidr),
            })  # fmt: skip
        with open(files.seed, "wb") as f:
            f.write(seed.build_iso(seed_files))
        return self._start(props, outs)

    def _start(self, props: dict[str, Any], outs: dict[str, Any]) -> dict[str, Any]:
        """Launch qemu; in user mode retry with new ports if one of ours was taken meanwhile."""
        files = Files(props["instance_dir"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files.forwards)  # a new qemu has none of the forwards the port forwarder added before
        if props.get("private_network"):
            _private.hub_up(props["private_network"]["dir"])
        for attempt in range(3):
            if props["network"] == "user" and (attempt or not outs.get("ssh_port")):
                outs["ssh_port"], outs["engine_host_port"] = free_port(), free_port()
            if props["network"] == "bridge":
                # On every start: a host reboot takes the bridge, its NAT and dnsmasq away.
                _bridge.bridge_up(props["bridge"], props["bridge_cidr"])
                run("ip", "tuntap", "add", "dev", outs["tap"], "mode", "tap", check=False)
                run("ip", "link", "set", outs["tap"], "master", props["bridge"], "up")
            result = run(*qemu_command(props, outs, outs["image_resolved"]), check=False)
            if result.returncode == 0:
                return {**outs, "pid": read_pid(files.pid), "state": "running", "boot": boot_token()}
            taken = [f for f in props.get("forwards") or [] if f"127.0.0.1:{parse_forward(f)[0]}" in result.stderr]
            if taken:
                raise RuntimeError(f"options.forwards {', '.join(taken)}: the host port is in use")
            if "hostfwd" not in result.stderr and "Could not set up host forwarding" not in result.stderr:
                break
        raise RuntimeError(f"qemu failed to start: {result.stderr.strip()}")

    def _power_off(self, instance_dir: str) -> None:
        files = Files(instance_dir)
        stop_forwarder(files)
        pid = read_pid(files.pid)
        if not pid_alive(pid):
            return
        try:
            qmp(files.qmp, "system_powerdown")
            settle(lambda: not pid_alive(pid), POWERDOWN_TIMEOUT)
        except Exception:  # noqa: BLE001 - any QMP failure falls back to signals
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if pid_alive(pid):
                os.kill(pid, sig)
                settle(lambda: not pid_alive(pid), 10, 0.2)

    def _destroy(self, props: dict[str, Any], outs: dict[str, Any] | None = None) -> None:
        d = props["instance_dir"]
        self._power_off(d)
        outs = outs or {}
        if outs.get("tap"):
            run("ip", "link", "del", outs["tap"], check=False)
        if props.get("network") == "bridge":
            if outs.get("ip"):
                _bridge.release_address(props["bridge"], outs["ip"], d)
            _bridge.bridge_down_if_unused(props["bridge"], props["bridge_cidr"])
        if props.get("private_network"):
            _private.leave(props["private_network"]["dir"], Files(d).l2)
        shutil.rmtree(d, ignore_errors=True)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self._destroy(props, props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        files = Files(props["instance_dir"])
        if not os.path.exists(files.disk):
            return ReadResult(None, {})
        pid = read_pid(files.pid)
        state = "stopped"
        if pid_alive(pid):
            try:
                status = qmp(files.qmp, "query-status")["status"]
                state = "running" if status == "running" else status
            except Exception:  # noqa: BLE001 - an unresponsive QMP means an unusable VM
                state = "error"
        return ReadResult(id_, {**props, "pid": pid if state != "stopped" else None, "state": state})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        d = news["instance_dir"]
        restart = any(olds.get(k) != news.get(k) for k in self.RESTART_ON)
        outs = {**olds, **news, "accel": detect_accel(news["accel_requested"])[0]}
        if news.get("power") == "stopped":
            self._power_off(d)
            return UpdateResult({**outs, "state": "stopped", "pid": None})
        if not restart and self.power_matches(olds, "running"):
            return UpdateResult(outs)
        self._power_off(d)
        try:
            return UpdateResult(self._start(news, outs))
        except RuntimeError as err:
            raise StepError(news["name"], "vm", str(err)) from None


class Vm(LocalVm, module=outputs.QEMU_VM.module, name=outputs.QEMU_VM.name):
    OUTPUTS = (*LocalVm.OUTPUTS, "engine_host_port", "accel", "pid", "private_ip")

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(VmProvider(), name, props, opts)


def instance_dir_of(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "qemu", name)


def vm_props(name: str, options: Options, state_dir: str, project_dir: str, authorized_key: pulumi.Input[str],
             engine_port: int, power: str = "running") -> dict[str, Any]:  # fmt: skip
    """The Vm resource's inputs (also used by tests/e2e/bare_vm for a VM without Docker); ``state_dir`` is the
    stack's, which holds the VM's instance directory and the stack's private network."""
    private = None
    if options.private_network:
        private = {"cidr": options.private_cidr, "dir": _private.network_dir(state_dir)}
    return {
        "name": name,
        "instance_dir": instance_dir_of(state_dir, name),
        "project_dir": project_dir,
        "image": options.image,
        "kernel": options.kernel,
        "initrd": options.initrd,
        "cmdline": options.cmdline,
        "cpus": options.cpus,
        "memory": options.memory,
        "disk": options.disk,
        "ssh_user": options.ssh_user,
        "authorized_key": authorized_key,
        "accel_requested": options.accel,
        "network": options.network,
        "bridge": options.bridge,
        "bridge_cidr": options.bridge_cidr,
        "address": options.address,
        "forwards": list(options.forwards),
        "engine_port": engine_port,
        "power": power,
        # None unless the VM is on the private network: VMs from before the option keep their inputs.
        "private_network": private,
    }


def qemu_has_dgram() -> bool | None:
    """Whether this host's QEMU has the ``dgram`` netdev (7.2 and later) the private network needs; None: no QEMU."""
    if not shutil.which("qemu-system-x86_64"):
        return None
    result = run("qemu-system-x86_64", "-netdev", "help", check=False)
    return "dgram" in result.stdout.split()


class QemuDriver(BaseDriver, name="qemu", options=Options, supports_power=True):
    def check_host(self, machines: Sequence[MachineConfig]) -> None:
        """Fixed forwards must not reuse the engine's port, nor a host port of another machine of the stack; the
        private network and the bridges are one per stack (per bridge), and bridge mode needs what it runs."""
        lines, owners = [], {}
        for machine in machines:
            for item in machine.options.forwards:
                host, guest, protocol = parse_forward(item)
                where = f"machines[{machine.name}].options.forwards"
                if guest == machine.engine.port and protocol == "tcp":
                    lines.append(f"{where}: {item!r}: the engine port {guest} is already forwarded (the machine URL)")
                if (host, protocol) in owners:
                    other = owners[host, protocol]
                    lines.append(f"{where}: {item!r}: host port {host}/{protocol} is also forwarded by {other}")
                owners[host, protocol] = machine.name
        lines += self._private_network(machines) + self._bridges(machines)
        if lines:
            raise ConfigError("\n".join(lines))

    @staticmethod
    def _private_network(machines: Sequence[MachineConfig]) -> list[str]:
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

    @staticmethod
    def _bridges(machines: Sequence[MachineConfig]) -> list[str]:
        bridged = [m for m in machines if m.options.network == "bridge"]
        if not bridged:
            return []
        lines = [f"machines[{bridged[0].name}].options.network: 'bridge' {problem}" for problem in _bridge.problems()]
        cidrs: dict[str, MachineConfig] = {}
        for machine in bridged:
            first = cidrs.setdefault(machine.options.bridge, machine)
            if machine.options.bridge_cidr != first.options.bridge_cidr:
                lines.append(
                    f"machines[{machine.name}].options.bridge_cidr: {machine.options.bridge_cidr!r} differs from "
                    f"machines[{first.name}]'s {first.options.bridge_cidr!r} on bridge {machine.options.bridge}"
                )
        return lines

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
        vm = Vm(
            f"{ctx.name}-vm",
            vm_props(ctx.machine.name, options, ctx.state_dir, ctx.project_dir, ctx.ssh_key.public_key,
                     ctx.machine.engine.port, ctx.machine.state),  # fmt: skip
            opts=pulumi.ResourceOptions.merge(
                ctx.opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m"))
            ),
        )
        instance_dir = instance_dir_of(ctx.state_dir, ctx.machine.name)
        forwarding = options.network == "user" and options.publish
        # Where the stack's other machines reach this one: its own address on a bridge, else the private network's.
        private_address = vm.ip if options.network == "bridge" else vm.private_ip if options.private_network else None
        return vm_host(
            vm, ctx, options.ssh_user, vm.engine_host_port,
            details={"instanceDir": instance_dir, "publishes": forwarding, "forwards": list(options.forwards)},
            port_forwarding=PortForwarding(instance_dir, tuple(options.forwards)) if forwarding else None,
            private_address=private_address,
        )


DRIVER = QemuDriver()
