"""Booted templates without QEMU: which template a machine may resume from, a damaged one passed over with one notice,
the identity a resumed machine takes, and what clearing the cache keeps."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from components.drivers.qemu import shares, templates
from components.drivers.qemu.instance import Files
from components.steps import tls

IMAGE = {"disk": "/cache/images/debian-13-docker-abc/disk.qcow2", "format": "qcow2", "kernel": "/k", "initrd": "/i",
         "cmdline": "root=LABEL=rootfs"}  # fmt: skip
PROPS = {"name": "m1", "cpus": 2, "memory": 2048, "disk": 20000, "ssh_user": "docker", "network": "user",
         "mounts": [], "private_network": None, "use_template": True}  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(templates, "qemu_version", lambda: "QEMU emulator version 7.2.22")
    return tmp_path / "cache"


def shape(**changes) -> dict:
    return templates.shape({**PROPS, **changes}, IMAGE, "tcg")


def test_a_template_belongs_to_one_image_and_shape():
    assert templates.key_of(shape()) == templates.key_of(shape())
    for change in ({"memory": 4096}, {"cpus": 1}, {"disk": 30000}, {"ssh_user": "core"},
                   {"private_network": {"cidr": "192.168.125.0/24", "dir": "/x"}}):  # fmt: skip
        assert templates.key_of(shape(**change)) != templates.key_of(shape()), change
    other_image = templates.shape(PROPS, {**IMAGE, "disk": "/cache/images/debian-13-docker-def/disk.qcow2"}, "tcg")
    assert templates.key_of(other_image) != templates.key_of(shape())
    # What only the host sees does not matter: forwarded ports, published ports, the engine port.
    assert templates.key_of(shape(forwards=["8080:80"], engine_port=3376)) == templates.key_of(shape())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"use_template": False}, "template: false"),
        ({"network": "bridge"}, "bridge mode"),
        ({"mounts": [{"path": "/a", "writable": True}], "mount_type": "9p"}, "host folders over 9p"),
        ({"mounts": [{"path": f"/m{i}", "writable": True} for i in range(5)], "mount_type": "virtiofs"},
         "more than 4 host folders"),
    ],
)
def test_what_boots_cold(changes, reason, monkeypatch):
    monkeypatch.setattr(shares, "virtiofsd", lambda: "/usr/bin/virtiofsd")
    assert reason in templates.unsupported({**PROPS, **changes})
    assert templates.unsupported(PROPS) is None


def saved(cache, key: str, created: int, state_size: int = 1000) -> templates.Template:
    """A template as _build leaves it (files of the right sizes)."""
    directory = cache / "templates" / f"{key}-{created}"
    directory.mkdir(parents=True)
    (directory / "state").write_bytes(b"s" * state_size)
    (directory / "disk.qcow2").write_bytes(b"d")
    (directory / "login").write_text("key")
    (directory / "meta.json").write_text(json.dumps({"key": key, "shape": shape(), "state_size": state_size,
                                                     "host_key": "ssh-ed25519 AAAA", "seconds": 50}))  # fmt: skip
    return templates.Template(str(directory))


def test_the_newest_sound_template_is_used_and_a_truncated_one_is_retired_after_one_notice(cache):
    saved(cache, "k1", 100)
    new = saved(cache, "k1", 200)
    saved(cache, "k2", 300)
    assert templates.find("k1").dir == new.dir
    with open(new.state, "r+b") as f:
        f.truncate(10)
    with pytest.raises(templates.TemplateError) as info:
        templates.find("k1")  # this machine boots cold
    assert str(info.value) == "template k1-200 is damaged (state is 10 bytes, not 1000)"
    assert os.path.exists(new.disk) and not os.path.exists(new.state)  # its disk may back machines: kept
    assert templates.find("k1").dir.endswith("k1-100")  # the next one: the older sound one (or a new build)


def test_obtain_builds_only_when_none_fits(cache, monkeypatch):
    built = []
    monkeypatch.setattr(templates, "_build",
                        lambda key, wanted, start: built.append(key) or saved(cache, key, len(built)))  # fmt: skip
    first = templates.obtain(shape(), start=None)
    again = templates.obtain(shape(), start=None)
    assert built == [templates.key_of(shape())] and first.dir == again.dir
    templates.obtain(shape(memory=4096), start=None)  # a changed shape: never the stale template
    assert built[-1] == templates.key_of(shape(memory=4096)) and len(built) == 2
    os.unlink(first.state)
    with pytest.raises(templates.TemplateError, match="state is gone"):
        templates.obtain(shape(), start=None)  # damaged: a cold boot now, without waiting for a build
    templates.obtain(shape(), start=None)
    assert len(built) == 3  # the next machine of the shape makes a new one


def test_templates_in_use_are_kept_by_clear_and_collect(cache, tmp_path):
    used, _newest, damaged = saved(cache, "k1", 100), saved(cache, "k1", 200), saved(cache, "k2", 300, 5)
    instance = tmp_path / "vm"
    instance.mkdir()
    (instance / "disk.qcow2").write_bytes(b"overlay")
    used.use(str(instance))
    os.unlink(damaged.state)
    assert templates.collect() == ["k2-300"]  # damaged and unused; k1-100 is superseded but a machine's backing file
    assert templates.clear() == (["k1-200"], ["k1-100"])
    templates.forget_user(str(instance))
    assert used.in_use() == []
    rows = templates.listing()
    assert [r["name"] for r in rows] == ["k1-100"] and rows[0]["image"] == "debian-13-docker-abc"


def test_identity_replaces_every_trace_of_the_template():
    host_key = tls.new_ssh_key()
    props = {**PROPS, "host_key": host_key[0], "host_key_public": host_key[1],
             "authorized_key": "ssh-ed25519 AAAAmachine", "private_network": {"cidr": "192.168.125.0/24"}}  # fmt: skip
    outs = {"private_mac": "52:54:00:11:22:33", "private_ip": "192.168.125.7"}
    before = time.time()
    script = templates.identity_script(props, outs)
    stamp = float(script.split("date -s @", 1)[1].split()[0])
    assert before - 1 <= stamp <= time.time() + 1  # the host's clock, taken as the script is made
    assert "hostnamectl set-hostname m1" in script
    # The reseed comes before anything random the guest draws, and the machine-id is each script's own.
    assert script.index("perl -e") < min(script.index("machine-id"), script.index("ssh_host_"))
    machine_id = re.search(r"echo ([0-9a-f]{32}) > /etc/machine-id", script).group(1)
    assert machine_id not in templates.identity_script(props, outs)
    assert host_key[0].strip() in script and "rm -f /etc/ssh/ssh_host_*" in script
    assert "echo 'ssh-ed25519 AAAAmachine' > \"$home/.ssh/authorized_keys\"" in script  # the template's key is gone
    assert "0x40085203" in templates.RESEED and "0x5207" in templates.RESEED and "perl -e" in script
    assert "52:54:00:11:22:33" in script and "192.168.125.7/24" in script
    assert templates.identity_script(props, outs).split("0x5207")[-1] != script.split("0x5207")[-1]  # fresh entropy


def test_shares_are_plugged_into_the_templates_free_slots(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(templates, "qmp", lambda socket, command, args=None: calls.append((command, args)))
    templates.plug_shares(Files(str(tmp_path)), [{"path": "/a", "writable": True}, {"path": "/b", "writable": True}])
    assert [c for c, _ in calls] == ["chardev-add", "device_add", "chardev-add", "device_add"]
    assert calls[3][1] == {"driver": "vhost-user-fs-pci", "id": "vfs1", "chardev": "fs1", "tag": "mount1",
                           "bus": "hp1"}  # fmt: skip
    assert calls[2][1]["backend"]["data"]["addr"]["data"]["path"] == str(tmp_path / "virtiofs1.sock")
