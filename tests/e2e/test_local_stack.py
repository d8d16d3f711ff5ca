"""Issue 2 end to end: `up` a QEMU machine, reach Docker over mutual TLS, prove idempotence, destroy clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from components.steps import tls
from tests.e2e.conftest import ROOT, have_tools, rewrite_machines, session_machine

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]


@pytest.fixture(scope="module")
def machine(local_machine):
    return local_machine


def docker_env(stack, name: str) -> dict[str, str]:
    out = stack.machine("env", name, "--stack", stack.name).stdout
    env = dict(stack.env, DOCKER_BUILDKIT="0")
    for line in out.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    return env


def test_env_prints_docker_machines_lines(machine):
    stack, name, _ = machine
    lines = stack.machine("env", name, "--stack", stack.name).stdout.splitlines()
    url = stack.outputs()["machines"][name]["url"]
    cert_path = os.path.expanduser(f"~/.docker/machine/machines/{name}")
    assert lines == [
        'export DOCKER_TLS_VERIFY="1"',
        f'export DOCKER_HOST="{url}"',
        f'export DOCKER_CERT_PATH="{cert_path}"',
        f'export DOCKER_MACHINE_NAME="{name}"',
        "# Run this command to configure your shell: ",
        f"# eval $({os.path.join(ROOT, 'scripts', 'machine')} env {name} --stack {stack.name})",
    ]
    assert oct(os.stat(os.path.join(cert_path, "key.pem")).st_mode & 0o777) == "0o600"


def test_docker_client_runs_a_from_scratch_container(machine, tmp_path):
    stack, name, _ = machine
    env = docker_env(stack, name)
    version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == stack.outputs()["machines"][name]["dockerVersion"]

    shutil.copy("/bin/busybox", tmp_path / "busybox")
    (tmp_path / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\nCMD ["echo", "hello over TLS"]\n'
    )
    build = subprocess.run(["docker", "build", "-q", "-t", "e2e/busybox", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["docker", "run", "--rm", "e2e/busybox"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hello over TLS"


def _curl_ping(url: str, cacert: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", cacert, *extra, f"{url}/_ping"],
                          capture_output=True, text=True)


def test_tls_refuses_clients_without_a_valid_certificate(machine, tmp_path):
    stack, name, _ = machine
    outputs = stack.outputs()
    url = outputs["machines"][name]["url"].replace("tcp://", "https://")
    (tmp_path / "ca.pem").write_text(outputs["caCert"])
    (tmp_path / "cert.pem").write_text(outputs["clientCert"])
    (tmp_path / "key.pem").write_text(outputs["clientKey"])
    other_ca = tls.new_ca("someone-else")
    other = tls.new_client_cert(other_ca, "someone-else.<bootstrap>")
    (tmp_path / "other-cert.pem").write_text(other.cert_pem)
    (tmp_path / "other-key.pem").write_text(other.key_pem)
    ca = str(tmp_path / "ca.pem")

    good = _curl_ping(url, ca, "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"))
    assert (good.returncode, good.stdout) == (0, "OK")
    no_cert = _curl_ping(url, ca)
    assert no_cert.returncode != 0 and no_cert.stdout != "OK", no_cert
    foreign = _curl_ping(url, ca, "--cert", str(tmp_path / "other-cert.pem"), "--key", str(tmp_path / "other-key.pem"))
    assert foreign.returncode != 0 and foreign.stdout != "OK", foreign


def test_preview_after_up_expects_no_changes(machine):
    stack, _, _ = machine
    stack.pulumi("preview", "--expect-no-changes", timeout=600)


def test_second_up_changes_nothing(machine):
    stack, _, _ = machine
    stack.pulumi("up", "--yes", "--skip-preview", timeout=600)
    last = json.loads(stack.pulumi("stack", "history", "--json", "--show-secrets").stdout)[0]
    changes = last["resourceChanges"]
    # "same" only: no create/update/replace, hence no remote command ran.
    assert set(changes) == {"same"}, changes


def test_new_san_reissues_the_certificate_and_restarts_docker_in_the_same_up(machine):
    """docker-machine's most-reported problem: a changed address/SAN needed a manual regenerate-certs."""
    stack, name, _ = machine
    before = stack.outputs()["machines"][name]["serverCertSerial"]
    rewrite_machines(stack, [session_machine(name, tls_san=[f"{name}.test"])])
    stack.pulumi("up", "--yes", "--skip-preview", timeout=900)
    after = stack.outputs()["machines"][name]["serverCertSerial"]
    assert after != before
    env = docker_env(stack, name)
    served = subprocess.run(
        ["openssl", "s_client", "-connect", env["DOCKER_HOST"].removeprefix("tcp://"), "-showcerts"],
        input="", capture_output=True, text=True, timeout=60,
    ).stdout
    cert = served[served.index("-----BEGIN CERTIFICATE-----") : served.index("-----END CERTIFICATE-----") + 25]
    assert tls.serial_of(cert) == after  # the daemon serves the new certificate
    version = subprocess.run(["docker", "version"], env=env, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr


def test_state_has_no_plaintext_private_key(machine):
    stack, _, _ = machine
    exported = stack.pulumi("stack", "export", "--show-secrets=false").stdout
    assert "PRIVATE KEY" not in exported
    assert "BEGIN OPENSSH" not in exported


def test_todays_docker_with_overlay2_and_labels_as_written(machine):
    """Issue 10: Debian 13's Docker 26 by default; labels reach dockerd verbatim through systemd (issue 8)."""
    stack, name, _ = machine
    env = docker_env(stack, name)
    version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert version.returncode == 0, version.stderr
    server, api = version.stdout.split()
    assert int(server.split(".")[0]) >= 26, server
    info = subprocess.run(["docker", "info", "--format", "{{.Driver}}|{{json .Labels}}"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    driver, labels = info.stdout.strip().split("|", 1)
    assert driver == "overlay2"
    assert set(json.loads(labels)) == {'note=50%off "q" $x', "provider=qemu"}


def test_the_guest_has_buildx_compose_and_the_engine_env(machine):
    stack, name, _ = machine

    def guest(command: str) -> str:
        return stack.machine("--stack", stack.name, "ssh", name, command).stdout

    assert "github.com/docker/buildx" in guest("docker buildx version")
    assert guest("docker compose version").startswith("Docker Compose version 2.")
    environ = guest("sudo cat /proc/$(pidof dockerd)/environ | tr '\\0' '\\n'").splitlines()
    assert 'DMP_PROBE=a"b%h' in environ  # neither a systemd specifier nor a quote was lost
