"""The explicit contracts: every driver against the Driver protocol, the stack outputs against their models, the
backend's locks as scripts/machine reads them, and the provider host's one-line errors."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import traceback

import pytest

from components import drivers, outputs, ownership
from components.drivers.base import BaseDriver, Driver
from components.errors import StepError
from components.model import StrictModel
from scripts.machinecli import workspace
from tests.unit.conftest import ROOT, run_program


@pytest.mark.parametrize("name", drivers.available())
def test_every_driver_holds_to_the_contract(name):
    driver = drivers.load(name)
    assert isinstance(driver, Driver) and isinstance(driver, BaseDriver)
    assert driver.name == name
    assert issubclass(driver.Options, StrictModel)
    assert isinstance(driver.supports_power, bool)
    assert driver.plugin is None or (driver.plugin[0] and driver.plugin[1])
    # create_host is the driver's own, not BaseDriver's placeholder
    assert type(driver).create_host is not BaseDriver.create_host


def test_the_registry_lists_drivers_only():
    assert drivers.available() == ("aws", "azure", "digitalocean", "generic", "qemu", "virtualbox")
    with pytest.raises(ValueError, match="unknown driver 'nope'"):
        drivers.load("nope")


def test_no_capability_is_discovered_with_getattr():
    found = subprocess.run(
        ["grep", "-rn", r"getattr(.*drivers\|getattr(driver", "components", "scripts", "__main__.py"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout == ""


def test_the_program_exports_what_the_output_models_read():
    program = run_program([{"name": "default"}, {"name": "web", "driver": "qemu"}])
    parsed = outputs.StackOutputs.model_validate(program.outputs)
    assert set(parsed.machines) == {"default", "web"}
    web = parsed.machines["web"]
    assert web.url == f"tcp://{web.ip}:{web.port}" and web.env["DOCKER_HOST"] == web.url
    assert web.env["DOCKER_CERT_PATH"] == outputs.cert_path("web", ownership.current("docker-machine", "unit"))
    assert web.details["instanceDir"].endswith(os.path.join("qemu", "web"))
    # A swarm's outputs only come with a swarm (tests/unit/test_swarm.py).
    assert set(program.outputs) == set(outputs.OUTPUT_NAMES.values()) - {"swarm", "swarmJoinTokens"}


def test_the_component_registers_every_output():
    from components.machine import DockerMachine

    annotated = set(DockerMachine.__annotations__)
    source = open(os.path.join(ROOT, "components", "machine.py")).read()
    registered = source.split("self.register_outputs(", 1)[1].split(")", 1)[0]
    assert annotated and all(f'"{name}"' in registered for name in annotated)


def test_client_cert_files_are_written_atomically_with_modes_and_their_owner(tmp_path):
    directory, owner = tmp_path / "m", ownership.Owner("docker-machine", "unit", "file:///b")
    outputs.write_client_certs(str(directory), owner, "CA", "CERT", "KEY")
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {
        "ca.pem": "0o644", "cert.pem": "0o644", "key.pem": "0o600", ".owner.json": "0o600"
    }  # fmt: skip
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    other = ownership.Owner("docker-machine", "unit", "postgres://db/pulumi")
    with pytest.raises(ownership.NotOurs, match="belongs to stack \"unit\" on file:///b"):
        outputs.write_client_certs(str(directory), other, "CA2", "CERT2", "KEY2")
    assert not outputs.remove_client_certs(str(directory), other) and (directory / "key.pem").read_text() == "KEY"
    assert outputs.remove_client_certs(str(directory), owner)
    assert not directory.exists()


# --- locks ----------------------------------------------------------------------------------------------------------


def write_lock(backend, stack: str, pid: int, host: str) -> None:
    directory = backend / ".pulumi" / "locks" / "organization" / workspace.PROJECT / stack
    directory.mkdir(parents=True, exist_ok=True)
    content = {"pid": pid, "username": "root", "hostname": host, "timestamp": "2026-11-30T21:00:00.5+00:00"}
    (directory / f"{pid}-lock.json").write_text(json.dumps(content))


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_lock_of_a_dead_process_on_this_host_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}")
    write_lock(tmp_path, "local", dead_pid(), socket.gethostname())
    (lock,) = workspace.Workspace().locks("local")
    assert lock.stale()
    message = workspace.lock_message("local", lock)
    assert "no longer exists" in message
    assert message.endswith("clear the lock with: scripts/machine unlock --stack local")
    assert "\n" not in message


def test_a_live_or_foreign_lock_is_not_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}")
    write_lock(tmp_path, "a", os.getpid(), socket.gethostname())
    write_lock(tmp_path, "b", dead_pid(), "elsewhere.example")
    ws = workspace.Workspace()
    (live,) = ws.locks("a")
    (foreign,) = ws.locks("b")
    assert not live.stale() and "wait for it to end" in workspace.lock_message("a", live)
    assert not foreign.stale() and "root@elsewhere.example" in workspace.lock_message("b", foreign)
    assert ws.locks("c") == []
    with pytest.raises(workspace.MachineError, match='stack "a" is in use by another pulumi run'):
        ws.check_lock("a")


def test_a_lock_row_of_the_postgresql_backend_reads_as_its_file():
    # As the backend stores a lock file: a JSON column {"data": base64 of the file's bytes}.
    content = {"pid": 18381, "username": "root", "hostname": "vm", "timestamp": "2026-12-01T02:47:37.171426513Z"}
    row = json.dumps({"data": base64.b64encode(json.dumps(content).encode()).decode()})
    assert json.loads(workspace._blob(row)) == content


# --- the dynamic-provider host ------------------------------------------------------------------------------------


def test_a_user_error_reaches_the_engine_without_a_traceback():
    sys.path.insert(0, os.path.join(ROOT, "scripts", "langhost"))
    try:
        import pulumi_python_host
    finally:
        sys.path.pop(0)
    original = traceback.format_exc
    pulumi_python_host.quiet_user_errors()
    try:
        try:
            raise StepError("default", "install-docker", "ssh docker@127.0.0.1:2222: unreachable after 3 attempts")
        except StepError:
            assert traceback.format_exc() == (
                "machine default: install-docker: ssh docker@127.0.0.1:2222: unreachable after 3 attempts"
            )
        try:
            raise KeyError("a bug")
        except KeyError:
            assert traceback.format_exc().startswith("Traceback (most recent call last):")
    finally:
        traceback.format_exc = original
