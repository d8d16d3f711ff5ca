"""Issue 21: a machine inside a company network. A private registry with its own CA (Debian's docker-registry) and a
proxy (tinyproxy), both started by the test on free 127.0.0.1 ports and reached from the guest at the host's address;
`make up` with the host's HTTP(S)_PROXY; then `docker compose` and `docker buildx` from the host against the machine.

The registry is named two ways: 10.0.2.2:PORT (QEMU's gateway, listed in NO_PROXY: reached directly) and this host's
own name, which resolves to its loopback here and not in the guest, so only the proxy can reach it."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import (
    ROOT,
    free_port,
    have_tools,
    new_stack,
    record_figure,
    remove_stack,
    rewrite_machines,
)  # fmt: skip

HOSTNAME = socket.gethostname()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)"),
    pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("tinyproxy")),
                       reason="needs docker-registry and tinyproxy (make setup)"),  # fmt: skip
    pytest.mark.skipif(not ipaddress.ip_address(socket.gethostbyname(HOSTNAME)).is_loopback,
                       reason="this host's name does not resolve to its loopback"),  # fmt: skip
]
GATEWAY = "10.0.2.2"
DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'


def certificate(directory, hosts: list[str]) -> tuple[str, str, str]:
    """A CA and a server certificate for ``hosts``: (CA file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e registry CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    files = [os.path.join(directory, n) for n in ("ca.crt", "registry.crt", "registry.key")]
    for path, data in zip(files, (ca.public_bytes(serialization.Encoding.PEM),
                                  cert.public_bytes(serialization.Encoding.PEM),
                                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())), strict=True):  # fmt: skip
        with open(path, "wb") as f:
            f.write(data)
    return files[0], files[1], files[2]


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The registry (TLS, its CA in a temp docker config's certs.d) and the proxy, stopped and removed after."""
    base = tmp_path_factory.mktemp("company")
    registry_port, proxy_port = free_port(), free_port()
    ca, cert, key = certificate(base, ["127.0.0.1", GATEWAY, HOSTNAME])
    (base / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {base / 'store'}\nhttp:\n  addr: 127.0.0.1:"
        f"{registry_port}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
    )
    (base / "tinyproxy.conf").write_text(
        f"Port {proxy_port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{base / 'proxy.log'}\"\nLogLevel Info\n"
        f"MaxClients 20\nAllow 127.0.0.1\nConnectPort {registry_port}\n"
    )
    docker_config = base / "docker"
    for name in ("127.0.0.1", HOSTNAME):  # how the user's own client names the registry
        (docker_config / "certs.d" / f"{name}:{registry_port}").mkdir(parents=True)
        shutil.copy(ca, docker_config / "certs.d" / f"{name}:{registry_port}" / "ca.crt")
    # The host client's plugins (scripts/setup links them into the user's docker config) in this one too.
    (docker_config / "cli-plugins").mkdir()
    for plugin in ("docker-buildx", "docker-compose"):
        found = os.path.expanduser(f"~/.docker/cli-plugins/{plugin}")
        if os.path.exists(found):
            os.symlink(os.path.realpath(found), docker_config / "cli-plugins" / plugin)
    registry = subprocess.Popen(["docker-registry", "serve", str(base / "registry.yml")], stdout=subprocess.DEVNULL,
                                stderr=open(base / "registry.log", "w"))  # fmt: skip
    proxy = subprocess.Popen(["tinyproxy", "-d", "-c", str(base / "tinyproxy.conf")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(registry_port)
        wait_for_port(proxy_port)
        yield {"registry": registry_port, "proxy": proxy_port, "base": base, "docker_config": str(docker_config)}
    finally:
        for server in (registry, proxy):
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(e2e_env, servers):
    """`make up` of a stack of one machine, with the host's proxy settings and the registry's CA in certs.d."""
    proxy = f"http://127.0.0.1:{servers['proxy']}"
    env = dict(e2e_env, DOCKER_CONFIG=servers["docker_config"], HTTP_PROXY=proxy, HTTPS_PROXY=proxy,
               NO_PROXY=f"{GATEWAY},localhost,127.0.0.1")  # fmt: skip
    name = f"corp-{os.getpid()}"
    stack = new_stack(env, "corp", [{"name": name, "options": {"mounts": []}, "docker_context": False}])
    try:
        started = time.monotonic()
        made = subprocess.run(["make", "up", f"STACK={stack.name}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=2400)  # fmt: skip
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        record_figure("company network: make up with a proxy and a registry CA", f"{time.monotonic() - started:.0f} s")
        yield stack, name, env
    finally:
        stack.pulumi("destroy", "--yes", check=False, timeout=900)
        remove_stack(stack)
        for cert_dir in CERT_DIRS:  # `env` wrote them (no docker context here removes them on destroy)
            shutil.rmtree(cert_dir, ignore_errors=True)


# The client certificate directories `scripts/machine env` made for the machine.
CERT_DIRS: set[str] = set()


def docker(machine, *args: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    stack, name, env = machine
    env = dict(env)
    for line in stack.machine("--stack", stack.name, "env", name).stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    CERT_DIRS.add(env["DOCKER_CERT_PATH"])
    result = subprocess.run(["docker", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert not check or result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


@pytest.fixture(scope="module")
def image(machine, tmp_path_factory):
    context = tmp_path_factory.mktemp("image")
    shutil.copy("/bin/busybox", context / "busybox")
    (context / "Dockerfile").write_text(DOCKERFILE)
    docker(machine, "build", "-q", "-t", "e2e/busybox", str(context))
    return str(context)


def test_push_and_pull_through_the_private_registry_with_its_ca(machine, servers, image):
    """No insecure-registry flag: the CA from the user's certs.d is in the guest's /etc/docker/certs.d."""
    reference = f"{GATEWAY}:{servers['registry']}/e2e/busybox:1"
    docker(machine, "tag", "e2e/busybox", reference)
    docker(machine, "push", reference)
    docker(machine, "rmi", reference)
    docker(machine, "pull", reference)
    assert "insecure" not in docker(machine, "info", "--format", "{{json .RegistryConfig.IndexConfigs}}").stdout.lower()


def test_a_pull_through_the_proxy_shows_in_its_log_and_not_with_proxy_none(machine, servers, image):
    stack, name, _ = machine
    via_proxy = f"{HOSTNAME}:{servers['registry']}/e2e/busybox:1"
    docker(machine, "pull", via_proxy)
    log = open(servers["base"] / "proxy.log").read()
    assert f"{HOSTNAME}:{servers['registry']}" in log and "CONNECT" in log, log[-2000:]
    before = len(log)
    rewrite_machines(stack, [{"name": name, "options": {"mounts": []}, "docker_context": False,
                              "engine": {"proxy": "none"}}])  # fmt: skip
    stack.pulumi("up", "--yes", "--skip-preview", timeout=1800)
    docker(machine, "rmi", via_proxy)
    assert docker(machine, "pull", via_proxy, check=False).returncode != 0  # the guest cannot reach it itself
    assert open(servers["base"] / "proxy.log").read()[before:].count("CONNECT") == 0


def test_compose_and_buildx_from_the_host(machine, image, tmp_path):
    if not os.path.exists(os.path.join(machine[2]["DOCKER_CONFIG"], "cli-plugins", "docker-compose")):
        pytest.fail("scripts/setup did not install the docker compose plugin")
    port = free_port()
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  web:\n    image: e2e/busybox\n"
        "    command: sh -c 'mkdir -p /w && echo from-compose > /w/index.html && exec httpd -f -p 8080 -h /w'\n"
        f"    ports: ['{port}:8080']\n"
        "  client:\n    image: e2e/busybox\n"
        "    command: sh -c 'until wget -qO- http://web:8080/; do sleep 1; done'\n"
    )
    docker(machine, "compose", "up", "-d", cwd=str(tmp_path))
    try:
        deadline, answer = time.monotonic() + 60, ""
        while time.monotonic() < deadline and answer != "from-compose":
            got = subprocess.run(["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{port}/"], capture_output=True,
                                 text=True)  # fmt: skip
            answer = got.stdout.strip()
            time.sleep(0.5)
        assert answer == "from-compose"
        logs = docker(machine, "compose", "logs", "client", cwd=str(tmp_path)).stdout
        assert "from-compose" in logs, logs
    finally:
        docker(machine, "compose", "down", cwd=str(tmp_path), check=False)
    docker(machine, "buildx", "build", "-q", "-t", "e2e/buildx", image)
    assert docker(machine, "image", "inspect", "e2e/buildx", "--format", "{{.Id}}").stdout.startswith("sha256:")
