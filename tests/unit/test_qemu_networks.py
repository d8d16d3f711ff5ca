"""The QEMU driver's networks without a VM: the private network's options and checks, its address leases, the VM
provider creating and deleting members, the hub forwarding frames between unix datagram sockets, and what bridge
mode needs from the host."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
import time

import pycdlib
import pytest

from components import config
from components.config import ConfigError
from components.drivers import qemu as qemu_driver
from components.drivers._local import images
from components.drivers._local import process as _local
from components.drivers.qemu import bridge as _bridge
from components.drivers.qemu import hub as l2hub
from components.drivers.qemu import network as _private
from components.drivers.qemu import vm as qemu
from components.drivers.qemu.options import DEFAULT_PRIVATE_CIDR, Options
from components.steps import tls
from tests.unit.conftest import run_program

HOST_KEY = tls.new_ssh_key()
OWNER = {"project": "docker-machine", "stack": "unit", "backend": "file:///backend"}

CIDR = DEFAULT_PRIVATE_CIDR
# The real check, before the fixture below replaces it (preflight would run QEMU in every program test).
QEMU_HAS_DGRAM = qemu_driver.qemu_has_dgram


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(qemu_driver, "qemu_has_dgram", lambda: True)
    return tmp_path / "state"


def error_of(machines, *, load: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        config.load(json.dumps(machines)) if load else config.parse(machines)
    return str(info.value)


def private(name: str, **options) -> dict:
    return {"name": name, "options": {"private_network": True, **options}}


# --- options ---------------------------------------------------------------------------------------------------


def test_private_network_is_off_by_default_with_a_default_subnet():
    options = config.parse([{"name": "a"}]).machines[0].options
    assert options.private_network is False
    assert options.private_cidr == "192.168.125.0/24"
    on = config.parse([private("a")]).machines[0].options
    assert on.private_network is True and on.private_cidr == CIDR


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("nope", "not a valid IPv4 CIDR"),
        ("192.168.125.1/24", "host bits set"),
        ("192.168.125.0/30", "/29 or shorter"),
        ("10.0.0.0/8", "overlaps 10.0.2.0/24, QEMU's user network"),
        ("10.0.2.0/28", "overlaps 10.0.2.0/24"),
    ],
)
def test_bad_private_cidr_names_the_field(cidr, why):
    message = error_of([private("a", private_cidr=cidr)])
    assert "machines[a].options.private_cidr" in message and why in message


def test_private_network_is_a_strict_boolean():
    message = error_of([{"name": "a", "options": {"private_network": "yes"}}])
    assert "machines[a].options.private_network" in message and "valid boolean" in message


def test_private_network_is_refused_in_bridge_mode():
    message = error_of([private("a", network="bridge")])
    assert "machines[a].options" in message
    assert "private_network: in bridge mode" in message and "network: user" in message


def test_private_cidr_without_the_private_network_is_refused():
    message = error_of([{"name": "a", "options": {"private_cidr": "192.168.77.0/24"}}])
    assert "private_cidr: only used with private_network: true" in message


def test_machines_of_a_stack_share_one_private_cidr():
    message = error_of([private("a"), private("b", private_cidr="192.168.77.0/24")], load=True)
    (line,) = message.splitlines()[1:]
    assert line.strip() == (
        "machines[b].options.private_cidr: '192.168.77.0/24' differs from machines[a]'s '192.168.125.0/24'; "
        "a stack has one private network"
    )


def test_more_machines_than_addresses_is_refused_before_anything_is_created():
    machines = [private(f"m{i}", private_cidr="192.168.77.0/29") for i in range(7)]
    message = error_of(machines, load=True)
    assert "machines[m6].options.private_network: 7 machines on the private network" in message
    assert "192.168.77.0/29 has 6 addresses" in message
    config.load(json.dumps(machines[:6]))


def test_an_old_qemu_without_dgram_is_named(monkeypatch):
    monkeypatch.setattr(qemu_driver, "qemu_has_dgram", lambda: False)
    message = error_of([private("a")], load=True)
    assert "machines[a].options.private_network: needs QEMU 7.2 or later (-netdev dgram)" in message
    config.load(json.dumps([{"name": "a"}]))  # machines without it do not care


@pytest.mark.skipif(not qemu_driver.shutil.which("qemu-system-x86_64"), reason="no QEMU here")
def test_this_hosts_qemu_is_asked_for_dgram():
    version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(n) for n in version.split("version ", 1)[1].split(".")[:2])
    assert QEMU_HAS_DGRAM() is ((major, minor) >= (7, 2))


def test_no_qemu_is_left_to_the_vm_to_report(monkeypatch):
    monkeypatch.setattr(qemu_driver.shutil, "which", lambda command: None)
    assert QEMU_HAS_DGRAM() is None


# --- the program: inputs, the Host contract, outputs ----------------------------------------------------------


def test_members_get_the_stacks_network_and_others_none(state):
    program = run_program([private("a"), private("b"), {"name": "c"}],
                          overrides={"dynamic/qemu:Vm": {"private_ip": "192.168.125.9"}})  # fmt: skip
    network = os.path.join(str(state), "docker-machine-unit", "l2")
    for name in ("a", "b"):
        assert program.named(f"{name}-vm").inputs["private_network"] == {"cidr": CIDR, "dir": network}
    assert program.named("c-vm").inputs.get("private_network") is None
    machines = program.outputs["machines"]
    assert machines["a"]["privateIp"] == "192.168.125.9" and machines["b"]["privateIp"] == "192.168.125.9"
    assert machines["c"]["privateIp"] is None
    assert machines["a"]["ip"] == "127.0.0.1"  # the Docker client still dials the forwarded port


def test_a_bridge_vm_is_reached_at_its_own_address(monkeypatch):
    monkeypatch.setattr(_bridge, "problems", lambda: [])
    program = run_program([{"name": "a", "options": {"network": "bridge"}}],
                          overrides={"dynamic/qemu:Vm": {"ip": "192.168.124.2", "private_ip": None}})  # fmt: skip
    assert program.outputs["machines"]["a"]["privateIp"] == "192.168.124.2"


# --- the qemu command line and the provider's diff ----------------------------------------------------------


def test_a_member_has_a_second_nic_on_the_hub():
    props = {"instance_dir": "/s/qemu/a", "name": "a", "cpus": 2, "memory": 2048, "network": "user",
             "engine_port": 2376, "private_network": {"cidr": CIDR, "dir": "/s/l2"}}  # fmt: skip
    outs = {"accel": "tcg", "ssh_port": 40022, "engine_host_port": 42376, "mac": "52:54:00:00:00:01",
            "private_mac": "52:54:00:00:00:02"}  # fmt: skip
    cmd = qemu.qemu_command(props, outs, {"disk": "/d", "kernel": None})
    netdevs = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-netdev"]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    assert netdevs[0].startswith("user,id=n0,")
    assert netdevs[1].split(",") == [
        "dgram", "id=n1", "local.type=unix", "local.path=/s/qemu/a/l2.sock", "remote.type=unix",
        "remote.path=/s/l2/hub.sock",
    ]  # fmt: skip
    assert devices[:2] == [
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:02"
    ]  # fmt: skip


def test_joining_or_leaving_the_private_network_replaces_the_vm():
    olds = {"instance_dir": "/s/qemu/a", "name": "a", "state": "stopped"}
    diff = qemu.VmProvider().diff("id", olds, {**olds, "private_network": {"cidr": CIDR, "dir": "/s/l2"}})
    assert diff.replaces == ["private_network"] and diff.delete_before_replace


def test_a_vm_from_before_the_option_is_left_alone(monkeypatch):
    monkeypatch.setattr(qemu.VmProvider, "lost", lambda self, olds: False)
    olds = {"instance_dir": "/s/qemu/a", "name": "a", "state": "stopped", "power": "stopped"}
    assert not qemu.VmProvider().diff("id", olds, {**olds, "private_network": None}).changes


# --- leases ------------------------------------------------------------------------------------------------------


def test_leases_are_distinct_stable_and_reused_after_a_member_leaves(tmp_path, monkeypatch):
    monkeypatch.setattr(l2hub, "stop", lambda directory: None)
    net = str(tmp_path / "l2")
    a, b, c = (str(tmp_path / f"{name}.sock") for name in "abc")
    first, second = _private.lease(net, CIDR, a, OWNER), _private.lease(net, CIDR, b, OWNER)
    assert (first, second) == ("192.168.125.1", "192.168.125.2")
    assert _private.lease(net, CIDR, a, OWNER) == first  # the same member: the same address (an interrupted create)
    assert open(os.path.join(net, "leases", first)).read() == a  # the lease names the member's socket
    _private.leave(net, a, OWNER)
    assert _private.lease(net, CIDR, b, OWNER) == second  # the other member keeps its address
    assert _private.lease(net, CIDR, c, OWNER) == first
    assert sorted(os.listdir(os.path.join(net, "leases"))) == [first, second]  # nothing written aside is left


def test_the_last_member_leaving_removes_the_network(tmp_path, monkeypatch):
    stopped = []
    monkeypatch.setattr(l2hub, "stop", stopped.append)
    net = str(tmp_path / "l2")
    _private.lease(net, CIDR, "/x/a.sock", OWNER)
    _private.lease(net, CIDR, "/x/b.sock", OWNER)
    _private.leave(net, "/x/a.sock", OWNER)
    assert os.path.isdir(net) and stopped == []
    _private.leave(net, "/x/b.sock", OWNER)
    assert not os.path.exists(net) and stopped == [net]
    _private.leave(net, "/x/b.sock", OWNER)  # again (a retried delete): nothing to do


def test_a_full_network_is_an_error(tmp_path):
    net = str(tmp_path / "l2")
    for n in range(6):
        _private.lease(net, "192.168.77.0/29", f"/x/{n}.sock", OWNER)
    with pytest.raises(RuntimeError, match="no free address left in private_cidr 192.168.77.0/29"):
        _private.lease(net, "192.168.77.0/29", "/x/7.sock", OWNER)


def test_a_socket_path_too_long_for_unix_sockets_is_an_error(tmp_path):
    member = "/" + "d" * 100 + "/qemu/a/l2.sock"
    with pytest.raises(RuntimeError, match="more than the 107 a unix socket allows; use a shorter state directory"):
        _private.lease(str(tmp_path / "l2"), CIDR, member, OWNER)
    assert not os.path.exists(tmp_path / "l2")


# --- the VM provider: create and delete members for real, QEMU itself faked ------------------------------------


@pytest.fixture
def provider(tmp_path, monkeypatch):
    """A VmProvider whose qemu and qemu-img only record their command lines; the hub is the real daemon."""
    started: list[list[str]] = []

    def fake_run(*cmd, check=True):
        if cmd[0] == "qemu-system-x86_64":
            started.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(qemu, "run", fake_run)
    monkeypatch.setattr(images, "run", fake_run)  # qemu-img
    monkeypatch.setattr(qemu, "resolve_image", lambda props: {"disk": "/img/disk.qcow2", "kernel": None,
                                                               "format": "qcow2"})  # fmt: skip
    monkeypatch.setattr(qemu, "detect_accel", lambda requested: ("tcg", "test"))
    return qemu.VmProvider(), started


def member_props(state_dir: str, name: str) -> dict:
    options = Options(private_network=True, template=False)  # cold boots: these tests are about the network
    return qemu.vm_props(name, options, state_dir, "/src", authorized_key="ssh-ed25519 AAAA test", host_key=HOST_KEY,
                         owner=OWNER, engine_port=2376)  # fmt: skip


def seed_network_config(instance_dir: str) -> dict:
    iso = pycdlib.PyCdlib()
    iso.open(os.path.join(instance_dir, "seed.iso"))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/network-config")
    finally:
        iso.close()
    return json.loads(out.getvalue())


def hub_pid(network: str) -> int | None:
    pid = _local.read_pid(os.path.join(network, "hub.pid"))
    return pid if _local.alive(pid) else None


def test_members_are_created_and_deleted_with_their_addresses_and_hub(tmp_path, provider):
    vm, started = provider
    state_dir = str(tmp_path / "stack")
    network = _private.network_dir(state_dir)
    a, b = member_props(state_dir, "a"), member_props(state_dir, "b")
    outs_a, outs_b = vm.create(a).outs, vm.create(b).outs
    try:
        assert (outs_a["private_ip"], outs_b["private_ip"]) == ("192.168.125.1", "192.168.125.2")
        # The guest's network config: DHCP on the user-mode NIC, the leased address on the private one, by MAC.
        config = seed_network_config(a["instance_dir"])
        assert config["ethernets"] == {
            "primary": {"match": {"macaddress": outs_a["mac"]}, "dhcp4": True},
            "private": {"match": {"macaddress": outs_a["private_mac"]}, "dhcp4": False,
                        "addresses": ["192.168.125.1/24"]},
        }  # fmt: skip
        assert outs_a["private_mac"] not in (outs_a["mac"], outs_b["private_mac"])
        assert f"virtio-net-pci,netdev=n1,mac={outs_a['private_mac']}" in started[0]
        # One hub for the stack, running before the VMs start.
        pid = hub_pid(network)
        assert pid and os.path.exists(os.path.join(network, "hub.sock"))
        vm.delete("id", {**a, **outs_a})
        assert not os.path.exists(a["instance_dir"])
        assert os.listdir(os.path.join(network, "leases")) == ["192.168.125.2"]
        assert hub_pid(network) == pid  # b is still a member
        # A VM started again (host rebooted, hub gone) gets its hub back.
        l2hub.stop(network)
        vm.update("id", {**b, **outs_b, "state": "stopped"}, b)
        assert hub_pid(network) not in (None, pid)
    finally:
        vm.delete("id", {**b, **outs_b})
        vm.delete("id", {**a, **outs_a})
    # The last member leaves nothing: no hub, no socket, no lease, no directory.
    assert not os.path.exists(network) and not os.path.exists(b["instance_dir"])
    assert hub_pid(network) is None


# --- the hub ------------------------------------------------------------------------------------------------------


class Net:
    """A hub in a thread, and member sockets named by lease files as the driver writes them."""

    def __init__(self, directory):
        self.dir = str(directory)
        os.makedirs(os.path.join(self.dir, "leases"))
        self.members: dict[str, socket.socket] = {}
        self.hub = l2hub.Hub(self.dir)
        # Connected while the path exists: it wakes the hub once the path is gone (no waiting out its poll).
        self.waker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.waker.connect(os.path.join(self.dir, "hub.sock"))
        self.thread = threading.Thread(target=self.hub.run, daemon=True)
        self.thread.start()

    def add(self, name: str, bind: bool = True) -> socket.socket | None:
        path = os.path.join(self.dir, f"{name}.sock")
        with open(os.path.join(self.dir, "leases", f"10.9.0.{len(self.members) + 1}"), "w") as f:
            f.write(path)
        self.members[name] = None
        if bind:
            self.members[name] = self.bind(name)
        return self.members[name]

    def bind(self, name: str) -> socket.socket:
        path = os.path.join(self.dir, f"{name}.sock")
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        return sock

    def send(self, sender: socket.socket, frame: bytes) -> None:
        sender.sendto(frame, os.path.join(self.dir, "hub.sock"))

    def stop(self) -> None:
        os.unlink(os.path.join(self.dir, "hub.sock"))
        self.waker.send(b"")
        self.thread.join(5)
        self.waker.close()
        self.hub.close()


def nothing_arrives(sock: socket.socket) -> bool:
    sock.settimeout(0.3)
    try:
        sock.recv(100)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    return False


@pytest.fixture
def net(tmp_path):
    network = Net(tmp_path)
    yield network
    if network.thread.is_alive():
        network.stop()


def test_a_frame_reaches_every_other_member_including_one_that_never_sent(net):
    a, b, c = net.add("a"), net.add("b"), net.add("c")
    net.send(a, b"ARP who-has 192.168.125.2")
    assert b.recv(100) == b"ARP who-has 192.168.125.2" and c.recv(100) == b"ARP who-has 192.168.125.2"
    assert nothing_arrives(a)  # not back to its sender


def test_what_is_no_ethernet_frame_is_not_passed_on(net):
    a, b = net.add("a"), net.add("b")
    net.send(a, b"")  # QEMU would stop receiving on an empty datagram
    net.send(a, b"short")
    assert nothing_arrives(b)


def test_a_member_added_later_receives_and_one_removed_does_not(net):
    a, b = net.add("a"), net.add("b")
    net.send(a, b"frame one ......")
    assert b.recv(100) == b"frame one ......"
    c = net.add("c")
    for name in os.listdir(os.path.join(net.dir, "leases")):
        if open(os.path.join(net.dir, "leases", name)).read().endswith("b.sock"):
            os.unlink(os.path.join(net.dir, "leases", name))
    net.send(a, b"frame two ......")
    assert c.recv(100) == b"frame two ......"
    assert nothing_arrives(b)


def test_a_member_that_does_not_read_yet_gets_its_frames_later_in_order(net):
    a, b = net.add("a"), net.add("b")
    frames = [f"frame {n:08d}.....".encode() for n in range(200)]  # the kernel holds 10 datagrams per socket
    for frame in frames:
        net.send(a, frame)
    time.sleep(0.3)
    assert [b.recv(100) for _ in frames] == frames


def test_a_member_that_is_not_running_does_not_hold_up_the_others(net):
    a, b = net.add("a"), net.add("b")
    net.add("stopped", bind=False)
    net.send(a, b"hello, ethernet")
    assert b.recv(100) == b"hello, ethernet"


def test_a_member_restarted_with_a_new_socket_is_reached_again(net):
    a, b = net.add("a"), net.add("b")
    net.send(a, b"frame before ..")
    assert b.recv(100) == b"frame before .."
    b.close()
    b = net.bind("b")  # QEMU started again: the same path, a new socket
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        net.send(a, b"frame after ...")
        if not nothing_arrives(b):
            break
    else:
        pytest.fail("the restarted member never received a frame")


def test_the_hub_exits_when_its_socket_is_gone(net):
    net.stop()
    assert not net.thread.is_alive()


def test_the_daemon_starts_once_and_stops_leaving_no_socket_nor_pidfile(tmp_path):
    directory = str(tmp_path)
    l2hub.start(directory)
    pid = hub_pid(directory)
    try:
        assert pid and os.path.exists(os.path.join(directory, "hub.sock"))
        l2hub.start(directory)
        assert hub_pid(directory) == pid  # already running: left alone
    finally:
        l2hub.stop(directory)
    assert not _local.alive(pid)
    assert sorted(os.listdir(directory)) == ["hub.log"]
    assert "hub on" in open(os.path.join(directory, "hub.log")).read()


# --- bridge mode: what it needs from the host, at preview ------------------------------------------------------


def test_bridge_mode_without_root_is_refused_before_anything_is_created(monkeypatch):
    monkeypatch.setattr(_bridge.os, "geteuid", lambda: 1000)
    message = error_of([{"name": "a", "options": {"network": "bridge"}}], load=True)
    assert "machines[a].options.network: 'bridge' needs root" in message and "network: user" in message


def test_bridge_mode_names_missing_commands(monkeypatch):
    monkeypatch.setattr(_bridge.os, "geteuid", lambda: 0)
    monkeypatch.setattr(_bridge.shutil, "which", lambda command: None if command == "dnsmasq" else "/usr/sbin/x")
    message = error_of([{"name": "a", "options": {"network": "bridge"}}], load=True)
    assert "machines[a].options.network: 'bridge' needs dnsmasq (dnsmasq-base) on the host" in message


def test_machines_on_one_bridge_share_its_cidr(monkeypatch):
    monkeypatch.setattr(_bridge, "problems", lambda: [])
    machines = [
        {"name": "a", "options": {"network": "bridge"}},
        {"name": "b", "options": {"network": "bridge", "bridge_cidr": "192.168.90.0/24"}},
        {"name": "c", "options": {"network": "bridge", "bridge": "other", "bridge_cidr": "192.168.91.0/24"}},
    ]
    (line,) = error_of(machines, load=True).splitlines()[1:]
    assert line.strip() == (
        "machines[b].options.bridge_cidr: '192.168.90.0/24' differs from machines[a]'s '192.168.124.0/24' "
        "on bridge dmbr0"
    )


def test_a_stale_socket_and_pidfile_after_a_reboot_do_not_count_as_a_running_hub(tmp_path):
    directory = str(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(os.path.join(directory, "hub.sock"))
    stale.close()  # the file stays, nobody is bound to it
    with open(os.path.join(directory, "hub.pid"), "w") as f:
        f.write(str(os.getpid()))  # a live process, but not a hub
    assert not l2hub.running(directory)
    l2hub.start(directory)
    try:
        assert l2hub.running(directory) and hub_pid(directory) != os.getpid()
    finally:
        l2hub.stop(directory)


def test_forwarding_goes_back_to_what_it_was_after_the_last_bridge(state, tmp_path, monkeypatch):
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("0\n")
    monkeypatch.setattr(_bridge, "FORWARDING", str(forwarding))
    for bridge in ("br-a", "br-b"):
        os.makedirs(_bridge._bridge_dir(bridge))
        _bridge._forwarding_on()
        assert forwarding.read_text() == "1"
    os.rmdir(_bridge._bridge_dir("br-a"))
    _bridge._forwarding_back()
    assert forwarding.read_text() == "1"  # br-b still forwards
    os.rmdir(_bridge._bridge_dir("br-b"))
    _bridge._forwarding_back()
    assert forwarding.read_text() == "0" and not os.path.exists(_bridge._bridges_dir())


def test_forwarding_that_was_on_stays_on(state, tmp_path, monkeypatch):
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("1\n")
    monkeypatch.setattr(_bridge, "FORWARDING", str(forwarding))
    os.makedirs(_bridge._bridge_dir("br-a"))
    _bridge._forwarding_on()
    os.rmdir(_bridge._bridge_dir("br-a"))
    _bridge._forwarding_back()
    assert forwarding.read_text() == "1\n"
