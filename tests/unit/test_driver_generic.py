"""Generic driver: config rules, and a resource graph that creates nothing and undoes its changes on destroy."""

from __future__ import annotations

import pytest

from components import config
from components.config import ConfigError
from components.steps import provisioning, tls
from tests.unit.conftest import run_program
from tests.unit.test_graph import CMD_T, STAGES, is_secret, plain

# A real key: the generic driver checks it like the cloud drivers do (components/sshkeys.py).
KEY = tls.new_ssh_key()[0]
KEY_MATERIAL = KEY.splitlines()[2]


def generic(**options):
    return [{"name": "host1", "driver": "generic", "options": options}]


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(raw)
    return str(info.value)


def test_defaults_follow_docker_machine():
    options = config.parse(generic(address="203.0.113.5", ssh_key=KEY)).machines[0].options
    assert (options.ssh_user, options.ssh_port) == ("root", 22)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"ssh_key": KEY}, "address is required"),
        ({"address": "203.0.113.5"}, "exactly one of ssh_key"),
        ({"address": "203.0.113.5", "ssh_key": KEY, "ssh_key_path": "/etc/hostname"}, "exactly one of ssh_key"),
        ({"address": "bad host!", "ssh_key": KEY}, "neither an IP address nor a DNS name"),
        ({"address": "203.0.113.5", "ssh_key_path": "/nonexistent/id"}, "does not exist"),
        ({"address": "203.0.113.5", "ssh_key": KEY, "ssh_port": 70000}, "less than or equal to 65535"),
        ({"address": "203.0.113.5", "ssh_key": KEY, "dial_attempts": 0}, "greater than or equal to 1"),
        ({"from_stack": {"stack": "org/p/s"}, "address": "203.0.113.5"}, "do not also set address"),
    ],
)
def test_config_errors(options, expected):
    message = error_of(generic(**options))
    assert "machines[host1].options" in message
    assert expected in message


def test_a_bad_key_value_is_never_echoed():
    message = error_of(generic(address="bad host!", ssh_key=KEY))
    assert KEY_MATERIAL not in message


def test_generic_cannot_be_stopped():
    message = error_of([{**generic(address="203.0.113.5", ssh_key=KEY)[0], "state": "stopped"}])
    assert "machines[host1].state: the generic driver cannot stop a machine" in message


def test_graph_creates_no_host_and_undoes_its_changes_on_destroy():
    program = run_program(generic(address="203.0.113.5", ssh_user="admin", ssh_port=2200, ssh_key=KEY))
    types = sorted(r.typ.rsplit(":", 1)[-1] for r in program.resources)
    assert "Vm" not in types and "StackReference" not in types
    for stage in STAGES:
        cmd = program.named(f"host1-{stage}")
        assert cmd.typ == CMD_T
        connection = plain(cmd.inputs["connection"])
        assert (connection["host"], connection["port"], connection["user"]) == ("203.0.113.5", 2200, "admin")
        assert connection["private_key"] == KEY and is_secret(cmd.inputs["connection"])
        assert connection["dial_error_limit"] == 10
    # Only the daemon step undoes: drop-in and certificates go, Docker stays.
    deletes = {stage: program.named(f"host1-{stage}").inputs.get("delete") for stage in STAGES}
    assert deletes["daemon-config"] == provisioning.as_root_inline(provisioning.UNDO_DAEMON)
    assert [s for s, d in deletes.items() if d] == ["daemon-config"]
    # The client dials the host on the engine port; the address is in the server certificate.
    machine = program.outputs["machines"]["host1"]
    assert machine["url"] == "tcp://203.0.113.5:2376"
    assert machine["privateIp"] is None  # an existing host: no address of its network is known
    assert program.named("host1-server-cert").inputs["sans"] == ["203.0.113.5", "localhost"]


def test_from_stack_reads_the_host_through_a_stack_reference():
    outputs = {"address": "198.51.100.9", "sshPort": 2022, "sshUser": "docker", "sshPrivateKey": KEY,
               "nested": {"port": 40123}}  # fmt: skip
    program = run_program(
        generic(from_stack={"stack": "organization/bare-vm/dev", "engine_port": "nested.port"}),
        overrides={"pulumi:pulumi:StackReference": {"outputs": outputs, "secretOutputNames": ["sshPrivateKey"]}},
    )
    (ref,) = program.of_type("pulumi:pulumi:StackReference")
    assert ref.inputs["name"] == "organization/bare-vm/dev"
    cmd = program.named("host1-wait-for-ssh")
    connection = plain(cmd.inputs["connection"])
    assert (connection["host"], connection["port"], connection["user"]) == ("198.51.100.9", 2022, "docker")
    assert connection["private_key"] == KEY
    assert any(urn.endswith("pulumi:pulumi:StackReference::host1-host") for urn in cmd.dependencies)
    assert program.outputs["machines"]["host1"]["url"] == "tcp://198.51.100.9:40123"
