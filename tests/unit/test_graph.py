"""The program's resource graph under Pulumi mocks: what is registered, wired to what, and exported."""

from __future__ import annotations

import getpass
import os

import pytest

from components.drivers.qemu.options import USER_NETWORK_GATEWAY
from components.model import EngineOptions
from components.steps import hostenv, provisioning
from tests.unit.conftest import Program, Registered, run_program

CA_T = "pulumi-python:dynamic/tls:CertificateAuthority"
SSH_T = "pulumi-python:dynamic/tls:SshKey"
VM_T = "pulumi-python:dynamic/qemu:Vm"
CERT_T = "pulumi-python:dynamic/tls:ServerCertificate"
CMD_T = "pulumi-python:dynamic/remote:Command"
CHECK_T = "pulumi-python:dynamic/docker:ApiCheck"
CONTEXT_T = "pulumi-python:dynamic/docker:Context"
FORWARDER_T = "pulumi-python:dynamic/qemu:PortForwarder"
COMPONENT_T = "dockermachine:index:DockerMachine"
STAGES = ("wait-for-ssh", "install-docker", "tls", "daemon-config")

# Distinct values per output, so each wire can be traced to the one output it must come from.
VM_OUTS = {"ip": "192.0.2.10", "ssh_host": "198.51.100.7", "ssh_port": 2222, "engine_host_port": 12376}
SSH_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nSSH-PRIVATE-MATERIAL\n-----END OPENSSH PRIVATE KEY-----\n"
SSH_PUBLIC = "ssh-ed25519 AAAAC3Nza-test-public"
CA_OUTS = {
    "ca_cert": "-----BEGIN CERTIFICATE-----\nCA-CERT\n-----END CERTIFICATE-----\n",
    "ca_key": "-----BEGIN RSA PRIVATE KEY-----\nCA-KEY-MATERIAL\n-----END RSA PRIVATE KEY-----\n",
    "client_cert": "-----BEGIN CERTIFICATE-----\nCLIENT-CERT\n-----END CERTIFICATE-----\n",
    "client_key": "-----BEGIN RSA PRIVATE KEY-----\nCLIENT-KEY-MATERIAL\n-----END RSA PRIVATE KEY-----\n",
}
SERVER_OUTS = {
    "cert": "-----BEGIN CERTIFICATE-----\nSERVER-CERT\n-----END CERTIFICATE-----\n",
    "key": "-----BEGIN RSA PRIVATE KEY-----\nSERVER-KEY-MATERIAL\n-----END RSA PRIVATE KEY-----\n",
    "serial": "5e1a1",
}
OVERRIDES = {
    "dynamic/qemu:Vm": VM_OUTS,
    "dynamic/tls:SshKey": {"private_key": SSH_PRIVATE, "public_key": SSH_PUBLIC},
    "dynamic/tls:CertificateAuthority": CA_OUTS,
    "dynamic/tls:ServerCertificate": SERVER_OUTS,
    "dynamic/docker:ApiCheck": {"server_version": "24.0.7"},
}
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker for a serialized secret


def owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def is_secret(value) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def plain(value):
    """Unwrap Pulumi's serialized secrets, recursively."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def run(machines, **kwargs) -> Program:
    return run_program(machines, overrides=OVERRIDES, **kwargs)


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_STATE", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def one() -> Program:
    return run([{"name": "default", "tls_san": ["docker.example.test"], "options": {"ssh_user": "core"}}])


def stage(program: Program, name: str, s: str) -> Registered:
    return program.named(f"{name}-{s}")


# --- the resources -------------------------------------------------------------------------------------------


def test_one_machine_registers_exactly_these_resources(one):
    got = sorted((r.typ, r.name) for r in one.resources)
    assert got == sorted(
        [
            (CA_T, "unit-tls"),
            (COMPONENT_T, "default"),
            (SSH_T, "default-ssh-key"),
            # The SSH host key we make and the VM's sshd is given: every dial pins it.
            (SSH_T, "default-host-key"),
            (VM_T, "default-vm"),
            (CERT_T, "default-server-cert"),
            (CMD_T, "default-wait-for-ssh"),
            (CMD_T, "default-install-docker"),
            (CMD_T, "default-tls"),
            (CMD_T, "default-daemon-config"),
            # The host folders the VM shares, mounted in the guest (issue 19).
            (CMD_T, "default-mounts"),
            (CHECK_T, "default-docker-check"),
            (CONTEXT_T, "default-docker-context"),
            # Published container ports of a user-mode QEMU VM reach the host through it (issue 11).
            (FORWARDER_T, "default-port-forwarder"),
        ]
    )


def test_parents(one):
    component = one.named("default")
    stack_urn = one.named("unit-tls").urn_parent
    assert stack_urn and stack_urn.split("::")[-2] == "pulumi:pulumi:Stack"
    assert component.urn_parent == stack_urn
    for r in one.resources:
        if r.typ in (CA_T, COMPONENT_T):
            assert r.urn_parent == stack_urn, r.name
        else:
            assert r.urn_parent == component.urn, r.name


def test_stages_run_in_order(one):
    vm = one.named("default-vm")
    chain = [vm, *(stage(one, "default", s) for s in STAGES), one.named("default-docker-check")]
    for earlier, later in zip(chain, chain[1:], strict=False):
        assert earlier.urn in later.dependencies, f"{later.name} must wait for {earlier.name}"
    # and never the other way round
    for i, r in enumerate(chain):
        assert not {c.urn for c in chain[i + 1 :]} & set(r.dependencies), r.name


def test_vm_is_created_after_the_ssh_key_and_gets_its_public_key(one):
    vm = one.named("default-vm")
    ssh = one.named("default-ssh-key")
    assert vm.inputs["authorized_key"] == SSH_PUBLIC
    assert ssh.urn in vm.property_dependencies["authorized_key"]


# --- remote commands ------------------------------------------------------------------------------------------


def test_scripts_go_to_stdin_not_the_command_line(one):
    engine = EngineOptions()
    expected = {
        "wait-for-ssh": provisioning.WAIT_FOR_BOOT,
        # No proxy here: a proxy configured before is removed from apt's configuration.
        "install-docker": hostenv.apt_script({}) + provisioning.install_script(engine),
        "daemon-config": provisioning.daemon_script(engine, "qemu", SERVER_OUTS["serial"], USER_NETWORK_GATEWAY),
    }
    for s in STAGES:
        cmd = stage(one, "default", s)
        assert cmd.inputs["create"] == provisioning.AS_ROOT, s
        assert "sh -s" in cmd.inputs["create"]
        assert cmd.inputs.get("delete") is None  # the VM is ours: destroy removes it, no undo script
        assert {"connection", "stdin", "stdout", "stderr"} <= set(cmd.additional_secret_outputs)
        if s in expected:
            assert plain(cmd.inputs["stdin"]) == expected[s], s


def test_tls_stage_carries_the_server_key_only_on_stdin(one):
    cmd = stage(one, "default", "tls")
    assert is_secret(cmd.inputs["stdin"])  # the whole script is a secret in state
    stdin = plain(cmd.inputs["stdin"])
    assert stdin == provisioning.tls_script(CA_OUTS["ca_cert"], SERVER_OUTS["cert"], SERVER_OUTS["key"])
    assert "SERVER-KEY-MATERIAL" in stdin and "CA-CERT" in stdin and "SERVER-CERT" in stdin
    for c in STAGES:
        command_line = stage(one, "default", c).inputs["create"]
        assert "SERVER-KEY-MATERIAL" not in command_line and "BEGIN" not in command_line
    # the CA key never leaves the stack
    for r in one.of_type(CMD_T):
        assert "CA-KEY-MATERIAL" not in str(plain(r.inputs))


def test_connection_comes_from_the_vm_and_the_ssh_key(one):
    vm, ssh = one.named("default-vm"), one.named("default-ssh-key")
    for s in STAGES:
        cmd = stage(one, "default", s)
        assert is_secret(cmd.inputs["connection"])
        conn = plain(cmd.inputs["connection"])
        assert conn["host"] == VM_OUTS["ssh_host"]
        assert conn["port"] == VM_OUTS["ssh_port"]
        assert conn["user"] == "core" == vm.inputs["ssh_user"]
        assert conn["private_key"] == SSH_PRIVATE
        assert {vm.urn, ssh.urn} <= set(cmd.property_dependencies["connection"])


def test_daemon_config_follows_the_certificate_serial(one):
    cert = one.named("default-server-cert")
    daemon = stage(one, "default", "daemon-config")
    assert SERVER_OUTS["serial"] in plain(daemon.inputs["stdin"])
    assert cert.urn in daemon.property_dependencies["stdin"]


# --- certificates and the API check ---------------------------------------------------------------------------


def test_server_certificate_inputs(one):
    cert, ca, vm = one.named("default-server-cert"), one.named("unit-tls"), one.named("default-vm")
    assert cert.inputs["sans"] == ["docker.example.test", VM_OUTS["ip"], "localhost"]  # the address, not ssh_host
    assert cert.inputs["owner"] == f"{owner()}.default"
    assert plain(cert.inputs["ca_cert"]) == CA_OUTS["ca_cert"]
    assert plain(cert.inputs["ca_key"]) == CA_OUTS["ca_key"]
    assert vm.urn in cert.property_dependencies["sans"]
    assert ca.urn in cert.property_dependencies["ca_cert"]
    assert ca.inputs["owner"] == owner()
    assert "key" in cert.additional_secret_outputs
    assert {"ca_key", "client_key"} <= set(ca.additional_secret_outputs)
    assert "private_key" in one.named("default-ssh-key").additional_secret_outputs


def test_api_check_dials_the_engine_with_the_client_certificate(one):
    check = one.named("default-docker-check")
    assert check.inputs["host"] == VM_OUTS["ip"]
    assert check.inputs["port"] == VM_OUTS["engine_host_port"]
    assert plain(check.inputs["ca_cert"]) == CA_OUTS["ca_cert"]
    assert plain(check.inputs["client_cert"]) == CA_OUTS["client_cert"]
    assert plain(check.inputs["client_key"]) == CA_OUTS["client_key"]
    script = provisioning.daemon_script(EngineOptions(), "qemu", SERVER_OUTS["serial"], USER_NETWORK_GATEWAY)
    assert check.inputs["configuration"] == provisioning.digest(script)


def test_vm_inputs(one, state_dir):
    vm = one.named("default-vm")
    assert vm.inputs["name"] == "default"
    assert vm.inputs["instance_dir"] == os.path.join(str(state_dir), "docker-machine-unit", "qemu", "default")
    assert vm.inputs["engine_port"] == 2376
    assert (vm.inputs["cpus"], vm.inputs["memory"], vm.inputs["disk"]) == (2, 2048, 20000)
    assert vm.inputs["network"] == "user" and vm.inputs["accel_requested"] == "auto"


def test_engine_port_reaches_vm_and_daemon():
    program = run([{"name": "p", "engine": {"port": 3376}}])
    assert program.named("p-vm").inputs["engine_port"] == 3376
    assert "-H tcp://0.0.0.0:3376" in plain(program.named("p-daemon-config").inputs["stdin"])


def test_state_dir_is_unique_per_stack(state_dir):
    a = run([{"name": "default"}], stack="one").named("default-vm").inputs["instance_dir"]
    b = run([{"name": "default"}], stack="two").named("default-vm").inputs["instance_dir"]
    assert a != b


# --- two machines --------------------------------------------------------------------------------------------------


def test_one_ca_per_stack_shared_by_two_machines():
    program = run([{"name": "a"}, {"name": "b"}])
    (ca,) = program.of_type(CA_T)
    assert ca.name == "unit-tls"
    assert len(program.of_type(SSH_T)) == 4  # a login key and a host key each
    for kind in (VM_T, CERT_T, CHECK_T, COMPONENT_T):
        assert len(program.of_type(kind)) == 2, kind
    assert len(program.of_type(CMD_T)) == 10  # four provisioning steps and the mounts step each
    for name in ("a", "b"):
        other = "b" if name == "a" else "a"
        cert = program.named(f"{name}-server-cert")
        assert ca.urn in cert.dependencies
        assert cert.inputs["owner"] == f"{owner()}.{name}"
        assert program.named(f"{name}-vm").inputs["name"] == name
        # each machine's commands reach its own VM with its own key
        conn_deps = set(stage(program, name, "tls").property_dependencies["connection"])
        assert {program.named(f"{name}-vm").urn, program.named(f"{name}-ssh-key").urn} <= conn_deps
        assert not {program.named(f"{other}-vm").urn, program.named(f"{other}-ssh-key").urn} & conn_deps
        assert program.named(f"{name}-server-cert").urn in stage(program, name, "tls").property_dependencies["stdin"]
    assert program.named("a-vm").inputs["instance_dir"] != program.named("b-vm").inputs["instance_dir"]


# --- outputs ------------------------------------------------------------------------------------------


def test_outputs(one):
    out = one.outputs
    assert set(out) >= {"machines", "caCert", "clientCert", "clientKey", "sshPrivateKeys"}
    assert out["caCert"] == CA_OUTS["ca_cert"]
    assert out["clientCert"] == CA_OUTS["client_cert"]
    assert out["clientKey"] == CA_OUTS["client_key"]
    assert out["sshPrivateKeys"] == {"default": SSH_PRIVATE}
    m = out["machines"]["default"]
    url = f"tcp://{VM_OUTS['ip']}:{VM_OUTS['engine_host_port']}"
    assert m["ip"] == VM_OUTS["ip"]
    assert m["url"] == url
    assert m["ssh"] == {"host": VM_OUTS["ssh_host"], "port": VM_OUTS["ssh_port"], "user": "core",
                        "hostKey": SSH_PUBLIC}  # fmt: skip
    assert m["serverCertSans"] == ["docker.example.test", VM_OUTS["ip"], "localhost"]
    assert m["dockerVersion"] == "24.0.7"
    assert m["driver"] == "qemu"
    # `docker-machine env`: exactly these four variables, in this order
    env = m["env"]
    assert list(env) == ["DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME"]
    assert env["DOCKER_TLS_VERIFY"] == "1"
    assert env["DOCKER_HOST"] == url
    assert env["DOCKER_MACHINE_NAME"] == "default"
    assert env["DOCKER_CERT_PATH"].endswith(os.path.join(".docker", "machine", "machines", "default"))
    assert os.path.isabs(env["DOCKER_CERT_PATH"])


def test_outputs_for_two_machines():
    program = run([{"name": "a"}, {"name": "b.example"}])
    assert set(program.outputs["machines"]) == {"a", "b.example"}
    assert set(program.outputs["sshPrivateKeys"]) == {"a", "b.example"}
    env = program.outputs["machines"]["b.example"]["env"]
    assert env["DOCKER_MACHINE_NAME"] == "b.example"
    assert env["DOCKER_CERT_PATH"].endswith(os.path.join("machines", "b.example"))


def test_docker_context_follows_the_verified_daemon_and_can_be_turned_off(one):
    context = one.named("default-docker-context")
    assert one.named("default-docker-check").urn in context.dependencies
    assert context.inputs["machine_name"] == "default"
    without = run([{"name": "default", "docker_context": False}])
    assert not without.of_type(CONTEXT_T)
