"""The VirtualBox driver against an in-memory VirtualBox 6.1 (tests/unit/fake_vbox.py) under the real pyvbox:
the provider's calls and their order, state mapping, power, deletion, errors; the program-time check;
the resource graph under Pulumi mocks; and config validation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pulumi
import pycdlib
import pytest
import yaml

from components import config, ownership
from components.config import ConfigError
from components.drivers import virtualbox as vb
from components.drivers._vbox import colon_mac
from components.steps import tls
from tests.fakes.http import https_files
from tests.unit import fake_vbox as fake
from tests.unit.conftest import Program, run_program

GiB = 1024**3
VM_T = "pulumi-python:dynamic/virtualbox:Vm"
SSH_PORT = 42222
HOST_KEY = tls.new_ssh_key()
OWNER = ownership.Owner("docker-machine", "unit", "file:///state/backend")


@pytest.fixture
def world(monkeypatch, tmp_path) -> fake.World:
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("DMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vb, "_pause", lambda seconds: None)
    monkeypatch.setattr(vb, "free_port", lambda: SSH_PORT)
    return fake.install(monkeypatch, fake.World())


@pytest.fixture
def image(world, tmp_path) -> str:
    path = tmp_path / "images" / "ubuntu-24.04-server-cloudimg-amd64.vmdk"
    path.parent.mkdir()
    path.write_bytes(b"KDMV" + b"\0" * 512)
    world.image_sizes[str(path)] = int(3.5 * GiB)
    return str(path)


@pytest.fixture
def props(image, tmp_path):
    def make(name: str = "vb1", **overrides):
        values = {
            "name": name,
            "instance_dir": str(tmp_path / "state" / "docker-machine-unit" / "virtualbox" / name),
            "image": image,
            "os_type": "Ubuntu_64",
            "cpus": 1,
            "memory": 1024,
            "disk": 20000,
            "ssh_user": "docker",
            "authorized_key": "ssh-ed25519 AAAAC3Nza-test-public",
            "host_key": HOST_KEY[0],
            "host_key_public": HOST_KEY[1],
            "owner": OWNER.as_dict(),
            "hostonly_cidr": "192.168.56.1/24",
            "nat_nictype": "82540EM",
            "hostonly_nictype": "82540EM",
            "ui_type": "headless",
            "power": "running",
        }
        return {**values, **overrides}

    return make


def create(props: dict) -> dict:
    result = vb.VmProvider().create(props)
    assert result.id == result.outs["vm_id"]
    return result.outs


def in_order(names: list[str], expected: list[str]) -> bool:
    """``expected`` occurs in ``names`` as a subsequence."""
    it = iter(names)
    return all(any(n == e for n in it) for e in expected)


def since(world: fake.World, mark: int) -> list[str]:
    return world.names()[mark:]


# --- create -----------------------------------------------------------------------------------------------------------


def test_create_calls_in_order(world, props):
    outs = create(props())
    assert in_order(
        world.names(),
        [
            "IVirtualBox.findMachine",  # name collision check
            "IHost.createHostOnlyNetworkInterface",
            "IHostNetworkInterface.enableStaticIPConfig",
            "IVirtualBox.openMedium",  # the cached image
            "IVirtualBox.createMedium",
            "IMedium.cloneToBase",
            "IMedium.close",  # the image is not left in the media registry
            "IMedium.resize",
            "IVirtualBox.createMachine",
            "IMachine.memorySize=",
            "IMachine.CPUCount=",
            "IBIOSSettings.ACPIEnabled=",
            "IBIOSSettings.IOAPICEnabled=",
            "IMachine.setBootOrder",
            "IMachine.addStorageController",
            "INATEngine.addRedirect",
            "INetworkAdapter.hostOnlyInterface=",
            "IMachine.saveSettings",
            "IVirtualBox.registerMachine",
            "IVirtualBox.openMedium",  # the seed ISO
            "IMachine.lockMachine",
            "IMachine.attachDevice",
            "IMachine.attachDevice",
            "IMachine.saveSettings",
            "ISession.unlockMachine",
            "IMachine.launchVMProcess",
            "IProgress.waitForCompletion",
            "ISession.unlockMachine",
        ],
    )
    assert world.args("IMachine.lockMachine") == [("vb1", f"session#{_session(world, 0)}", fake.LockType.Write)]
    assert world.args("IMachine.launchVMProcess")[0][2:] == ("headless", [])
    assert outs["state"] == "running"
    assert (outs["ip"], outs["ssh_host"], outs["ssh_port"]) == ("192.168.56.2", "127.0.0.1", SSH_PORT)
    assert outs["hostonly_interface"] == "vboxnet0"


def _session(world: fake.World, index: int) -> int:
    return int(world.args("IMachine.lockMachine")[index][1].split("#")[1])


def test_created_vm_is_laid_out_like_docker_machines(world, props, image):
    outs = create(props(cpus=2, memory=2048, nat_nictype="virtio"))
    vm = world.machine_named("vb1")
    assert vm.registered and vm.state == fake.MachineState.Running and vm.online
    assert not vm.sessions  # our sessions are unlocked; only the VM process holds the machine
    assert (vm.memory, vm.cpus, vm.os_type, vm.rtc_utc) == (2048, 2, "Ubuntu_64", True)
    assert vm.acpi and vm.ioapic  # docker-machine's --acpi on --ioapic on
    assert vm.boot_order == [fake.DeviceType.HardDisk, fake.DeviceType.Null, fake.DeviceType.Null, fake.DeviceType.Null]
    assert vm.settings_file == os.path.join(props()["instance_dir"], "vb1.vbox")
    nat, hostonly = vm.adapters[0], vm.adapters[1]
    assert nat.enabled and nat.attachment == fake.NetworkAttachmentType.NAT
    assert nat.adapter_type == fake.NetworkAdapterType.Virtio and nat.dns_proxy
    assert nat.redirects == [f"ssh,{fake.NATProtocol.TCP},127.0.0.1,{SSH_PORT},,22"]
    assert hostonly.enabled and hostonly.attachment == fake.NetworkAttachmentType.HostOnly
    assert hostonly.host_only_interface == "vboxnet0" and hostonly.adapter_type == fake.NetworkAdapterType.I82540EM
    assert (nat.mac, hostonly.mac) == (outs["nat_mac"], outs["hostonly_mac"])
    assert nat.mac.startswith("080027") and hostonly.mac.startswith("080027") and nat.mac != hostonly.mac
    disk_kind, disk = vm.attachments[("SATA", 0, 0)]
    dvd_kind, dvd = vm.attachments[("SATA", 1, 0)]
    assert (disk_kind, dvd_kind) == (fake.DeviceType.HardDisk, fake.DeviceType.DVD)
    assert disk.location == os.path.join(props()["instance_dir"], "disk.vdi") and disk.format == "VDI"
    assert disk.logicalSize == 20000 * 1024 * 1024
    assert dvd.location == os.path.join(props()["instance_dir"], "seed.iso")
    assert image not in world.media  # the cached image was closed again
    (iface,) = [i for i in world.host_interfaces if i.name == "vboxnet0"]
    assert (iface.IPAddress, iface.networkMask) == ("192.168.56.1", "255.255.255.0")


def test_seed_carries_user_key_and_static_hostonly_address(world, props):
    outs = create(props())
    iso = pycdlib.PyCdlib()
    iso.open(os.path.join(props()["instance_dir"], "seed.iso"))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"

        def read(name: str) -> str:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            return out.getvalue().decode()

        user_data, meta_data, network = read("user-data"), read("meta-data"), read("network-config")
    finally:
        iso.close()
    assert user_data.startswith("#cloud-config\n")
    (user,) = yaml.safe_load(user_data)["users"]
    assert user["name"] == "docker" and user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza-test-public"]
    assert "local-hostname: vb1" in meta_data
    net = yaml.safe_load(network)
    assert net["version"] == 2
    nat, hostonly = net["ethernets"]["nat"], net["ethernets"]["hostonly"]
    assert nat == {"match": {"macaddress": colon_mac(outs["nat_mac"])}, "dhcp4": True}
    assert hostonly["match"] == {"macaddress": colon_mac(outs["hostonly_mac"])}
    assert hostonly["addresses"] == ["192.168.56.2/24"] and hostonly["dhcp4"] is False
    assert "routes" not in hostonly and "gateway4" not in hostonly  # the NAT NIC keeps the default route


def test_existing_hostonly_interface_is_reused(world, props):
    world.add_interface("vboxnet0", "192.168.56.1", "255.255.255.0", host_only=True)
    world.hostonly_allowed = []  # reconfiguring an interface would fail
    outs = create(props())
    assert "IHost.createHostOnlyNetworkInterface" not in world.names()
    assert "IHostNetworkInterface.enableStaticIPConfig" not in world.names()
    assert (outs["hostonly_interface"], outs["ip"]) == ("vboxnet0", "192.168.56.2")


def test_dhcp_range_is_skipped(world, props):
    world.add_interface("vboxnet0", "192.168.56.1", "255.255.255.0", host_only=True)
    world.add_dhcp_server("vboxnet0", "192.168.56.2", "255.255.255.0", "192.168.56.3", "192.168.56.10")
    assert create(props("a"))["ip"] == "192.168.56.11"  # neither the DHCP server nor its range
    assert create(props("b", hostonly_ip="192.168.56.99"))["ip"] == "192.168.56.99"
    with pytest.raises(RuntimeError, match="192.168.56.5 is handed out by the DHCP server"):
        create(props("c", hostonly_ip="192.168.56.5"))
    world.dhcp_servers["HostInterfaceNetworking-vboxnet0"].enabled = False
    assert create(props("d"))["ip"] == "192.168.56.2"


def test_addresses_are_leased_once_and_released_on_delete(world, props):
    first, second = create(props("a")), create(props("b"))
    assert (first["ip"], second["ip"]) == ("192.168.56.2", "192.168.56.3")
    vb.VmProvider().delete(first["vm_id"], first)
    assert create(props("c"))["ip"] == "192.168.56.2"


def test_fixed_hostonly_address_taken_by_another_vm(world, props):
    create(props("a", hostonly_ip="192.168.56.10"))
    with pytest.raises(RuntimeError, match="192.168.56.10 is already used"):
        create(props("b", hostonly_ip="192.168.56.10"))
    assert "b" not in [m.name for m in world.machines.values()]


def test_powered_off_when_the_stack_wants_it_stopped(world, props):
    outs = create(props(power="stopped"))
    assert "IMachine.launchVMProcess" not in world.names()
    assert outs["state"] == "stopped"


def test_xpcom_threads_are_attached(world, props):
    create(props())
    assert world.threads_attached >= 1


# --- errors at create -------------------------------------------------------------------------------------------------


def test_name_collision_with_another_vm(world, props, tmp_path):
    world.add_vm("vb1", str(tmp_path / "VirtualBox VMs" / "vb1"))
    with pytest.raises(RuntimeError, match=r"a VirtualBox VM named 'vb1' already exists .*VBoxManage unregistervm"):
        create(props())
    assert "IVirtualBox.createMachine" not in world.names()
    assert len(world.machines) == 1 and os.path.exists(tmp_path / "VirtualBox VMs" / "vb1" / "vb1.vbox")


def test_leftover_of_an_interrupted_create_is_replaced(world, props):
    leftover = world.add_vm("vb1", props()["instance_dir"], state=fake.MachineState.Running)
    os.makedirs(props()["instance_dir"], exist_ok=True)
    ownership.write(props()["instance_dir"], OWNER)  # our own create, interrupted
    outs = create(props())
    assert leftover.uuid not in world.machines and outs["vm_id"] in world.machines
    assert in_order(world.names(), ["IConsole.powerDown", "IMachine.unregister", "IVirtualBox.createMachine"])


def test_hostonly_cidr_conflicting_with_a_host_interface(world, props):
    world.add_interface("wlan0", "192.168.56.20", "255.255.255.0")
    with pytest.raises(RuntimeError, match="host-only cidr conflicts with the network address of a host interface"):
        create(props())
    assert "IHost.createHostOnlyNetworkInterface" not in world.names()
    assert not world.machines and not os.path.exists(props()["instance_dir"])


def test_hostonly_cidr_refused_by_virtualbox(world, props):
    """VirtualBox >= 6.1.28 refuses 192.168.99.1/24 unless /etc/vbox/networks.conf allows it."""
    with pytest.raises(RuntimeError, match=r"Access denied.*networks.conf lists 192.168.99.0/24"):
        create(props(hostonly_cidr="192.168.99.1/24"))
    assert in_order(
        world.names(),
        ["IHost.createHostOnlyNetworkInterface", "IHostNetworkInterface.enableStaticIPConfig",
         "IHost.removeHostOnlyNetworkInterface"],
    )
    assert not [i for i in world.host_interfaces if i.name.startswith("vboxnet")]
    world.hostonly_allowed = None  # networks.conf: `* 0.0.0.0/0`
    assert create(props(hostonly_cidr="192.168.99.1/24"))["ip"] == "192.168.99.2"


def test_failed_start_leaves_nothing_behind(world, props):
    world.launch_error = "VT-x is not available (VERR_VMX_NO_VMX)"
    with pytest.raises(RuntimeError, match="starting VM vb1 failed: VT-x is not available"):
        create(props())
    assert not world.machines and not world.media
    assert not os.path.exists(props()["instance_dir"])
    world.launch_error = None
    assert create(props("again"))["ip"] == "192.168.56.2"  # the address was released


def test_missing_image_fails_before_any_vm(world, props, tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        create(props(image=str(tmp_path / "nope.vmdk")))
    assert "IVirtualBox.createMachine" not in world.names() and not world.media


def test_disk_smaller_than_the_image_is_not_shrunk(world, props, image):
    world.image_sizes[image] = 30000 * 1024 * 1024
    create(props(disk=20000))
    assert "IMedium.resize" not in world.names()


def test_ova_disk_is_extracted_once_into_the_cache(world, props, tmp_path):
    ova = tmp_path / "images" / "noble.ova"
    with tarfile.open(ova, "w") as archive:
        for name, data in (("noble.ovf", b"<Envelope/>"), ("noble-disk1.vmdk", b"KDMV" + b"\0" * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    create(props("a", image=str(ova)))
    create(props("b", image=str(ova)))
    opened = [args[0] for args in world.args("IVirtualBox.openMedium") if args[1] == fake.DeviceType.HardDisk]
    assert len(set(opened)) == 1 and opened[0].startswith(str(tmp_path / "cache"))
    assert opened[0].endswith("noble-disk1.vmdk")


def test_image_url_is_downloaded_once(world, props, pki, monkeypatch):
    body = b"KDMV" + b"\0" * 64
    with https_files({"/images/cloud.vmdk": body}, pki, monkeypatch) as server:
        url = f"{server.base}/images/cloud.vmdk"
        sha256 = hashlib.sha256(body).hexdigest()
        create(props("a", image=url, image_sha256=sha256))
        create(props("b", image=url, image_sha256=sha256))
    assert server.served == ["/images/cloud.vmdk"]


# --- read: docker-machine's state mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (fake.MachineState.Running, "running"),
        (fake.MachineState.Paused, "paused"),
        (fake.MachineState.Saved, "saved"),
        (fake.MachineState.PoweredOff, "stopped"),
        (fake.MachineState.Aborted, "stopped"),
        (fake.MachineState.Starting, "starting"),
        (fake.MachineState.Stopping, "stopping"),
        (fake.MachineState.Stuck, "error"),
    ],
)
def test_read_maps_states_like_docker_machine(world, props, state, expected):
    outs = create(props())
    world.machines[outs["vm_id"]].state = state
    result = vb.VmProvider().read(outs["vm_id"], outs)
    assert result.id == outs["vm_id"] and result.outs["state"] == expected
    assert result.outs["ip"] == outs["ip"]


def test_read_of_a_vm_deleted_outside_pulumi(world, props):
    outs = create(props())
    world.machines.clear()
    assert vb.VmProvider().read(outs["vm_id"], outs).id is None


# --- power ------------------------------------------------------------------------------------------------------------


def update(olds: dict, **news) -> dict:
    provider = vb.VmProvider()
    new_props = {k: v for k, v in {**olds, **news}.items() if k not in ("state",)}
    assert provider.diff(olds["vm_id"], olds, new_props).changes
    return provider.update(olds["vm_id"], olds, new_props).outs


def test_stop_is_the_acpi_power_button(world, props):
    outs = create(props())
    mark = len(world.calls)
    outs = update(outs, power="stopped")
    calls = since(world, mark)
    assert in_order(calls, ["IMachine.lockMachine", "IConsole.powerButton", "ISession.unlockMachine"])
    assert "IConsole.powerDown" not in calls
    assert world.args("IMachine.lockMachine")[-1][2] == fake.LockType.Shared
    assert outs["state"] == "stopped" and world.machine_named("vb1").state == fake.MachineState.PoweredOff


def test_stop_powers_off_a_guest_that_ignores_acpi(world, props, monkeypatch):
    monkeypatch.setattr(vb, "POWERDOWN_TIMEOUT", 0)
    world.acpi_honoured = False
    outs = update(create(props()), power="stopped")
    assert in_order(world.names(), ["IConsole.powerButton", "IConsole.powerDown"])
    assert outs["state"] == "stopped"


@pytest.mark.parametrize("state", [fake.MachineState.PoweredOff, fake.MachineState.Aborted, fake.MachineState.Saved])
def test_start_launches_headless(world, props, state):
    outs = create(props())
    vm = world.machines[outs["vm_id"]]
    vm.state, vm.online = state, False
    outs = vb.VmProvider().read(outs["vm_id"], outs).outs
    mark = len(world.calls)
    outs = update(outs)
    assert in_order(since(world, mark), ["IMachine.launchVMProcess", "ISession.unlockMachine"])
    assert outs["state"] == "running"


def test_start_resumes_a_paused_vm(world, props):
    outs = create(props())
    world.machines[outs["vm_id"]].state = fake.MachineState.Paused
    outs = update(vb.VmProvider().read(outs["vm_id"], outs).outs)
    assert "IConsole.resume" in world.names() and outs["state"] == "running"


def test_kill_of_a_paused_vm_is_power_off(world, props):
    outs = create(props())
    world.machines[outs["vm_id"]].state = fake.MachineState.Paused
    outs = update(vb.VmProvider().read(outs["vm_id"], outs).outs, power="stopped")
    assert "IConsole.powerButton" not in world.names() and "IConsole.powerDown" in world.names()
    assert outs["state"] == "stopped"


def test_hardware_change_power_cycles_the_vm(world, props):
    outs = create(props())
    mark = len(world.calls)
    outs = update(outs, cpus=2, memory=2048)
    assert in_order(
        since(world, mark),
        ["IConsole.powerButton", "IMachine.lockMachine", "IMachine.memorySize=", "IMachine.CPUCount=",
         "IMachine.saveSettings", "ISession.unlockMachine", "IMachine.launchVMProcess"],
    )
    vm = world.machine_named("vb1")
    assert (vm.cpus, vm.memory, vm.state) == (2, 2048, fake.MachineState.Running)
    assert outs["state"] == "running" and outs["ip"] == "192.168.56.2"


def test_mounts_are_shared_folders_and_a_change_power_cycles_keeping_the_disk(world, props, tmp_path):
    first, second = tmp_path / "proj", tmp_path / "data"
    first.mkdir()
    second.mkdir()
    outs = create(props(mounts=[{"path": str(first), "writable": True}]))
    vm = world.machine_named("vb1")
    assert [(f.name, f.hostPath, f.writable, f.autoMount) for f in vm.shared_folders.values()] == [
        ("mount0", str(first), True, False)  # the guest mounts it itself, at the same path (fstab)
    ]
    disk = vm.attachments[(vb.CONTROLLER, 0, 0)][1]
    mark = len(world.calls)
    update(outs, mounts=[{"path": str(second), "writable": False}])
    assert in_order(since(world, mark), ["IConsole.powerButton", "IMachine.removeSharedFolder",
                                         "IMachine.createSharedFolder", "IMachine.launchVMProcess"])  # fmt: skip
    assert [(f.hostPath, f.writable) for f in vm.shared_folders.values()] == [(str(second), False)]
    assert vm.attachments[(vb.CONTROLLER, 0, 0)][1] is disk and vm.state == fake.MachineState.Running


def test_mounts_none_shares_nothing(world, props):
    create(props(mounts=[]))
    assert world.machine_named("vb1").shared_folders == {}
    assert "IMachine.createSharedFolder" not in world.names()


def test_graph_shares_the_home_by_default_and_mounts_it_in_the_guest(world, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    program = run({})
    assert program.named("vb1-vm").inputs["mounts"] == [{"path": str(tmp_path), "writable": True}]
    script = program.named("vb1-mounts").inputs["stdin"]
    assert f"mount0 {tmp_path} vboxsf rw,uid=1000,gid=1000,nofail 0 0" in script
    assert program.named("vb1-wait-for-ssh").urn in program.named("vb1-mounts").dependencies


def test_hardware_change_of_a_saved_vm_discards_its_saved_state(world, props):
    outs = create(props(power="stopped"))
    world.machines[outs["vm_id"]].state = fake.MachineState.Saved
    outs = update(vb.VmProvider().read(outs["vm_id"], outs).outs, memory=1536, power="stopped")
    assert in_order(world.names(), ["IMachine.discardSavedState", "IMachine.memorySize="])
    assert world.machine_named("vb1").memory == 1536 and outs["state"] == "stopped"


# --- delete -----------------------------------------------------------------------------------------------------------


def test_delete_powers_off_unregisters_and_deletes_media(world, props):
    outs = create(props())
    d = props()["instance_dir"]
    mark = len(world.calls)
    vb.VmProvider().delete(outs["vm_id"], outs)
    calls = since(world, mark)
    assert in_order(
        calls,
        ["IMachine.lockMachine", "IConsole.powerDown", "ISession.unlockMachine", "IMachine.unregister",
         "IMachine.deleteConfig", "IProgress.waitForCompletion"],
    )
    assert "IConsole.powerButton" not in calls  # kill, not stop
    assert world.args("IMachine.unregister") == [("vb1", fake.CleanupMode.Full)]
    assert world.args("IMachine.deleteConfig") == [("vb1", ["disk.vdi", "seed.iso"])]
    assert not world.machines and not world.media and not os.path.exists(d)


def test_delete_of_a_stopped_or_saved_vm(world, props):
    outs = create(props())
    world.machines[outs["vm_id"]].state = fake.MachineState.Saved
    world.machines[outs["vm_id"]].online = False
    vb.VmProvider().delete(outs["vm_id"], outs)
    assert "IConsole.powerDown" not in world.names() and not world.machines


def test_delete_when_the_vm_is_already_gone(world, props):
    outs = create(props())
    world.machines.clear()
    vb.VmProvider().delete(outs["vm_id"], outs)
    assert not os.path.exists(props()["instance_dir"])


# --- diff -------------------------------------------------------------------------------------------------------------


def test_diff(props):
    provider = vb.VmProvider()
    olds = {**props(), "state": "running", "vm_id": "x"}
    assert not provider.diff("x", olds, props()).changes
    image = provider.diff("x", olds, props(image="/other.vdi"))
    assert image.changes and image.replaces == ["image"] and image.delete_before_replace
    cpus = provider.diff("x", olds, props(cpus=2))
    assert cpus.changes and not cpus.replaces
    assert provider.diff("x", olds, props(power="stopped")).changes
    assert not provider.diff("x", {**olds, "state": "saved"}, props(power="stopped")).changes
    assert provider.diff("x", {**olds, "state": "paused"}, props()).changes


# --- VirtualBox or its Python API missing or unsupported --------------------------------------------------------------


def machines(**options):
    return config.parse([{"name": "vb1", "driver": "virtualbox", "options": options}]).machines


def test_check_host_passes_on_a_supported_host(world):
    vb.check_host(machines())
    assert world.threads_attached >= 1


def test_vboxapi_missing_names_what_to_install(monkeypatch):
    fake.install(monkeypatch, None)
    with pytest.raises(ConfigError) as info:
        vb.check_host(machines())
    message = str(info.value)
    assert "vboxapi" in message and "VirtualBox 6.1" in message and "vboxapisetup.py install" in message
    assert "Traceback" not in message and "\n" not in message


def test_pyvbox_missing_names_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "virtualbox", None)
    with pytest.raises(ConfigError, match=r"pyvbox .* is not installed .*pip install -r requirements.txt"):
        vb.check_host(machines())


def test_virtualbox_that_does_not_answer(monkeypatch):
    world = fake.World()
    module = fake.vboxapi_module(world)

    def broken(*args):
        raise Exception("Cannot find VBoxPython module (tried: VBoxPython3_11, VBoxPython3, VBoxPython)")

    module.VirtualBoxManager = broken
    fake.install(monkeypatch, world)
    monkeypatch.setitem(__import__("sys").modules, "vboxapi", module)
    with pytest.raises(ConfigError, match="could not reach VirtualBox .*Cannot find VBoxPython"):
        vb.check_host(machines())


@pytest.mark.parametrize(
    ("version", "api", "why"),
    [("6.0.24", "6_0", "too old"), ("5.2.44", "5_2", "too old"), ("7.0.14", "7_0", "not supported"),
     ("7.1.4", "7_1", "not supported")],
)
def test_unsupported_virtualbox_versions(monkeypatch, props, version, api, why):
    world = fake.install(monkeypatch, fake.World(version=version, api_version=api))
    with pytest.raises(ConfigError, match=f"VirtualBox {version}.* {why}"):
        vb.check_host(machines())
    with pytest.raises(vb.VBoxUnavailable, match=why):
        vb.VmProvider().create(props())
    assert "IVirtualBox.createMachine" not in world.names()


def test_check_host_reports_cidr_conflicts_per_machine(world):
    world.add_interface("docker0", "192.168.56.129", "255.255.255.128")
    with pytest.raises(ConfigError) as info:
        vb.check_host(machines())
    assert str(info.value).startswith("invalid stack configuration:\n  machines[vb1].options.hostonly_cidr:")
    assert "docker0 (192.168.56.129/25)" in str(info.value)


def test_our_own_hostonly_interface_is_no_conflict(world):
    world.add_interface("vboxnet0", "192.168.56.1", "255.255.255.0", host_only=True)
    vb.check_host(machines())


def test_provider_without_vboxapi_says_what_to_install(monkeypatch, props):
    fake.install(monkeypatch, None)
    with pytest.raises(vb.VBoxUnavailable, match="vboxapisetup.py install"):
        vb.VmProvider().delete("some-id", props())


# --- fidelity of the fake ---------------------------------------------------------------------------------------------


def test_fake_enums_are_pyvbox_s():
    from virtualbox import library

    pairs = [
        (library.MachineState.running, fake.MachineState.Running),
        (library.MachineState.paused, fake.MachineState.Paused),
        (library.MachineState.saved, fake.MachineState.Saved),
        (library.MachineState.aborted, fake.MachineState.Aborted),
        (library.MachineState.stuck, fake.MachineState.Stuck),
        (library.MachineState.starting, fake.MachineState.Starting),
        (library.MachineState.last_online, fake.MachineState.LastOnline),
        (library.LockType.write, fake.LockType.Write),
        (library.CleanupMode.full, fake.CleanupMode.Full),
        (library.DeviceType.hard_disk, fake.DeviceType.HardDisk),
        (library.DeviceType.dvd, fake.DeviceType.DVD),
        (library.NetworkAttachmentType.host_only, fake.NetworkAttachmentType.HostOnly),
        (library.NetworkAdapterType.virtio, fake.NetworkAdapterType.Virtio),
        (library.NATProtocol.tcp, fake.NATProtocol.TCP),
        (library.HostNetworkInterfaceType.host_only, fake.HostNetworkInterfaceType.HostOnly),
        (library.SessionState.unlocked, fake.SessionState.Unlocked),
    ]
    for theirs, ours in pairs:
        assert int(theirs) == ours
    assert library.vbox_version.startswith("6.1.")
    assert library.VBoxErrorObjectNotFound.value == fake.VBOX_E_OBJECT_NOT_FOUND
    assert library.VBoxErrorFileError.value == fake.VBOX_E_FILE_ERROR
    assert library.OleErrorInvalidarg.value == fake.E_INVALIDARG


def test_fake_errors_surface_as_pyvbox_errors(world, tmp_path):
    import virtualbox
    from virtualbox import library

    vbox = virtualbox.VirtualBox()
    with pytest.raises(library.VBoxErrorObjectNotFound):
        vbox.find_machine("nope")
    settings = str(tmp_path / "x" / "x.vbox")
    vbox.register_machine(vbox.create_machine(settings, "x", [], "Ubuntu_64", ""))
    with pytest.raises(library.VBoxErrorFileError):
        vbox.create_machine(settings, "x", [], "Ubuntu_64", "")
    with pytest.raises(library.OleErrorInvalidarg):
        vbox.create_machine(str(tmp_path / "y.vbox"), "", [], "Ubuntu_64", "")
    machine = vbox.find_machine("x")
    with pytest.raises(fake.XPCOMError, match="not mutable"):
        machine.memory_size = 2048  # a registered machine changes only through a write lock
    with pytest.raises(TypeError):
        machine.lock_machine(virtualbox.Session(), 2)  # pyvbox wants its enum, not an int


# --- the resource graph under Pulumi mocks ----------------------------------------------------------------------------

VM_OUTS = {"vm_id": "0b9c2f1e-vm", "ip": "192.168.56.7", "ssh_host": "127.0.0.1", "ssh_port": 41022, "state": "running"}


def run(machine: dict, **kwargs) -> Program:
    machines = [{"name": "vb1", "driver": "virtualbox", **machine}]
    return run_program(machines, overrides={"dynamic/virtualbox:Vm": VM_OUTS}, **kwargs)


def test_graph_of_one_virtualbox_machine(world, tmp_path):
    program = run({"tls_san": ["vb.example.test"]})
    vm = program.named("vb1-vm")
    assert vm.typ == VM_T
    component = [r for r in program.resources if r.name == "vb1" and r.typ == "dockermachine:index:DockerMachine"]
    assert vm.urn_parent == component[0].urn
    inputs = vm.inputs
    assert (inputs["cpus"], inputs["memory"], inputs["disk"]) == (1, 1024, 20000)  # docker-machine's defaults
    assert inputs["image"] == vb.DEFAULT_IMAGE and inputs["ui_type"] == "headless"
    assert inputs["hostonly_cidr"] == "192.168.56.1/24" and inputs["power"] == "running"
    assert inputs["instance_dir"] == os.path.join(str(tmp_path / "state"), "docker-machine-unit", "virtualbox", "vb1")
    assert inputs["authorized_key"] == "ssh-ed25519 AAAA test"
    assert "engine_port" not in inputs  # the daemon is dialled directly on the host-only address
    assert program.named("vb1-ssh-key").urn in vm.dependencies


def test_graph_address_goes_into_the_certificate_and_the_client_url(world):
    program = run({"tls_san": ["vb.example.test"], "engine": {"port": 3376}})
    cert, check = program.named("vb1-server-cert"), program.named("vb1-docker-check")
    assert cert.inputs["sans"] == ["vb.example.test", VM_OUTS["ip"], "localhost"]
    assert (check.inputs["host"], check.inputs["port"]) == (VM_OUTS["ip"], 3376)
    connection = json.dumps(program.named("vb1-wait-for-ssh").inputs["connection"])
    assert '"host": "127.0.0.1"' in connection and f'"port": {VM_OUTS["ssh_port"]}' in connection
    assert '"user": "docker"' in connection
    out = program.outputs["machines"]["vb1"]
    assert (out["driver"], out["ip"], out["url"]) == ("virtualbox", VM_OUTS["ip"], "tcp://192.168.56.7:3376")
    assert out["ssh"] == {"host": "127.0.0.1", "port": VM_OUTS["ssh_port"], "user": "docker",
                          "hostKey": "ssh-ed25519 AAAA test"}  # fmt: skip
    assert out["env"]["DOCKER_HOST"] == "tcp://192.168.56.7:3376"
    assert out["privateIp"] == VM_OUTS["ip"]  # the host-only address is where the stack's other VMs reach it


def test_graph_all_host_cpus(world, monkeypatch):
    monkeypatch.setattr(vb.os, "cpu_count", lambda: 64)
    assert run({"options": {"cpus": -1}}).named("vb1-vm").inputs["cpus"] == 32


def test_graph_desired_power_state(world):
    assert run({"state": "stopped"}).named("vb1-vm").inputs["power"] == "stopped"


def test_program_without_vboxapi_fails_with_one_message(monkeypatch, tmp_path):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    fake.install(monkeypatch, None)
    recorded = Program()
    with pytest.raises(pulumi.RunError) as info:
        run({}, program=recorded)
    assert "vboxapi" in str(info.value) and "vboxapisetup.py" in str(info.value)
    assert not recorded.of_type("dynamic/virtualbox:Vm")


def test_program_with_virtualbox_7_fails_with_one_message(monkeypatch, tmp_path):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    fake.install(monkeypatch, fake.World(version="7.0.20", api_version="7_0"))
    with pytest.raises(pulumi.RunError, match="VirtualBox 7.0.20 .*install VirtualBox 6.1"):
        run({})


# --- config validation ------------------------------------------------------------------------------------------------


def error_of(**options) -> str:
    with pytest.raises(ConfigError) as info:
        machines(**options)
    return str(info.value)


def test_defaults_are_docker_machines():
    (machine,) = machines()
    options = machine.options
    assert isinstance(options, vb.Options)
    assert (options.cpus, options.memory, options.disk) == (1, 1024, 20000)
    assert options.hostonly_cidr == "192.168.56.1/24" and options.hostonly_ip is None
    assert (options.nat_nictype, options.hostonly_nictype, options.ui_type) == ("82540EM", "82540EM", "headless")
    assert options.ssh_user == "docker"


@pytest.mark.parametrize(
    ("cidr", "normal"),
    [("192.168.56.1/24", "192.168.56.1/24"), ("192.168.56.0/24", "192.168.56.1/24"),
     ("192.168.60.1/22", "192.168.60.1/22"), ("192.168.57.10/25", "192.168.57.10/25")],
)
def test_hostonly_cidr_forms(cidr, normal):
    assert machines(hostonly_cidr=cidr)[0].options.hostonly_cidr == normal


@pytest.mark.parametrize(
    ("cidr", "why"),
    [
        ("192.168.56.1", "needs a prefix length"),
        ("192.168.56.1/33", "not a valid IPv4 CIDR"),
        ("banana/24", "not a valid IPv4 CIDR"),
        ("192.168.56.1/30", "between /8 and /29"),
        ("192.168.56.255/24", "broadcast"),
        ("fd00::1/64", "not a valid IPv4 CIDR"),
    ],
)
def test_bad_hostonly_cidr(cidr, why):
    message = error_of(hostonly_cidr=cidr)
    assert "machines[vb1].options.hostonly_cidr:" in message and why in message


def test_cidr_outside_virtualbox_s_allowed_range_needs_the_opt_in():
    message = error_of(hostonly_cidr="192.168.99.1/24")  # docker-machine's old default
    assert "machines[vb1].options.hostonly_cidr:" in message
    assert "192.168.56.0/21" in message and "/etc/vbox/networks.conf" in message
    assert "allow_any_hostonly_cidr" in message
    options = machines(hostonly_cidr="192.168.99.1/24", allow_any_hostonly_cidr=True)[0].options
    assert options.hostonly_cidr == "192.168.99.1/24"


@pytest.mark.parametrize("ip", ["192.168.57.5", "192.168.56.1", "192.168.56.0", "192.168.56.255", "not-an-ip"])
def test_bad_hostonly_ip(ip):
    assert "machines[vb1].options.hostonly_ip:" in error_of(hostonly_ip=ip)


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"memory": -1024}, "memory", "greater than or equal to 512"),
        ({"memory": 256}, "memory", "greater than or equal to 512"),
        ({"cpus": 0}, "cpus", "between 1 and 32, or -1"),
        ({"cpus": 33}, "cpus", "between 1 and 32, or -1"),
        ({"cpus": -2}, "cpus", "between 1 and 32, or -1"),
        ({"disk": 1000}, "disk", "greater than or equal to 4096"),
        ({"image": "ubuntu.qcow2"}, "image", "absolute path or an https URL"),
        ({"image": "http://example.test/disk.vmdk"}, "image", "must be https:// URLs"),
        ({"image": "/images/ubuntu.qcow2"}, "image", "VMDK, VDI, OVA"),
        ({"image": "https://example.test/disk.img"}, "image", "VMDK, VDI, OVA"),
        ({"nat_nictype": "e1000"}, "nat_nictype", "'82540EM'"),
        ({"ui_type": "vnc"}, "ui_type", "'headless'"),
        ({"os_type": "Ubuntu 64"}, "os_type", "pattern"),
        ({"ssh_user": "Root"}, "ssh_user", "pattern"),
    ],
)
def test_bad_options(options, field, why):
    message = error_of(**options)
    assert f"machines[vb1].options.{field}:" in message and why in message


def test_unknown_option_lists_the_allowed_ones():
    message = error_of(hostonly_cidrs="192.168.56.1/24")
    assert "machines[vb1].options.hostonly_cidrs: unknown setting; allowed:" in message
    assert "hostonly_cidr" in message and "allow_any_hostonly_cidr" in message


def test_image_forms_accepted():
    for image in ("/srv/images/noble.ova", "~/images/disk.vdi"):
        assert machines(image=image)[0].options.image == image
    url = "https://example.test/a/noble.vmdk?sig=1"
    assert machines(image=url, image_sha256="a" * 64)[0].options.image_checksum == "a" * 64
    # The default image is checked against its publisher's SHA256SUMS; another URL needs its checksum.
    assert machines()[0].options.image_checksum == "published"
    with pytest.raises(ConfigError, match="image_sha256 is required"):
        machines(image=url)


def test_virtualbox_supports_power_states():
    (machine,) = config.parse([{"name": "vb1", "driver": "virtualbox", "state": "stopped"}]).machines
    assert machine.state == "stopped"


def test_example_stack_config_is_valid(world):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "stacks", "Pulumi.virtualbox.yaml")
    with open(path) as f:
        stack = yaml.safe_load(f)
    parsed = config.parse(stack["config"]["docker-machine:machines"])
    assert {m.driver for m in parsed.machines} == {"virtualbox"}
    vb.check_host(parsed.machines)
