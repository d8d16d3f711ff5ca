"""A QEMU VM as a Python dynamic resource: its instance directory, command line and power (docs/local-vms.md).

The VM is a qcow2 overlay on a cached base image, a cloud-init NoCloud seed (user, SSH key, the SSH host key we made,
hostname), and a daemonized qemu with a pidfile, a QMP socket and a serial log, all in one instance directory that
carries its stack's ownership marker. Hardware acceleration is used only where it really works (/dev/kvm usable *and*
vmx/svm in /proc/cpuinfo); otherwise TCG. Networking is user-mode with free 127.0.0.1 port forwards (no root), or a
tap on a host bridge giving the VM its own address (root, ``bridge``); a user-mode VM may also have a second NIC on
the stack's private network (``network``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import cloudinit, outputs, wait
from components.drivers._local import images, process
from components.drivers._local.paths import free_port, run
from components.drivers._local.vm import LocalVm, LocalVmProvider, boot_token
from components.drivers.base import GUEST_SSH_PORT
from components.drivers.qemu import bridge, forwarder, network, shares, templates
from components.drivers.qemu.instance import (
    NETDEV,
    PRIVATE_NETDEV,
    Files,
    check_socket_paths,
    hostfwd,
    qmp,
    running_pid,
)  # fmt: skip
from components.drivers.qemu.options import BUILTIN_IMAGES, Forward, Options
from components.errors import StepError

VM = outputs.DynamicType("qemu", "Vm")
POWERDOWN_TIMEOUT = 90


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
    """Turn the ``image`` option into {disk, format, kernel, initrd, cmdline}, building or fetching into the cache;
    the disk must stand alone (images.check_disk)."""
    image = props["image"]
    if image in BUILTIN_IMAGES:
        image = run(os.path.join(props["project_dir"], "scripts", "build-image"), image).stdout.strip().splitlines()[-1]
    elif image.startswith(("http://", "https://")):
        image = images.fetch(image, props["image_sha256"])
    image = os.path.abspath(os.path.expanduser(image))
    found = {"disk": image, "kernel": props.get("kernel"), "initrd": props.get("initrd"), "cmdline": props["cmdline"]}
    if os.path.isdir(image):
        with open(os.path.join(image, "image.json")) as f:
            meta = json.load(f)
        found = {
            "disk": os.path.join(image, "disk.qcow2"),
            "kernel": os.path.join(image, meta["kernel"]) if meta.get("kernel") else None,
            "initrd": os.path.join(image, meta["initrd"]) if meta.get("initrd") else None,
            "cmdline": meta.get("cmdline") or props["cmdline"],
        }
    elif not os.path.isfile(image):
        raise RuntimeError(f"image {image} does not exist")
    return {**found, "format": images.check_disk(found["disk"])}


# --- the VM --------------------------------------------------------------------------------------------------------


def qemu_command(props: dict[str, Any], outs: dict[str, Any], image: dict[str, Any], *,
                 template: bool = False) -> list[str]:  # fmt: skip
    """The VM's command line; ``template``: the shape of a template and of the machines resumed from it (shareable
    memory and free PCIe slots for the virtio-fs shares plugged in after a resume, none built in)."""
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
            *(hostfwd(f.host, f.guest, f.protocol) for f in map(Forward.parse, props.get("forwards") or [])),
        ]
        cmd += ["-netdev", ",".join([f"user,id={NETDEV}", *(f"hostfwd={r}" for r in rules)])]
    else:
        cmd += ["-netdev", f"tap,id={NETDEV},ifname={outs['tap']},script=no,downscript=no"]
    cmd += ["-device", f"virtio-net-pci,netdev={NETDEV},mac={outs['mac']}"]
    if props.get("private_network"):
        # Frames go to the hub's socket and come back to the VM's own (components/drivers/qemu/hub.py).
        hub = network.hub_socket(props["private_network"]["dir"])
        cmd += [
            "-netdev", f"dgram,id={PRIVATE_NETDEV},local.type=unix,local.path={files.l2},"
                       f"remote.type=unix,remote.path={hub}",
            "-device", f"virtio-net-pci,netdev={PRIVATE_NETDEV},mac={outs['private_mac']}",
        ]  # fmt: skip
    if template:
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={int(props['memory'])}M,share=on",
                "-numa", "node,memdev=mem"]  # fmt: skip
        for port in range(templates.HOTPLUG_PORTS):
            cmd += ["-device", f"pcie-root-port,id=hp{port},chassis={port + 1},slot={port + 1}"]
    else:
        cmd += shares.qemu_args(props.get("mounts") or [], outs.get("share_mechanism", shares.NINEP), files,
                                int(props["memory"]))  # fmt: skip
    cmd += [
        "-device", "virtio-rng-pci",
        "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", f"file:{files.serial}",
        # One QMP socket: the provider and the port forwarder each connect briefly, one at a time.
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
        "-pidfile", files.pid, "-daemonize",
    ]  # fmt: skip
    return cmd


def _mac(digest: str, offset: int) -> str:
    return "52:54:00:" + ":".join(digest[i : i + 2] for i in (offset, offset + 2, offset + 4))


def kill_vm(instance_dir: str) -> bool:
    """Pull the plug: QMP quit (QEMU exits without asking the guest), SIGKILL if QMP does not answer; its helpers
    go after it. Whether it was running."""
    files = Files(instance_dir)
    pid = running_pid(instance_dir)
    if pid is not None:
        with contextlib.suppress(Exception):
            qmp(files.qmp, "quit")
        if not process.settle(lambda: not process.alive(pid), 2, 0.02):
            process.terminate(pid, timeout=1)
    forwarder.stop(instance_dir)
    shares.stop(files)
    return pid is not None


class VmProvider(LocalVmProvider):
    # Inputs whose change needs a new VM; the rest (cpus, memory, accel, forwards) only a power cycle.
    REPLACE_ON = (
        "name", "instance_dir", "image", "image_sha256", "kernel", "initrd", "cmdline", "disk", "ssh_user",
        "authorized_key", "host_key", "network", "bridge", "bridge_cidr", "address", "engine_port", "private_network",
    )  # fmt: skip
    RESTART_ON = ("cpus", "memory", "accel_requested", "forwards", "mounts", "mount_type")

    def power_matches(self, olds: dict[str, Any], power: str) -> bool:
        # `state` is what the last up/refresh saw; a VM whose qemu is gone since (killed, host rebooted) is stopped.
        running = olds.get("state") == "running" and running_pid(olds["instance_dir"]) is not None
        return running if power == "running" else olds.get("state") != "running"

    def disk(self, props: dict[str, Any]) -> str:
        return Files(props["instance_dir"]).disk

    def create(self, props: dict[str, Any]) -> CreateResult:
        files = Files(props["instance_dir"])
        self.claim_new(props, self._destroy)  # an interrupted create of ours left its files: gone first
        try:
            outs = self._provision(props, files)
        except BaseException as err:
            self._destroy(props)
            if isinstance(err, (RuntimeError, OSError)):
                raise StepError(props["name"], "vm", str(err)) from None
            raise
        digest = hashlib.sha256(files.dir.encode()).hexdigest()
        return CreateResult(f"{os.path.basename(files.dir)}-{digest[:8]}", outs)

    def _seed(self, props: dict[str, Any]) -> dict[str, str]:
        user = cloudinit.user_data(props["name"], props["ssh_user"], props["authorized_key"],
                                   (props["host_key"], props["host_key_public"]))  # fmt: skip
        return {"user-data": user, "meta-data": cloudinit.meta_data(f"{props['name']}-{secrets.token_hex(4)}",
                                                                    props["name"])}  # fmt: skip

    def _provision(self, props: dict[str, Any], files: Files) -> dict[str, Any]:
        check_socket_paths(files.qmp, *[shares.socket_of(files, i) for i in range(len(props.get("mounts") or []))])
        image = resolve_image(props)
        digest = hashlib.sha256(files.dir.encode()).hexdigest()
        outs: dict[str, Any] = {**props, "image_resolved": image, "mac": _mac(digest, 0), "private_ip": None,
                                "accel": detect_accel(props["accel_requested"])[0], "template": None}  # fmt: skip
        template = self._template(props, outs, image)
        backing, backing_format = (template.disk, "qcow2") if template else (image["disk"], image["format"])
        images.overlay(files.disk, backing, backing_format, props["disk"])
        seed = self._seed(props)
        if props["network"] == "bridge":
            cidr = props["bridge_cidr"]
            address = bridge.lease_address(props["bridge"], cidr, files.dir, props.get("address"))
            nic = cloudinit.ethernet(outs["mac"], address=address, cidr=cidr, gateway=bridge.gateway(cidr))
            seed["network-config"] = cloudinit.network_config({"primary": nic})
            outs.update(tap=f"dm{digest[:10]}", ip=address, ssh_host=address, ssh_port=GUEST_SSH_PORT)
            outs["engine_host_port"] = int(props["engine_port"])
        else:
            outs.update(ip="127.0.0.1", ssh_host="127.0.0.1", tap=None)
        if props.get("private_network"):
            cidr = props["private_network"]["cidr"]
            outs["private_mac"] = _mac(digest, 6)
            outs["private_ip"] = network.lease(props["private_network"]["dir"], cidr, files.l2, props["owner"])
            seed["network-config"] = cloudinit.network_config({
                "primary": cloudinit.ethernet(outs["mac"], dhcp=True),
                "private": cloudinit.ethernet(outs["private_mac"], address=outs["private_ip"], cidr=cidr),
            })  # fmt: skip
        with open(os.open(files.seed, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(cloudinit.build_iso(seed))
        if template is None:
            return self._start(props, outs)
        try:
            return self._resume(props, outs, template)
        except (RuntimeError, OSError, wait.WaitTimeout) as err:
            templates.notice(props["name"])(f"resuming from template {os.path.basename(template.dir)} failed "
                                            f"({err}): cold boot")  # fmt: skip
            self._power_off(files.dir)
            images.overlay(files.disk, image["disk"], image["format"], props["disk"])
            return self._start(props, {**outs, "template": None})

    def _template(self, props: dict[str, Any], outs: dict[str, Any],
                  image: dict[str, Any]) -> templates.Template | None:  # fmt: skip
        """The template this machine resumes from, made once per shape; None: it boots cold (said in one line)."""
        notice = templates.notice(props["name"])
        reason = templates.unsupported(props)
        if reason:
            notice(f"boots cold ({reason})")
            return None

        def start(files: Files, ports: dict[str, Any]) -> None:
            shape_props = {**props, "name": "template", "instance_dir": files.dir, "mounts": [], "forwards": [],
                           "private_network": {"cidr": "", "dir": files.dir} if props.get("private_network") else None}
            shape_outs = {**outs, **ports, "mac": templates.TEMPLATE_MACS[0], "private_mac": templates.TEMPLATE_MACS[1]}
            result = run(*qemu_command(shape_props, shape_outs, image, template=True), check=False)
            if result.returncode != 0:
                raise RuntimeError(f"qemu failed to start: {result.stderr.strip()}")

        try:
            return templates.obtain(templates.shape(props, image, outs["accel"]), start)
        except templates.TemplateError as err:
            notice(f"{err}: cold boot")
            return None

    def _resume(self, props: dict[str, Any], outs: dict[str, Any], template: templates.Template) -> dict[str, Any]:
        """Start from the template's saved state, plug its shares in, then give the guest its identity."""
        files = Files(props["instance_dir"])
        template.use(files.dir)
        outs = {**outs, "template": os.path.basename(template.dir)}
        as_saved = {"mac": templates.TEMPLATE_MACS[0], "private_mac": templates.TEMPLATE_MACS[1]}
        mounts = props.get("mounts") or []
        outs = self._launch(props, outs, lambda current: [
            *qemu_command(props, {**current, **as_saved}, current["image_resolved"], template=True),
            *templates.incoming(template),
        ], kind=shares.VIRTIOFS)  # fmt: skip
        templates.wait_resumed(files)
        templates.plug_shares(files, mounts)
        templates.adopt(template, props, outs)
        return outs

    def _start(self, props: dict[str, Any], outs: dict[str, Any]) -> dict[str, Any]:
        """Boot cold (a machine resumed from a template too, once it was stopped)."""
        return self._launch(props, outs, lambda current: qemu_command(props, current, current["image_resolved"]),
                            kind=shares.mechanism(props.get("mount_type") or "auto"))  # fmt: skip

    def _launch(self, props: dict[str, Any], outs: dict[str, Any], command: Any, kind: str) -> dict[str, Any]:
        """Launch qemu (``command(outs)``: its command line); in user mode retry with new ports if one of ours was taken
        meanwhile."""
        files = Files(props["instance_dir"])
        forwarder.forget(files.dir)  # a new qemu has none of the forwards the port forwarder added before
        if props.get("private_network"):
            network.hub_up(props["private_network"]["dir"], props["owner"])
        forwards = [Forward.parse(f) for f in props.get("forwards") or []]
        mounts = props.get("mounts") or []
        outs = {**outs, "share_mechanism": kind, "shares": shares.guest_table(mounts, kind)}
        for attempt in range(3):
            if props["network"] == "user" and (attempt or not outs.get("ssh_port")):
                outs["ssh_port"], outs["engine_host_port"] = free_port(), free_port()
            if props["network"] == "bridge":
                # On every start: a host reboot takes the bridge, its NAT and dnsmasq away.
                bridge.bridge_up(props["bridge"], props["bridge_cidr"])
                run("ip", "tuntap", "add", "dev", outs["tap"], "mode", "tap", check=False)
                run("ip", "link", "set", outs["tap"], "master", props["bridge"], "up")
            shares.start(mounts, kind, files)
            result = run(*command(outs), check=False)
            if result.returncode == 0:
                return {**outs, "pid": running_pid(files.dir), "state": "running", "boot": boot_token()}
            taken = [str(f) for f in forwards if f"127.0.0.1:{f.host}" in result.stderr]
            if taken:
                raise RuntimeError(f"options.forwards {', '.join(taken)}: the host port is in use")
            if "hostfwd" not in result.stderr and "Could not set up host forwarding" not in result.stderr:
                break
        raise RuntimeError(f"qemu failed to start: {result.stderr.strip()}")

    def _power_off(self, instance_dir: str) -> None:
        files = Files(instance_dir)
        forwarder.stop(instance_dir)
        pid = running_pid(instance_dir)
        if pid is not None:
            with contextlib.suppress(Exception):  # any QMP failure falls back to signals
                qmp(files.qmp, "system_powerdown")
                process.settle(lambda: not process.alive(pid), POWERDOWN_TIMEOUT)
            process.terminate(pid)
        shares.stop(files)

    def _destroy(self, props: dict[str, Any], outs: dict[str, Any] | None = None) -> None:
        d = props["instance_dir"]
        self._power_off(d)
        outs = outs or {}
        if outs.get("tap"):
            run("ip", "link", "del", outs["tap"], check=False)
        if props.get("network") == "bridge":
            if outs.get("ip"):
                bridge.release_address(props["bridge"], outs["ip"], d)
            bridge.bridge_down_if_unused(props["bridge"], props["bridge_cidr"])
        if props.get("private_network"):
            network.leave(props["private_network"]["dir"], Files(d).l2, props.get("owner"))
        templates.forget_user(d)
        self.remove_instance_dir(d)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if self.keep_ours(props):
            self._destroy(props, props)
        else:
            self.leave_alone(props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        files = Files(props["instance_dir"])
        if self.lost(props):
            return ReadResult(None, {})
        pid, state = running_pid(files.dir), "stopped"
        if pid is not None:
            try:
                status = qmp(files.qmp, "query-status")["status"]
                state = "running" if status == "running" else status
            except Exception:  # noqa: BLE001 - an unresponsive QMP means an unusable VM
                state = "error"
        return ReadResult(id_, {**props, "pid": pid if state != "stopped" else None, "state": state})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if not self.keep_ours(olds, news):
            raise self.refuse_change(olds)
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


class Vm(LocalVm, module=VM.module, name=VM.name):
    OUTPUTS = (*LocalVm.OUTPUTS, "engine_host_port", "accel", "pid", "private_ip", "shares", "template")
    # The host key's private half travels in the seed: never in clear in the state.
    SECRET_OUTPUTS = ("host_key",)

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(VmProvider(), name, props, opts)


def instance_dir_of(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "qemu", name)


def vm_props(name: str, options: Options, state_dir: str, project_dir: str, *, authorized_key: pulumi.Input[str],
             host_key: tuple[pulumi.Input[str], pulumi.Input[str]], owner: dict[str, str], engine_port: int,
             power: str = "running") -> dict[str, Any]:  # fmt: skip
    """The Vm resource's inputs (also used by tests/e2e/bare_vm for a VM without Docker); ``state_dir`` is the
    stack's, which holds the VM's instance directory and the stack's private network; ``host_key`` the SSH host key
    (private key, a secret; public key line) the VM's sshd is given."""
    private = None
    if options.private_network:
        private = {"cidr": options.private_cidr, "dir": network.network_dir(state_dir)}
    return {
        "name": name,
        "instance_dir": instance_dir_of(state_dir, name),
        "project_dir": project_dir,
        "owner": owner,
        "image": options.image,
        "image_sha256": options.image_sha256,
        "kernel": options.kernel,
        "initrd": options.initrd,
        "cmdline": options.cmdline,
        "cpus": options.cpus,
        "memory": options.memory,
        "disk": options.disk,
        "ssh_user": options.ssh_user,
        "authorized_key": authorized_key,
        "host_key": host_key[0],
        "host_key_public": host_key[1],
        "accel_requested": options.accel,
        "network": options.network,
        "bridge": options.bridge,
        "bridge_cidr": options.bridge_cidr,
        "address": options.address,
        "forwards": [str(f) for f in options.forwards],
        "mounts": [mount.model_dump() for mount in options.mounts],
        "mount_type": options.mount_type,
        "use_template": options.template,
        "engine_port": engine_port,
        "power": power,
        # None unless the VM is on the private network: VMs from before the option keep their inputs.
        "private_network": private,
    }
