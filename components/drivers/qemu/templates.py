"""Booted templates: a QEMU machine in seconds (docs/local-vms.md#templates).

Per image and VM shape (QEMU version, accelerator, CPUs, memory, disk, SSH user, the NICs, 9p shares), once, a
template VM boots with an identity of its own (a login key and a host key kept only in this cache, the hostname
``template``), finishes cloud-init, and is saved with QMP ``migrate``; its disk is frozen (0444) as the backing file
of the machines made from it. A machine then starts from the saved state on its own overlay (``-incoming``) and gets
its identity over SSH with the template's key before anything trusts it: the host's clock, its SSH host key, machine
id, hostname, authorized key (the template's removed), entropy for the kernel's RNG, and on the private network its
MAC and address. virtio-fs shares are hot-plugged afterwards (QEMU 7.2 cannot migrate a vhost-user-fs device). Docker
ran once in the template (its first start is the slowest), without TLS and without a swarm; its engine id is removed,
so each machine's next start makes its own, and swarm node ids come with each machine's join.

Why SSH with a template key rather than a guest agent: the image has no agent, the key never leaves this user's
cache, and the same pinned-host-key code path every other dial uses carries the identity (secrets on stdin).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from components import cloudinit, wait
from components.drivers._local import images, process
from components.drivers._local.paths import cache_root, free_port, run
from components.drivers.qemu import shares
from components.drivers.qemu.instance import Files, qmp
from components.steps import remote
from components.steps.provisioning import AS_ROOT
from components.steps.tls import new_ssh_key

# The NICs' addresses inside every template; a machine on the private network gets its own there (identity).
TEMPLATE_MACS = ("52:54:00:d0:00:01", "52:54:00:d0:00:02")
# Free PCIe slots in a template for virtio-fs shares plugged in after the resume.
HOTPLUG_PORTS = 4
SAVE_TIMEOUT = 300.0
RESUME_TIMEOUT = 120.0
PREPARE = """cloud-init status --wait >/dev/null || true
if systemctl cat docker.service >/dev/null 2>&1; then systemctl enable --now docker >/dev/null 2>&1; fi
sync
"""
# Bumped when what a template holds changes (the build below, the identity it expects): older ones are not resumed.
RECIPE = 3
# RNDADDENTROPY with the host's bytes (credited), then RNDRESEEDCRNG; in perl, which starts in a fraction of the time
# Python takes under emulation.
RESEED = """open(my $rng, ">", "/dev/random") or die; my $bytes = pack("H*", $ARGV[0]);
ioctl($rng, 0x40085203, pack("ii", 8 * length($bytes), length($bytes)) . $bytes) or die "RNDADDENTROPY: $!";
ioctl($rng, 0x5207, 0) or die "RNDRESEEDCRNG: $!";
"""


class TemplateError(RuntimeError):
    """A template that could not be made or used: the machine boots cold instead."""


def root() -> str:
    return os.path.join(cache_root(), "templates")


@functools.cache
def qemu_version() -> str:
    return run("qemu-system-x86_64", "--version").stdout.splitlines()[0]


def unsupported(props: dict[str, Any]) -> str | None:
    """Why this machine boots cold, or None."""
    if not props.get("use_template", True):
        return "template: false"
    if props["network"] != "user":
        return "bridge mode"
    if props.get("mounts") and shares.mechanism(props.get("mount_type") or "auto") == shares.NINEP:
        return "host folders over 9p (only virtio-fs is plugged in after a resume)"
    if len(props.get("mounts") or []) > HOTPLUG_PORTS:
        return f"more than {HOTPLUG_PORTS} host folders"
    return None


def shape(props: dict[str, Any], image: dict[str, Any], accel: str) -> dict[str, Any]:
    """What a template must share with the machines made from it."""
    return {
        "recipe": RECIPE, "image": image, "qemu": qemu_version(), "accel": accel, "cpus": int(props["cpus"]),
        "memory": int(props["memory"]), "disk": int(props["disk"]), "ssh_user": props["ssh_user"],
        "private_network": bool(props.get("private_network")),
    }  # fmt: skip


def key_of(wanted: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]


class Template:
    """One saved template: ``disk.qcow2`` (frozen), ``state`` (the migration stream), ``meta.json``, the login key."""

    def __init__(self, directory: str):
        self.dir = directory
        self.disk, self.state = os.path.join(directory, "disk.qcow2"), os.path.join(directory, "state")
        self.meta_file, self.login_key = os.path.join(directory, "meta.json"), os.path.join(directory, "login")
        self.users = os.path.join(directory, "users")

    @property
    def meta(self) -> dict[str, Any]:
        with open(self.meta_file) as f:
            return json.load(f)

    def damage(self) -> str | None:
        """Why it cannot be resumed from (a file gone or truncated), or None."""
        try:
            meta = self.meta
        except (OSError, ValueError):
            return "its meta.json is unreadable"
        for path, size in ((self.state, meta["state_size"]), (self.disk, None), (self.login_key, None)):
            if not os.path.isfile(path):
                return f"{os.path.basename(path)} is gone"
            if size is not None and os.path.getsize(path) != size:
                return f"{os.path.basename(path)} is {os.path.getsize(path)} bytes, not {size}"
        return None

    def in_use(self) -> list[str]:
        """The instance directories of machines whose disks are backed by this template's."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.users):
                with contextlib.suppress(OSError), open(os.path.join(self.users, entry)) as f:
                    instance_dir = f.read().strip()
                if instance_dir and os.path.exists(Files(instance_dir).disk):
                    found.append(instance_dir)
        return found

    def use(self, instance_dir: str) -> None:
        os.makedirs(self.users, exist_ok=True)
        with open(os.path.join(self.users, _user_entry(instance_dir)), "w") as f:
            f.write(instance_dir)


def _user_entry(instance_dir: str) -> str:
    """The file in a template's ``users`` that says this machine's disk is backed by it."""
    return hashlib.sha256(instance_dir.encode()).hexdigest()[:16]


def forget_user(instance_dir: str) -> None:
    """A deleted machine no longer holds its template."""
    for template in all_templates():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(template.users, _user_entry(instance_dir)))


def all_templates() -> list[Template]:
    with contextlib.suppress(FileNotFoundError):
        return [Template(os.path.join(root(), d)) for d in sorted(os.listdir(root())) if not d.startswith(".")]
    return []


def find(key: str) -> Template | None:
    """The newest sound template of ``key``; TemplateError naming a damaged one, which is retired (its state and
    meta.json removed, its disk kept for the machines it backs), so that the next machine makes a new one."""
    for template in reversed([t for t in all_templates() if os.path.basename(t.dir).startswith(f"{key}-")]):
        if not os.path.exists(template.meta_file):
            continue  # retired
        problem = template.damage()
        if problem is None:
            return template
        for path in (template.meta_file, template.state):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise TemplateError(f"template {os.path.basename(template.dir)} is damaged ({problem})")
    return None


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    os.makedirs(root(), exist_ok=True)
    with open(os.path.join(root(), f".{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def obtain(wanted: dict[str, Any], start: Callable[[Files, dict[str, Any]], None]) -> Template:
    """The template of ``wanted``, built once (``start`` launches QEMU the way a machine of this shape runs)."""
    key = key_of(wanted)
    found = find(key)
    if found:
        return found
    with _locked(key):
        found = find(key)
        if found:
            return found
        built = _build(key, wanted, start)
    collect()  # the templates it supersedes, where no machine uses them any more
    return built


def _build(key: str, wanted: dict[str, Any], start: Callable[[Files, dict[str, Any]], None]) -> Template:
    work = os.path.join(root(), f".tmp-{key}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, mode=0o700)
    files, started = Files(work), time.monotonic()
    login, host_key = new_ssh_key(), new_ssh_key()
    try:
        with open(os.open(os.path.join(work, "login"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(login[0])
        images.overlay(files.disk, wanted["image"]["disk"], wanted["image"]["format"], wanted["disk"])
        # DHCP on the first NIC only: a second one (the private network's) gets its address from each machine.
        seed = {"user-data": cloudinit.user_data("template", wanted["ssh_user"], login[1], host_key),
                "meta-data": cloudinit.meta_data(f"template-{key}", "template"),
                "network-config": cloudinit.network_config(
                    {"primary": cloudinit.ethernet(TEMPLATE_MACS[0], dhcp=True)})}  # fmt: skip
        with open(os.open(files.seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(cloudinit.build_iso(seed))
        ssh_port = free_port()
        start(files, {"ssh_port": ssh_port, "engine_host_port": free_port()})
        connection = {"host": "127.0.0.1", "port": ssh_port, "user": wanted["ssh_user"], "private_key": login[0],
                      "host_key": host_key[1], "dial_error_limit": 200}  # fmt: skip
        # Docker's first start (containerd, /var/lib/docker) and its enabling are slow: done once here, without TLS and
        # listening on nothing but its socket. Its engine id is made again by each machine (identity_script).
        remote.run(connection, AS_ROOT, PREPARE)
        size = _save(files)
        os.chmod(files.disk, 0o444)  # a backing file from now on
        with open(os.path.join(work, "meta.json"), "w") as f:
            meta = {"key": key, "shape": wanted, "state_size": size, "host_key": host_key[1],
                    "seconds": round(time.monotonic() - started, 1), "created": time.time()}  # fmt: skip
            json.dump(meta, f, indent=1)
        for leftover in ("seed.iso", "qemu.pid", "qmp.sock", "serial.log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(work, leftover))
        final = os.path.join(root(), f"{key}-{int(time.time())}")
        os.rename(work, final)
        return Template(final)
    except BaseException as err:
        _stop(files)
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(err, (RuntimeError, OSError)):
            raise TemplateError(f"the template could not be made: {err}") from None
        raise


def _save(files: Files) -> int:
    """Pause the template and write its state (RAM and devices) to ``state``; QEMU quits afterwards."""
    state = os.path.join(files.dir, "state")
    qmp(files.qmp, "stop")
    qmp(files.qmp, "migrate", {"uri": f"exec:cat > {shlex.quote(state)}"})

    def finished() -> dict[str, Any] | None:
        status = qmp(files.qmp, "query-migrate")
        return status if status.get("status") in ("completed", "failed") else None

    status = wait.poll(finished, timeout=SAVE_TIMEOUT, interval=0.5, what="the save")
    if status.get("status") != "completed":
        raise RuntimeError(f"saving the template failed: {status.get('error-desc', status)}")
    _stop(files)
    return os.path.getsize(state)


def _stop(files: Files) -> None:
    pid = process.verified_pid(files.pid, "-pidfile", files.pid)
    if pid is not None:
        with contextlib.suppress(Exception):
            qmp(files.qmp, "quit")
        if not process.settle(lambda: not process.alive(pid), 10, 0.1):
            process.terminate(pid)


def incoming(template: Template) -> list[str]:
    return ["-incoming", f"exec:cat {shlex.quote(template.state)}"]


def wait_resumed(files: Files) -> None:
    """The state is loaded, then the guest runs on (the template was paused when saved, and so the VM comes)."""

    def loaded() -> str | None:
        status = qmp(files.qmp, "query-status").get("status")
        return None if status in ("inmigrate", None) else status

    status = wait.poll(loaded, timeout=RESUME_TIMEOUT, interval=0.1, retry_on=(OSError, RuntimeError),
                       what="the resume")  # fmt: skip
    if status != "running":
        if status not in ("paused", "postmigrate", "prelaunch"):
            raise RuntimeError(f"the resumed VM is {status}")
        qmp(files.qmp, "cont")


def plug_shares(files: Files, mounts: list[dict[str, Any]]) -> None:
    """virtio-fs shares on the template's free PCIe slots (each virtiofsd already listens)."""
    for index, _mount in enumerate(mounts):
        qmp(files.qmp, "chardev-add", {"id": f"fs{index}", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": shares.socket_of(files, index)}}, "server": False}}})  # fmt: skip
        qmp(files.qmp, "device_add", {"driver": "vhost-user-fs-pci", "id": f"vfs{index}", "chardev": f"fs{index}",
                                      "tag": shares.tag(index), "bus": f"hp{index}"})  # fmt: skip


def identity_script(props: dict[str, Any], outs: dict[str, Any]) -> str:
    """Run as root right after the resume: everything that makes the machine itself. Secrets travel on stdin."""
    private, public = props["host_key"].strip(), props["host_key_public"].strip()
    name, user = props["name"], props["ssh_user"]
    lines = [
        "set -e",
        f"date -s @{time.time():.3f} >/dev/null",
        f"hostnamectl set-hostname {shlex.quote(name)} 2>/dev/null || hostname {shlex.quote(name)}",
        f"echo {shlex.quote(name)} > /etc/hostname",
        f"sed -i 's/^127\\.0\\.1\\.1 .*/127.0.1.1 {name}/' /etc/hosts",
        # Credited entropy and a reseed of the kernel's RNG (RNDADDENTROPY, RNDRESEEDCRNG) before anything random:
        # the template's pool was saved with it, so every clone would draw the same numbers until then.
        f"perl -e {shlex.quote(RESEED)} {secrets.token_hex(64)}",
        # Chosen here rather than drawn in the guest: one less thing that depends on the reseed above.
        f"echo {secrets.token_hex(16)} > /etc/machine-id",
        "[ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id",
        # Docker ran in the template: its next start (the daemon-config step) makes this machine's own engine id.
        "rm -f /var/lib/docker/engine-id",
        "umask 077",  # the keys below are the machine's alone
        "rm -f /etc/ssh/ssh_host_*",
        f"cat > /etc/ssh/ssh_host_ed25519_key <<'KEY'\n{private}\nKEY",
        f"echo {shlex.quote(public)} > /etc/ssh/ssh_host_ed25519_key.pub",
        "chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub",
        f"home=$(getent passwd {user} | cut -d: -f6)",
        f"echo {shlex.quote(props['authorized_key'].strip())} > \"$home/.ssh/authorized_keys\"",
        "umask 022",  # what follows is read by daemons running as other users (systemd-networkd)
    ]  # fmt: skip
    if props.get("private_network") and outs.get("private_ip"):
        prefix = props["private_network"]["cidr"].split("/")[1]
        lines += [
            f"nic=$(ip -o link | awk -v m={TEMPLATE_MACS[1]} '$0 ~ m {{ sub(\":\", \"\", $2); print $2 }}')",
            f"ip link set dev \"$nic\" address {outs['private_mac']}",
            f"printf '[Match]\\nMACAddress=%s\\n\\n[Network]\\nAddress=%s\\n' {outs['private_mac']} "
            f"{outs['private_ip']}/{prefix} > /etc/systemd/network/05-docker-machine-private.network",
            "networkctl reload && networkctl reconfigure \"$nic\"",
        ]  # fmt: skip
    # sshd serves the machine's key from now on; this session (its own process) lives on.
    lines.append("systemctl restart ssh")
    return "\n".join(lines) + "\n"


def adopt(template: Template, props: dict[str, Any], outs: dict[str, Any]) -> None:
    """The resumed machine takes its own identity, through the template's login key and pinned host key."""
    with open(template.login_key) as f:
        login = f.read()
    connection = {"host": "127.0.0.1", "port": int(outs["ssh_port"]), "user": props["ssh_user"],
                  "private_key": login, "host_key": template.meta["host_key"], "dial_error_limit": 30}  # fmt: skip
    remote.run(connection, AS_ROOT, identity_script(props, outs))
    wanted = props["host_key_public"].split()[:2]

    def serves_its_own_key() -> bool:
        return remote.scan_host_key("127.0.0.1", int(outs["ssh_port"]), attempts=1).split()[:2] == wanted

    wait.poll(serves_its_own_key, timeout=30, interval=0.2, retry_on=(remote.RemoteError,), what="sshd's new key")


def notice(name: str) -> Callable[[str], None]:
    return lambda text: print(f"machine {name}: {text}", file=sys.stderr)


def collect() -> list[str]:
    """Remove templates no machine uses that are damaged or superseded by a newer one of their key; their names."""
    removed, newest = [], {}
    for template in all_templates():
        newest[os.path.basename(template.dir).rsplit("-", 1)[0]] = template.dir
    for template in all_templates():
        superseded = newest[os.path.basename(template.dir).rsplit("-", 1)[0]] != template.dir
        if (superseded or template.damage()) and not template.in_use():  # damaged or retired
            shutil.rmtree(template.dir, ignore_errors=True)
            removed.append(os.path.basename(template.dir))
    return removed


def clear() -> tuple[list[str], list[str]]:
    """Remove every template no machine uses; (removed, kept because in use)."""
    removed, kept = [], []
    for template in all_templates():
        if template.in_use():
            kept.append(os.path.basename(template.dir))
        else:
            shutil.rmtree(template.dir, ignore_errors=True)
            removed.append(os.path.basename(template.dir))
    return removed, kept


def listing() -> list[dict[str, Any]]:
    """What ``scripts/machine templates`` shows: each template, its size, the machines on it, whether it is sound."""
    rows = []
    for template in all_templates():
        try:
            meta = template.meta
        except (OSError, ValueError):
            meta = {}
        wanted = meta.get("shape", {})
        files = [os.path.join(template.dir, f) for f in os.listdir(template.dir)]
        rows.append({
            "name": os.path.basename(template.dir),
            "image": os.path.basename(os.path.dirname(wanted.get("image", {}).get("disk", "?/?"))),
            "cpus": wanted.get("cpus"), "memory": wanted.get("memory"), "disk": wanted.get("disk"),
            "size_mib": sum(os.path.getsize(f) for f in files if os.path.isfile(f)) // 2**20,
            "machines": len(template.in_use()), "damaged": template.damage() or "",
            "build_seconds": meta.get("seconds"),
        })  # fmt: skip
    return rows
