"""Host folders in a QEMU VM (options.mounts): the option's checks, the QEMU devices and guest mount table of each
mechanism, and the virtiofsd daemons' life (a stand-in virtiofsd that only listens)."""

from __future__ import annotations

import os
import socket
import sys
import textwrap

import pytest

from components import config
from components.config import ConfigError
from components.drivers._local import process
from components.drivers.qemu import shares
from components.drivers.qemu import vm as qemu
from components.drivers.qemu.instance import Files
from components.drivers.qemu.options import Options


def errors(options: dict, driver: str = "qemu") -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse([{"name": "m", "driver": driver, "options": options}])
    return str(info.value).splitlines()[1:]


def test_the_default_shares_the_home_writable(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert [m.model_dump() for m in Options().mounts] == [{"path": str(tmp_path), "writable": True}]
    assert Options(mounts=[]).mounts == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("relative/dir", "'relative/dir' must be an absolute path"),
        ("/", "'/' cannot be shared"),
        ("/etc", "/etc would hide the VM's /etc"),
        ("/usr/share", "would hide the VM's /usr"),
        ("/var", "would hide the VM's /var"),
        ("/nonexistent-dir", "/nonexistent-dir is not an existing directory on this host"),
        ("/tmp/with space", "only letters, digits"),
    ],
)
def test_a_bad_path_is_one_line_naming_the_field(path, problem):
    (line,) = errors({"mounts": [{"path": path}]})
    assert line.strip().startswith("machines[m].options.mounts[0].path: ") and problem in line, line


def test_duplicates_and_nesting_are_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (line,) = errors({"mounts": [{"path": str(tmp_path)}, {"path": str(tmp_path)}]})
    assert line.strip() == f"machines[m].options.mounts: {tmp_path} is listed twice"
    (line,) = errors({"mounts": [{"path": str(tmp_path)}, {"path": str(inner)}]})
    assert "one is inside the other" in line


@pytest.mark.parametrize("driver", ["generic", "aws", "digitalocean"])
def test_hosts_we_do_not_run_locally_refuse_mounts(driver, tmp_path):
    options = {"mounts": [{"path": str(tmp_path)}], **({"address": "192.0.2.10"} if driver == "generic" else {})}
    (line,) = errors(options, driver)
    assert line.strip().startswith("machines[m].options.mounts: host folders are shared only into local VMs")


# --- devices and the guest's table ---------------------------------------------------------------------------------

MOUNTS = [{"path": "/home/u/src", "writable": True}, {"path": "/srv/data", "writable": False}]
FILES = Files("/state/qemu/default")


def test_virtiofs_devices_share_the_guest_memory():
    args = shares.qemu_args(MOUNTS, shares.VIRTIOFS, FILES, 2048)
    assert args[:4] == ["-object", "memory-backend-memfd,id=mem,size=2048M,share=on", "-numa", "node,memdev=mem"]
    assert "socket,id=fs1,path=/state/qemu/default/virtiofs1.sock" in args
    assert "vhost-user-fs-pci,chardev=fs0,tag=mount0" in args


def test_9p_devices_are_read_only_where_the_share_is():
    args = shares.qemu_args(MOUNTS, shares.NINEP, FILES, 2048)
    assert "local,id=fs0,path=/home/u/src,security_model=none" in args
    assert "local,id=fs1,path=/srv/data,security_model=none,readonly=on" in args
    assert "memory-backend-memfd" not in " ".join(args)


def test_no_mounts_no_devices():
    assert shares.qemu_args([], shares.VIRTIOFS, FILES, 2048) == []


def test_the_command_line_carries_the_shares():
    props = {"instance_dir": FILES.dir, "name": "default", "cpus": 2, "memory": 1024, "network": "user",
             "engine_port": 2376, "mounts": MOUNTS}  # fmt: skip
    outs = {"accel": "tcg", "ssh_port": 1, "engine_host_port": 2, "mac": "52:54:00:00:00:01", "tap": None,
            "share_mechanism": shares.VIRTIOFS}  # fmt: skip
    cmd = qemu.qemu_command(props, outs, {"disk": "/d", "kernel": None})
    assert "vhost-user-fs-pci,chardev=fs1,tag=mount1" in cmd and "node,memdev=mem" in cmd


@pytest.mark.parametrize(
    ("kind", "first"),
    [
        (shares.VIRTIOFS, "mount0 /home/u/src virtiofs rw,nofail 0 0"),
        (shares.NINEP, "mount0 /home/u/src 9p trans=virtio,version=9p2000.L,msize=512000,cache=mmap,rw,nofail 0 0"),
    ],
)
def test_guest_table(kind, first):
    table = shares.guest_table(MOUNTS, kind)
    assert table[0] == first and " /srv/data " in table[1] and "ro,nofail" in table[1].split()[3]


def test_virtiofsd_maps_this_user_to_the_guest_user_unless_root():
    argv = shares._virtiofsd_argv("/x/virtiofsd", MOUNTS[1], "/s.sock")
    assert argv[:5] == ["/x/virtiofsd", "--shared-dir", "/srv/data", "--socket-path", "/s.sock"]
    assert "--readonly" in argv and "--cache" in argv and "auto" in argv
    mapped = f"host:{os.geteuid()}:{shares.GUEST_UID}:1"
    assert (mapped in argv) == (os.geteuid() != 0)
    assert (f"squash-guest:0:{os.geteuid()}:4294967295" in argv) == (os.geteuid() != 0)


def test_a_change_of_mounts_is_a_power_cycle_not_a_new_vm():
    assert "mounts" in qemu.VmProvider.RESTART_ON and "mounts" not in qemu.VmProvider.REPLACE_ON


# --- virtiofsd's life ----------------------------------------------------------------------------------------------

FAKE_VIRTIOFSD = textwrap.dedent(f"""\
    #!{sys.executable}
    import socket, sys, time
    path = sys.argv[sys.argv.index("--socket-path") + 1]
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    time.sleep(300)
""")


@pytest.fixture
def fake_virtiofsd(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    binary = cache / "tools" / "bin" / "virtiofsd"
    binary.parent.mkdir(parents=True)
    binary.write_text(FAKE_VIRTIOFSD)
    binary.chmod(0o755)
    monkeypatch.setenv("DMP_CACHE", str(cache))
    return str(binary)


def test_virtiofs_is_chosen_when_virtiofsd_is_there(fake_virtiofsd, monkeypatch, tmp_path):
    assert shares.virtiofsd() == fake_virtiofsd and shares.mechanism() == shares.VIRTIOFS
    os.unlink(fake_virtiofsd)
    monkeypatch.setenv("DMP_SYSTEM_CACHE", str(tmp_path / "nothing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shares.mechanism() == shares.NINEP


def test_one_daemon_per_share_listens_before_qemu_and_stops_with_the_vm(fake_virtiofsd, tmp_path):
    files = Files(str(tmp_path / "vm"))
    os.makedirs(files.dir)
    mounts = [{"path": str(tmp_path), "writable": True}, {"path": str(tmp_path / "cache"), "writable": False}]
    shares.start(mounts, shares.VIRTIOFS, files)
    pids = [process.verified_pid(shares.pidfile_of(files, i), "--socket-path", shares.socket_of(files, i))
            for i in range(2)]  # fmt: skip
    assert all(process.alive(pid) for pid in pids)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(shares.socket_of(files, 1))  # what QEMU's chardev does
    shares.start(mounts[:1], shares.VIRTIOFS, files)  # a restart: the old daemons go first
    assert not process.alive(pids[1]) and not os.path.exists(shares.pidfile_of(files, 1))
    shares.stop(files)
    assert not any(process.alive(process.read_pid(shares.pidfile_of(files, i)) or pids[i]) for i in range(2))


def test_mount_type_virtiofs_without_virtiofsd_is_refused_at_preview(monkeypatch, tmp_path):
    monkeypatch.setenv("DMP_CACHE", str(tmp_path))
    monkeypatch.setenv("DMP_SYSTEM_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    options = {"mounts": [{"path": str(tmp_path)}], "mount_type": "virtiofs"}
    stack = config.parse([{"name": "m", "options": options}])
    with pytest.raises(ConfigError) as info:
        config.preflight(stack)
    assert "machines[m].options.mount_type: 'virtiofs' needs virtiofsd" in str(info.value)
    assert shares.mechanism("9p") == shares.NINEP and shares.mechanism("auto") == shares.NINEP


def test_9p_needs_no_daemon(tmp_path):
    files = Files(str(tmp_path))
    shares.start(MOUNTS, shares.NINEP, files)
    assert not any(name.endswith(".pid") for name in os.listdir(tmp_path))


def test_a_share_socket_path_too_long_is_one_line_before_anything_runs(tmp_path, monkeypatch):
    # The monitor's socket fits, virtiofs0.sock does not: the VM is refused before qemu-img or virtiofsd run.
    state_dir = str(tmp_path / ("s" * (96 - len(f"{tmp_path}/") - len("/qemu/m"))))  # the instance dir: 96 bytes
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(qemu, "run", lambda *cmd, check=True: ran.append(cmd))
    options = Options(mounts=[{"path": str(tmp_path), "writable": True}])
    props = qemu.vm_props("m", options, state_dir, "/src", authorized_key="ssh-ed25519 AAAA test",
                          host_key=("k", "ssh-ed25519 AAAA host"), owner={"project": "p", "stack": "s", "backend": "b"},
                          engine_port=2376)  # fmt: skip
    assert len(Files(props["instance_dir"]).qmp) <= 107 < len(shares.socket_of(Files(props["instance_dir"]), 0))
    with pytest.raises(RuntimeError, match=r"virtiofs0\.sock is 1\d\d bytes, more than the 107 a unix socket allows"):
        qemu.VmProvider().create(props)
    assert ran == [] and not os.path.exists(Files(props["instance_dir"]).disk)
