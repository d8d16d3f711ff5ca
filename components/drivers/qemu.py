"""QEMU driver: one local VM per machine, owned by a Python dynamic provider.

The VM is a qcow2 overlay on a cached base image, a cloud-init NoCloud seed (user, SSH key,
hostname), and a daemonized qemu with a pidfile, a QMP socket and a serial log, all in one
instance directory. Hardware acceleration is used only where it really works (/dev/kvm usable
*and* vmx/svm in /proc/cpuinfo); otherwise TCG. Networking is user-mode with free 127.0.0.1 port
forwards (no root), or a tap on a host bridge giving the VM its own address (root).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any, Literal

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult
from pydantic import Field, ValidationInfo, field_validator

from components import seed
from components.config import MachineConfig, StrictModel
from components.drivers import Host

BUILTIN_IMAGES = ("debian-12", "debian-12-docker")
# scripts/machine start/stop/kill act through the machine's desired `state`.
SUPPORTS_POWER = True
GUEST_SSH_PORT = 22
POWERDOWN_TIMEOUT = 90


class Options(StrictModel):
    cpus: int = Field(2, ge=1, le=64)
    memory: int = Field(2048, ge=256, description="MiB")
    disk: int = Field(20000, ge=4096, description="MiB, docker-machine's default 20000")
    image: str = Field("debian-12-docker", description="built-in name, a path, or an http(s) URL")
    kernel: str | None = Field(None, description="for images without a bootloader: kernel path")
    initrd: str | None = None
    cmdline: str = "root=LABEL=rootfs ro console=ttyS0,115200n8"
    ssh_user: str = Field("docker", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    network: Literal["user", "bridge"] = "user"
    bridge: str = Field("dmbr0", pattern=r"^[a-zA-Z0-9_-]{1,15}$")
    bridge_cidr: str = "192.168.124.0/24"
    address: str | None = Field(None, description="bridge mode: the VM's fixed address inside bridge_cidr")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if v in BUILTIN_IMAGES or v.startswith(("http://", "https://", "/", "./", "~")):
            return v
        raise ValueError(f"must be one of {', '.join(BUILTIN_IMAGES)}, an absolute path or an http(s) URL")

    @field_validator("bridge_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            network = ipaddress.IPv4Network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"{v!r} is not a valid IPv4 CIDR ({err})") from None
        if network.prefixlen > 29:
            raise ValueError(f"{v!r} is too small: use a prefix of /29 or shorter")
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


# --- host facts ---------------------------------------------------------------------------------------


def detect_accel(requested: str = "auto") -> tuple[str, str]:
    """Return (accel, reason). KVM only where /dev/kvm is usable and the CPU has vmx/svm.

    /dev/kvm alone is not enough: nested "PVM" hypervisors provide it without VT-x/AMD-V and stock
    guest kernels then never boot (local-vm.md gotcha 2).
    """
    if requested == "tcg":
        return "tcg", "TCG requested"
    usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    try:
        with open("/proc/cpuinfo") as f:
            flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        flags = set()
    has_vt = bool(flags & {"vmx", "svm"})
    if usable and has_vt:
        return "kvm", "KVM"
    reason = "/dev/kvm is not usable" if not usable else "/dev/kvm exists but the CPU has no vmx/svm flag"
    if requested == "kvm":
        raise RuntimeError(f"accel kvm requested but {reason}")
    return "tcg", f"{reason}: using TCG software emulation (much slower)"


def state_root() -> str:
    base = os.environ.get("DMP_STATE") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "docker-machine-pulumi"
    )
    return os.path.abspath(base)


def cache_root() -> str:
    base = os.environ.get("DMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docker-machine-pulumi"
    )
    return os.path.abspath(base)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        output = result.stderr.strip() or result.stdout.strip()
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {output}")
    return result


# --- images -------------------------------------------------------------------------------------------


def resolve_image(props: dict[str, Any]) -> dict[str, Any]:
    """Turn the ``image`` option into {disk, kernel, initrd, cmdline}, building or downloading into the cache."""
    image = props["image"]
    if image in BUILTIN_IMAGES:
        script = os.path.join(props["project_dir"], "scripts", "build-image")
        image = _run(script, image).stdout.strip().splitlines()[-1]
    elif image.startswith(("http://", "https://")):
        target_dir = os.path.join(cache_root(), "images", "url-" + hashlib.sha256(image.encode()).hexdigest()[:16])
        name = os.path.basename(urllib.parse.urlparse(image).path) or "disk.img"
        target = os.path.join(target_dir, name)
        if not os.path.exists(target):
            os.makedirs(target_dir, exist_ok=True)
            partial = target + ".partial"
            with urllib.request.urlopen(image, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(partial, target)
        image = target
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
    return json.loads(_run("qemu-img", "info", "--output=json", path).stdout)["format"]


# --- bridge networking (root) ---------------------------------------------------------------------------

_RULE_COMMENT = "docker-machine-pulumi"


def _bridge_dir(bridge: str) -> str:
    return os.path.join(state_root(), "bridges", bridge)


def _iptables_rules(bridge: str, cidr: str) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", _RULE_COMMENT]
    return [
        ["-t", "nat", "POSTROUTING", "-s", cidr, "!", "-o", bridge, *comment, "-j", "MASQUERADE"],
        ["-t", "filter", "FORWARD", "-i", bridge, *comment, "-j", "ACCEPT"],
        ["-t", "filter", "FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
         *comment, "-j", "ACCEPT"],
    ]


def _upstream_dns() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            servers = [line.split()[1] for line in f if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        servers = []
    return servers or ["1.1.1.1"]


def bridge_up(bridge: str, cidr: str) -> str:
    """Create the bridge, NAT and a DNS forwarder for it once; return the host's address on it."""
    if os.geteuid() != 0:
        raise RuntimeError("network: bridge needs root (CAP_NET_ADMIN); use network: user instead")
    network = ipaddress.IPv4Network(cidr)
    gateway = str(next(network.hosts()))
    if _run("ip", "link", "show", bridge, check=False).returncode != 0:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{gateway}/{network.prefixlen}", "dev", bridge)
    _run("ip", "link", "set", bridge, "up")
    _run("sysctl", "-q", "net.ipv4.ip_forward=1")
    for rule in _iptables_rules(bridge, cidr):
        table, chain, spec = rule[:2], rule[2], rule[3:]
        if _run("iptables", *table, "-C", chain, *spec, check=False).returncode != 0:
            _run("iptables", *table, "-I", chain, "1", *spec)
    state = _bridge_dir(bridge)
    os.makedirs(os.path.join(state, "leases"), exist_ok=True)
    pidfile = os.path.join(state, "dnsmasq.pid")
    if not _pid_alive(_read_pid(pidfile)):
        servers = [f"--server={s}" for s in _upstream_dns()]
        _run(
            "dnsmasq", "--conf-file=/dev/null", f"--interface={bridge}", "--bind-interfaces",
            "--except-interface=lo", f"--listen-address={gateway}", "--no-resolv", *servers,
            f"--pid-file={pidfile}",
        )
    return gateway


def bridge_down_if_unused(bridge: str, cidr: str) -> None:
    state = _bridge_dir(bridge)
    leases = os.path.join(state, "leases")
    if os.path.isdir(leases) and os.listdir(leases):
        return
    pid = _read_pid(os.path.join(state, "dnsmasq.pid"))
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
    for rule in _iptables_rules(bridge, cidr):
        table, chain, spec = rule[:2], rule[2], rule[3:]
        while _run("iptables", *table, "-D", chain, *spec, check=False).returncode == 0:
            pass
    _run("ip", "link", "del", bridge, check=False)
    shutil.rmtree(state, ignore_errors=True)


def claim_lease(leases: str, candidates: list[str], owner: str) -> str | None:
    """The first of ``candidates`` (addresses) that is free or already ``owner``'s, reserved for ``owner`` as a
    file named after it in ``leases`` (created exclusively, so stacks never share one); None when all are taken.
    Shared with the VirtualBox driver."""
    os.makedirs(leases, exist_ok=True)
    for candidate in candidates:
        path = os.path.join(leases, candidate)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with open(path) as f:
                if f.read().strip() == owner:
                    return candidate
            continue
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return candidate
    return None


def lease_address(bridge: str, cidr: str, instance_dir: str, wanted: str | None) -> str:
    """Reserve an address on the bridge (a file per address, created exclusively)."""
    leases = os.path.join(_bridge_dir(bridge), "leases")
    hosts = [str(h) for h in ipaddress.IPv4Network(cidr).hosts()][1:]  # the first host address is the bridge
    address = claim_lease(leases, [wanted] if wanted else hosts, instance_dir)
    if address is None and wanted:
        raise RuntimeError(f"address {wanted} on {bridge} is already used by {os.path.join(leases, wanted)}")
    if address is None:
        raise RuntimeError(f"no free address left in {cidr}")
    return address


def release_address(bridge: str, address: str) -> None:
    try:
        os.unlink(os.path.join(_bridge_dir(bridge), "leases", address))
    except FileNotFoundError:
        pass


def network_config(mac: str, address: str, cidr: str, gateway: str) -> str:
    prefix = ipaddress.IPv4Network(cidr).prefixlen
    config = {
        "version": 2,
        "ethernets": {
            "primary": {
                "match": {"macaddress": mac},
                "addresses": [f"{address}/{prefix}"],
                "routes": [{"to": "0.0.0.0/0", "via": gateway}],
                "nameservers": {"addresses": [gateway]},
            }
        },
    }
    return json.dumps(config, indent=1) + "\n"


# --- the VM -------------------------------------------------------------------------------------------


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def qmp(socket_path: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    from qemu.qmp import QMPClient

    async def run() -> Any:
        client = QMPClient("docker-machine")
        await asyncio.wait_for(client.connect(socket_path), timeout=10)
        try:
            return await asyncio.wait_for(client.execute(command, arguments), timeout=10)
        finally:
            await client.disconnect()

    return asyncio.run(run())


def qemu_command(props: dict[str, Any], outs: dict[str, Any], image: dict[str, Any]) -> list[str]:
    d = props["instance_dir"]
    accel = outs["accel"]
    cmd = [
        "qemu-system-x86_64", "-name", props["name"],
        "-machine", f"q35,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
        # Numbers arrive from the engine as floats.
        "-smp", str(int(props["cpus"])), "-m", str(int(props["memory"])),
    ]
    if image.get("kernel"):
        cmd += ["-kernel", image["kernel"], "-append", image["cmdline"]]
        if image.get("initrd"):
            cmd += ["-initrd", image["initrd"]]
    cmd += [
        "-drive", f"file={d}/disk.qcow2,if=virtio,format=qcow2,discard=unmap",
        "-drive", f"file={d}/seed.iso,if=virtio,format=raw,readonly=on",
    ]
    if props["network"] == "user":
        forwards = (
            f"hostfwd=tcp:127.0.0.1:{int(outs['ssh_port'])}-:{GUEST_SSH_PORT},"
            f"hostfwd=tcp:127.0.0.1:{int(outs['engine_host_port'])}-:{int(props['engine_port'])}"
        )
        cmd += ["-netdev", f"user,id=n0,{forwards}"]
    else:
        cmd += ["-netdev", f"tap,id=n0,ifname={outs['tap']},script=no,downscript=no"]
    cmd += [
        "-device", f"virtio-net-pci,netdev=n0,mac={outs['mac']}",
        "-device", "virtio-rng-pci",
        "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", f"file:{d}/serial.log",
        "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
        "-pidfile", f"{d}/qemu.pid", "-daemonize",
    ]
    return cmd


class VmProvider(ResourceProvider):
    # Inputs whose change needs a new VM; the rest (cpus, memory, accel) only a power cycle.
    REPLACE_ON = (
        "name", "instance_dir", "image", "kernel", "initrd", "cmdline", "disk", "ssh_user",
        "authorized_key", "network", "bridge", "bridge_cidr", "address", "engine_port",
    )
    RESTART_ON = ("cpus", "memory", "accel_requested")

    def create(self, props: dict[str, Any]) -> CreateResult:
        d = props["instance_dir"]
        self._destroy(d, props)  # leftovers of an interrupted create
        os.makedirs(d, mode=0o700)
        try:
            image = resolve_image(props)
            _run(
                "qemu-img", "create", "-q", "-f", "qcow2", "-b", image["disk"], "-F", disk_format(image["disk"]),
                f"{d}/disk.qcow2", f"{int(props['disk'])}M",
            )
            digest = hashlib.sha256(d.encode()).hexdigest()
            outs: dict[str, Any] = {
                **props,
                "image_resolved": image,
                "mac": "52:54:00:" + ":".join(digest[i : i + 2] for i in (0, 2, 4)),
                "accel": detect_accel(props["accel_requested"])[0],
            }
            files = {
                "user-data": seed.user_data(props["name"], props["ssh_user"], props["authorized_key"]),
                "meta-data": seed.meta_data(f"{props['name']}-{secrets.token_hex(4)}", props["name"]),
            }
            if props["network"] == "bridge":
                gateway = bridge_up(props["bridge"], props["bridge_cidr"])
                address = lease_address(props["bridge"], props["bridge_cidr"], d, props.get("address"))
                files["network-config"] = network_config(outs["mac"], address, props["bridge_cidr"], gateway)
                outs.update(tap=f"dm{digest[:10]}", ip=address, ssh_host=address, ssh_port=GUEST_SSH_PORT)
                outs["engine_host_port"] = int(props["engine_port"])
            else:
                outs.update(ip="127.0.0.1", ssh_host="127.0.0.1", tap=None)
            with open(f"{d}/seed.iso", "wb") as f:
                f.write(seed.build_iso(files))
            outs = self._start(props, outs)
        except BaseException:
            self._destroy(d, props)
            raise
        return CreateResult(os.path.basename(d) + "-" + digest[:8], outs)

    def _start(self, props: dict[str, Any], outs: dict[str, Any]) -> dict[str, Any]:
        """Launch qemu; in user mode retry with new ports if one was taken meanwhile."""
        d = props["instance_dir"]
        for attempt in range(3):
            if props["network"] == "user" and (attempt or not outs.get("ssh_port")):
                outs["ssh_port"], outs["engine_host_port"] = free_port(), free_port()
            if props["network"] == "bridge":
                _run("ip", "tuntap", "add", "dev", outs["tap"], "mode", "tap", check=False)
                _run("ip", "link", "set", outs["tap"], "master", props["bridge"], "up")
            result = _run(*qemu_command(props, outs, outs["image_resolved"]), check=False)
            if result.returncode == 0:
                return {**outs, "pid": _read_pid(f"{d}/qemu.pid"), "state": "running"}
            if "hostfwd" not in result.stderr and "Could not set up host forwarding" not in result.stderr:
                break
        raise RuntimeError(f"qemu failed to start: {result.stderr.strip()}")

    def _power_off(self, d: str) -> None:
        pid = _read_pid(f"{d}/qemu.pid")
        if not _pid_alive(pid):
            return
        try:
            qmp(f"{d}/qmp.sock", "system_powerdown")
            deadline = time.monotonic() + POWERDOWN_TIMEOUT
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 - any QMP failure falls back to signals
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _pid_alive(pid):
                break
            os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)

    def _destroy(self, d: str, props: dict[str, Any], outs: dict[str, Any] | None = None) -> None:
        self._power_off(d)
        outs = outs or {}
        if outs.get("tap"):
            _run("ip", "link", "del", outs["tap"], check=False)
        if props.get("network") == "bridge":
            with_ip = outs.get("ip")
            if with_ip:
                release_address(props["bridge"], with_ip)
            bridge_down_if_unused(props["bridge"], props["bridge_cidr"])
        shutil.rmtree(d, ignore_errors=True)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self._destroy(props["instance_dir"], props, props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        d = props["instance_dir"]
        if not os.path.exists(f"{d}/disk.qcow2"):
            return ReadResult(None, {})
        pid = _read_pid(f"{d}/qemu.pid")
        state = "stopped"
        if _pid_alive(pid):
            try:
                status = qmp(f"{d}/qmp.sock", "query-status")["status"]
                state = "running" if status == "running" else status
            except Exception:  # noqa: BLE001 - an unresponsive QMP means an unusable VM
                state = "error"
        return ReadResult(id_, {**props, "pid": pid if state != "stopped" else None, "state": state})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in self.REPLACE_ON if olds.get(k) != news.get(k)]
        restart = [k for k in self.RESTART_ON if olds.get(k) != news.get(k)]
        # `state` is what refresh saw; `power` is what the stack wants.
        power = olds.get("state") != news.get("power", "running")
        return DiffResult(
            changes=bool(replaces or restart or power), replaces=replaces, delete_before_replace=True
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        d = news["instance_dir"]
        hardware_changed = any(olds.get(k) != news.get(k) for k in self.RESTART_ON)
        outs = {**olds, **news, "accel": detect_accel(news["accel_requested"])[0]}
        if news.get("power") == "stopped":
            self._power_off(d)
            return UpdateResult({**outs, "state": "stopped", "pid": None})
        if _pid_alive(_read_pid(f"{d}/qemu.pid")) and not hardware_changed and olds.get("state") == "running":
            return UpdateResult(outs)
        self._power_off(d)
        return UpdateResult(self._start(news, outs))


class Vm(pulumi.dynamic.Resource, module="qemu", name="Vm"):
    ip: pulumi.Output[str]
    ssh_host: pulumi.Output[str]
    ssh_port: pulumi.Output[int]
    engine_host_port: pulumi.Output[int]
    accel: pulumi.Output[str]
    state: pulumi.Output[str]
    pid: pulumi.Output[int]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outputs = dict.fromkeys(
            ("ip", "ssh_host", "ssh_port", "engine_host_port", "accel", "state", "pid", "mac", "tap", "image_resolved")
        )
        super().__init__(VmProvider(), name, {**props, **outputs}, opts)


def create_host(name: str, machine: MachineConfig, ssh_key: Any, state_dir: str, opts: pulumi.ResourceOptions) -> Host:
    options: Options = machine.options
    accel, reason = detect_accel(options.accel)
    if accel == "tcg":
        pulumi.log.info(f"qemu: {reason}")
    project_dir = os.getcwd()
    vm = Vm(
        f"{name}-vm",
        {
            "name": machine.name,
            "instance_dir": os.path.join(state_dir, "qemu", machine.name),
            "project_dir": project_dir,
            "image": options.image,
            "kernel": options.kernel,
            "initrd": options.initrd,
            "cmdline": options.cmdline,
            "cpus": options.cpus,
            "memory": options.memory,
            "disk": options.disk,
            "ssh_user": options.ssh_user,
            "authorized_key": ssh_key.public_key,
            "accel_requested": options.accel,
            "network": options.network,
            "bridge": options.bridge,
            "bridge_cidr": options.bridge_cidr,
            "address": options.address,
            "engine_port": machine.engine.port,
            "power": machine.state,
        },
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="20m"))
        ),
    )
    return Host(
        ssh_host=vm.ssh_host,
        ssh_port=vm.ssh_port,
        ssh_user=options.ssh_user,
        ssh_private_key=ssh_key.private_key,
        address=vm.ip,
        engine_port=vm.engine_host_port,
        ready=vm,
    )
