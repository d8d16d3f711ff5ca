"""QEMU driver pieces that run without QEMU: acceleration detection, the qemu command line, cloud-init
network config, the VM provider's diff, address leases, and the NoCloud seed ISO."""

from __future__ import annotations

import builtins
import io
import ipaddress
import json
import os

import pycdlib
import pytest
import yaml

from components import cloudinit as seed
from components.drivers.qemu import bridge as _bridge
from components.drivers.qemu import vm as qemu
from components.drivers.qemu.options import Options
from components.steps import tls

# --- detect_accel ------------------------------------------------------------------------------------------


@pytest.fixture
def host(monkeypatch):
    """Fake the host facts detect_accel reads: /proc/cpuinfo flags and /dev/kvm existence/access."""
    real_open, real_exists, real_access = builtins.open, os.path.exists, os.access

    def configure(cpu_flags: str | None, kvm_exists: bool = True, kvm_usable: bool = True):
        def fake_open(path, *args, **kwargs):
            if path == "/proc/cpuinfo":
                if cpu_flags is None:
                    raise PermissionError(path)
                text = "".join(
                    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nflags\t\t: {cpu_flags}\n"
                    f"vmx flags\t: vnmi preemption_timer\nbugs\t\t: spectre_v1\n\n"
                    for n in range(2)
                )
                return io.StringIO(text)
            return real_open(path, *args, **kwargs)

        def fake_exists(path):
            return kvm_exists if path == "/dev/kvm" else real_exists(path)

        def fake_access(path, mode, *args, **kwargs):
            if path == "/dev/kvm":
                return kvm_exists and kvm_usable
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(qemu, "open", fake_open, raising=False)
        monkeypatch.setattr(qemu.os.path, "exists", fake_exists)
        monkeypatch.setattr(qemu.os, "access", fake_access)

    return configure


BASE_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2"


@pytest.mark.parametrize("vt", ["vmx", "svm"])
def test_kvm_when_dev_kvm_usable_and_cpu_has_vt(host, vt):
    host(f"{BASE_FLAGS} {vt} lm")
    assert qemu.detect_accel("auto")[0] == "kvm"
    assert qemu.detect_accel("kvm")[0] == "kvm"


def test_tcg_when_cpu_has_no_vt_even_if_dev_kvm_is_usable(host):
    host(f"{BASE_FLAGS} hypervisor lm")
    accel, reason = qemu.detect_accel("auto")
    assert accel == "tcg"
    assert "vmx/svm" in reason and "TCG" in reason


def test_vt_flag_must_be_a_whole_word(host):
    host(f"{BASE_FLAGS} svm_lock vmx_ept_ad")  # look-alikes, not the flags
    assert qemu.detect_accel("auto")[0] == "tcg"


@pytest.mark.parametrize(("exists", "usable"), [(False, False), (True, False)])
def test_tcg_when_dev_kvm_is_missing_or_not_usable(host, exists, usable):
    host(f"{BASE_FLAGS} vmx", kvm_exists=exists, kvm_usable=usable)
    accel, reason = qemu.detect_accel("auto")
    assert accel == "tcg"
    assert "/dev/kvm is not usable" in reason


def test_tcg_when_cpuinfo_is_unreadable(host):
    host(None)
    assert qemu.detect_accel("auto")[0] == "tcg"


@pytest.mark.parametrize(
    ("flags", "exists", "why"),
    [(f"{BASE_FLAGS} vmx", False, "/dev/kvm is not usable"), (BASE_FLAGS, True, "no vmx/svm")],
)
def test_kvm_requested_but_unavailable_is_an_error(host, flags, exists, why):
    host(flags, kvm_exists=exists)
    with pytest.raises(RuntimeError, match="accel kvm requested") as info:
        qemu.detect_accel("kvm")
    assert why in str(info.value)


def test_tcg_requested_is_honoured_on_a_kvm_host(host):
    host(f"{BASE_FLAGS} vmx")
    assert qemu.detect_accel("tcg")[0] == "tcg"


# --- qemu_command --------------------------------------------------------------------------------------------


def values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == option]


HOST_KEY = tls.new_ssh_key()
D = "/state/qemu/default"
PROPS = {"instance_dir": D, "name": "default", "cpus": 3, "memory": 3072, "network": "user", "engine_port": 2376}
OUTS = {"accel": "kvm", "ssh_port": 40022, "engine_host_port": 42376, "mac": "52:54:00:12:34:56", "tap": None}
IMAGE = {"disk": "/cache/base.qcow2", "kernel": None, "initrd": None, "cmdline": "console=ttyS0"}


def test_user_mode_command():
    cmd = qemu.qemu_command(PROPS, OUTS, IMAGE)
    assert cmd[0] == "qemu-system-x86_64"
    assert values(cmd, "-name") == ["default"]
    assert values(cmd, "-machine") == ["q35,accel=kvm"]
    assert values(cmd, "-cpu") == ["host"]
    assert values(cmd, "-smp") == ["3"] and values(cmd, "-m") == ["3072"]
    (netdev,) = values(cmd, "-netdev")
    kind, *params = netdev.split(",")
    assert kind == "user"
    assert "id=n0" in params
    forwards = sorted(p for p in params if p.startswith("hostfwd="))
    # both forwards bound to loopback only: the engine port is not exposed beyond the host
    assert forwards == ["hostfwd=tcp:127.0.0.1:40022-:22", "hostfwd=tcp:127.0.0.1:42376-:2376"]
    assert values(cmd, "-device")[0] == "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"
    assert "-daemonize" in cmd
    assert values(cmd, "-pidfile") == [f"{D}/qemu.pid"]
    (qmp,) = values(cmd, "-qmp")
    assert qmp.startswith(f"unix:{D}/qmp.sock,") and "server=on" in qmp and "wait=off" in qmp
    assert values(cmd, "-serial") == [f"file:{D}/serial.log"]
    drives = values(cmd, "-drive")
    assert any(d.startswith(f"file={D}/disk.qcow2,") and "format=qcow2" in d for d in drives)
    assert any(d.startswith(f"file={D}/seed.iso,") and "readonly=on" in d for d in drives)
    assert "-kernel" not in cmd and "-initrd" not in cmd
    assert values(cmd, "-display") == ["none"]


@pytest.mark.parametrize(("accel", "cpu"), [("kvm", "host"), ("tcg", "max")])
def test_accel_and_cpu_go_together(accel, cpu):
    cmd = qemu.qemu_command(PROPS, {**OUTS, "accel": accel}, IMAGE)
    assert values(cmd, "-machine") == [f"q35,accel={accel}"]
    assert values(cmd, "-cpu") == [cpu]


def test_custom_engine_port_is_forwarded():
    cmd = qemu.qemu_command({**PROPS, "engine_port": 3376}, {**OUTS, "engine_host_port": 43376}, IMAGE)
    assert "hostfwd=tcp:127.0.0.1:43376-:3376" in values(cmd, "-netdev")[0].split(",")


def test_direct_kernel_boot():
    image = {**IMAGE, "kernel": "/img/vmlinuz", "initrd": "/img/initrd", "cmdline": "root=LABEL=rootfs ro"}
    cmd = qemu.qemu_command(PROPS, OUTS, image)
    assert values(cmd, "-kernel") == ["/img/vmlinuz"]
    assert values(cmd, "-initrd") == ["/img/initrd"]
    assert values(cmd, "-append") == ["root=LABEL=rootfs ro"]


def test_bridge_mode_command_uses_a_tap():
    props = {**PROPS, "network": "bridge"}
    outs = {**OUTS, "tap": "dm0123456789", "ssh_port": 22, "engine_host_port": 2376}
    cmd = qemu.qemu_command(props, outs, IMAGE)
    (netdev,) = values(cmd, "-netdev")
    assert netdev.split(",") == ["tap", "id=n0", "ifname=dm0123456789", "script=no", "downscript=no"]
    assert "hostfwd" not in " ".join(cmd)
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56" in values(cmd, "-device")


# --- network_config -------------------------------------------------------------------------------------------


def bridge_config(mac: str, address: str, cidr: str, gateway: str) -> str:
    return seed.network_config({"primary": seed.ethernet(mac, address=address, cidr=cidr, gateway=gateway)})


def test_network_config_is_a_v2_config():
    text = bridge_config("52:54:00:12:34:56", "192.168.124.10", "192.168.124.0/24", "192.168.124.1")
    config = yaml.safe_load(text)
    assert config == json.loads(text)
    assert config["version"] == 2
    ((_, eth),) = config["ethernets"].items()
    assert eth["match"] == {"macaddress": "52:54:00:12:34:56"}
    assert eth["addresses"] == ["192.168.124.10/24"]
    assert eth["dhcp4"] is False
    iface = ipaddress.ip_interface(eth["addresses"][0])
    (route,) = eth["routes"]
    assert ipaddress.ip_network(route["to"]) == ipaddress.ip_network("0.0.0.0/0")
    assert ipaddress.ip_address(route["via"]) in iface.network
    assert route["via"] == "192.168.124.1"
    assert eth["nameservers"]["addresses"] == ["192.168.124.1"]


def test_network_config_prefix_follows_the_cidr():
    config = json.loads(bridge_config("52:54:00:00:00:01", "10.20.0.30", "10.20.0.0/16", "10.20.0.1"))
    (eth,) = config["ethernets"].values()
    assert eth["addresses"] == ["10.20.0.30/16"]


# --- VmProvider.diff --------------------------------------------------------------------------------------------


VM_INPUTS = {
    "name": "default", "instance_dir": D, "project_dir": "/src", "image": "debian-12-docker", "kernel": None,
    "initrd": None, "cmdline": "console=ttyS0", "cpus": 2, "memory": 2048, "disk": 20000, "ssh_user": "docker",
    "authorized_key": "ssh-ed25519 AAA", "accel_requested": "auto", "network": "user", "bridge": "dmbr0",
    "bridge_cidr": "192.168.124.0/24", "address": None, "engine_port": 2376,
}  # fmt: skip
VM_STATE = {**VM_INPUTS, "ip": "127.0.0.1", "ssh_port": 40022, "engine_host_port": 42376, "state": "running", "pid": 7}

@pytest.fixture(autouse=True)
def vm_process_alive(monkeypatch):
    """The VM of VM_STATE runs (its qemu is the process its pidfile names) and its disk is there."""
    monkeypatch.setattr(qemu, "running_pid", lambda instance_dir: 7)
    monkeypatch.setattr(qemu.VmProvider, "lost", lambda self, olds: False)


REPLACE_CHANGES = {
    "name": "other", "instance_dir": "/state/qemu/other", "image": "debian-12", "kernel": "/k", "initrd": "/i",
    "cmdline": "quiet", "disk": 30000, "ssh_user": "core", "authorized_key": "ssh-ed25519 BBB", "network": "bridge",
    "bridge": "br1", "bridge_cidr": "10.0.0.0/24", "address": "192.168.124.20", "engine_port": 3376,
}  # fmt: skip


@pytest.mark.parametrize(("key", "value"), sorted(REPLACE_CHANGES.items()))
def test_diff_replaces_on_identity_changes(key, value):
    diff = qemu.VmProvider().diff("id", VM_STATE, {**VM_INPUTS, key: value})
    assert diff.changes
    assert diff.replaces == [key]
    assert diff.delete_before_replace  # same instance dir: the old VM must go first


@pytest.mark.parametrize(("key", "value"), [("cpus", 4), ("memory", 4096), ("accel_requested", "tcg")])
def test_diff_restarts_in_place_on_size_changes(key, value):
    diff = qemu.VmProvider().diff("id", VM_STATE, {**VM_INPUTS, key: value})
    assert diff.changes
    assert not diff.replaces


def test_diff_restarts_a_stopped_vm():
    diff = qemu.VmProvider().diff("id", {**VM_STATE, "state": "stopped"}, VM_INPUTS)
    assert diff.changes and not diff.replaces


def test_diff_stops_a_running_vm_when_the_stack_wants_it_stopped():
    diff = qemu.VmProvider().diff("id", VM_STATE, {**VM_INPUTS, "power": "stopped"})
    assert diff.changes and not diff.replaces
    stopped = {**VM_STATE, "state": "stopped", "power": "stopped"}
    assert not qemu.VmProvider().diff("id", stopped, {**VM_INPUTS, "power": "stopped"}).changes


def test_update_to_stopped_powers_off_and_reports_stopped(monkeypatch):
    powered_off = []
    monkeypatch.setattr(qemu.VmProvider, "_power_off", lambda self, d: powered_off.append(d))
    monkeypatch.setattr(qemu, "detect_accel", lambda requested: ("tcg", "test"))
    outs = qemu.VmProvider().update("id", VM_STATE, {**VM_INPUTS, "power": "stopped"}).outs
    assert powered_off == [D]
    assert outs["state"] == "stopped" and outs["pid"] is None
    assert outs["ssh_port"] == VM_STATE["ssh_port"]  # the forwards are kept for the next start


def test_diff_no_change():
    diff = qemu.VmProvider().diff("id", VM_STATE, dict(VM_INPUTS))
    assert not diff.changes and not diff.replaces


def test_diff_replaces_a_vm_whose_disk_is_gone(monkeypatch, capsys):
    """Its instance directory was deleted: a plain `up` makes a new VM, and says why."""
    monkeypatch.undo()
    diff = qemu.VmProvider().diff("id", VM_STATE, dict(VM_INPUTS))
    assert diff.changes and diff.replaces == ["instance_dir"]
    assert f"machine default: its disk {D}/disk.qcow2 is gone" in capsys.readouterr().err


def test_diff_ignores_the_project_checkout_location():
    diff = qemu.VmProvider().diff("id", VM_STATE, {**VM_INPUTS, "project_dir": "/elsewhere"})
    assert not diff.changes


# --- address leases (bridge mode) ------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path))
    return tmp_path


def test_lease_addresses(state):
    cidr = "192.168.124.0/24"
    a = _bridge.lease_address("dmbr0", cidr, "/inst/a", None)
    b = _bridge.lease_address("dmbr0", cidr, "/inst/b", None)
    assert a != b
    for address in (a, b):
        assert ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
        assert address != "192.168.124.1"  # the host's address on the bridge
    assert _bridge.lease_address("dmbr0", cidr, "/inst/a", None) == a  # re-leasing is idempotent
    with pytest.raises(RuntimeError, match="already used"):
        _bridge.lease_address("dmbr0", cidr, "/inst/c", b)
    _bridge.release_address("dmbr0", b)
    assert _bridge.lease_address("dmbr0", cidr, "/inst/c", b) == b


def test_lease_in_the_smallest_allowed_cidr(state):
    cidr = "192.168.50.0/29"
    Options(network="bridge", bridge_cidr=cidr)  # accepted by the config
    address = _bridge.lease_address("dmbr9", cidr, "/inst/a", None)
    assert ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
    assert address != "192.168.50.1"


# --- seed ----------------------------------------------------------------------------------------------------------


def test_user_data_is_cloud_config():
    text = seed.user_data("dev", "docker", "ssh-ed25519 AAAAC3 me@host", HOST_KEY)
    header, body = text.split("\n", 1)
    assert header == "#cloud-config"
    config = yaml.safe_load(body)
    assert config == json.loads(body)
    assert config["hostname"] == "dev"
    (user,) = config["users"]
    assert user["name"] == "docker"
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3 me@host"]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["lock_passwd"] is True
    assert "sudo" in user["groups"]
    assert config["ssh_pwauth"] is False
    # the docker group is created as a system group before users are added
    assert any("groupadd --system docker" in cmd for cmd in config["bootcmd"])
    # sshd gets the host key we made, and only it: every dial pins it
    assert config["ssh_keys"] == {"ed25519_private": HOST_KEY[0], "ed25519_public": HOST_KEY[1]}
    assert config["ssh_deletekeys"] is True and config["ssh_genkeytypes"] == []
    assert any("getent group docker" in cmd for cmd in config["bootcmd"])


def test_meta_data():
    config = yaml.safe_load(seed.meta_data("dev-1234", "dev"))
    assert config == {"instance-id": "dev-1234", "local-hostname": "dev"}


def read_iso(data: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    return iso


def iso_file(iso: pycdlib.PyCdlib, **path) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue().decode()


SEED_FILES = {
    "user-data": seed.user_data("dev", "docker", "ssh-ed25519 AAAAC3 me@host", HOST_KEY),
    "meta-data": seed.meta_data("dev-1", "dev"),
}


def test_seed_iso_is_a_nocloud_volume():
    iso = read_iso(seed.build_iso(SEED_FILES))
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == "cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
        rr_names = {c.rock_ridge.name() for c in iso.list_children(iso_path="/") if c.rock_ridge and c.is_file()}
        assert rr_names == {b"user-data", b"meta-data"}
        joliet = {c.file_identifier().decode("utf-16-be") for c in iso.list_children(joliet_path="/") if c.is_file()}
        assert joliet == {"user-data", "meta-data"}
        for name, content in SEED_FILES.items():
            assert iso_file(iso, rr_path=f"/{name}") == content
            assert iso_file(iso, joliet_path=f"/{name}") == content
    finally:
        iso.close()


def test_seed_iso_with_network_config():
    network = bridge_config("52:54:00:00:00:01", "192.168.124.10", "192.168.124.0/24", "192.168.124.1")
    iso = read_iso(seed.build_iso({**SEED_FILES, "network-config": network}))
    try:
        assert iso_file(iso, rr_path="/network-config") == network
        assert iso_file(iso, joliet_path="/network-config") == network
    finally:
        iso.close()
