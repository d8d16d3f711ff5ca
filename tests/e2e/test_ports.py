"""Issue 11 end to end: ports that containers publish on the session's QEMU machine are ports of 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from tests.e2e.conftest import STATIC_FORWARD_PORT, free_port, have_tools, processes_matching, record_figure

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]


@pytest.fixture(scope="module")
def machine(local_machine, tmp_path_factory):
    """The session machine, with the FROM-scratch busybox image built on it."""
    stack, name, instance_dir = local_machine
    env = dict(stack.env, DOCKER_BUILDKIT="0")
    for line in stack.machine("--stack", stack.name, "env", name).stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    context = tmp_path_factory.mktemp("busybox")
    shutil.copy("/bin/busybox", context / "busybox")
    (context / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n')
    build = subprocess.run(["docker", "build", "-q", "-t", "e2e/busybox", str(context)], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr
    yield stack, name, instance_dir, env
    subprocess.run(["docker", "rm", "-f", "web", "taken", "fixed"], env=env, capture_output=True, timeout=120)


SERVE = "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"


def docker(env, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def fetch(port: int) -> str | None:
    result = subprocess.run(["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{port}/"],
                            capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else None


def within(seconds: float, condition) -> float | None:
    """How long ``condition()`` took to come true, or None after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def test_a_published_port_answers_on_the_machine_address_and_closes_with_the_container(machine):
    stack, name, instance_dir, env = machine
    port = free_port()
    ip = stack.machine("--stack", stack.name, "ip", name).stdout.strip()
    assert ip == "127.0.0.1"
    docker(env, "run", "-d", "--name", "web", "-p", f"{port}:8080", "e2e/busybox", "sh", "-c", SERVE.format(body="hi"))
    delay = within(10, lambda: fetch(port) == "hi")
    assert delay is not None, "the published port did not answer within 10 s"
    record_figure("published port answers after docker run returned (s)", round(delay, 2))
    docker(env, "stop", "-t", "1", "web")
    closed = within(10, lambda: fetch(port) is None and not _listening(port))
    assert closed is not None, "the port stayed open after docker stop"
    record_figure("published port closed after docker stop returned (s)", round(closed, 2))
    assert processes_matching(f"components.drivers.qemu.forwarder {instance_dir}")  # one forwarder, running on its own


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_taken_host_port_is_reported_and_forwarded_once_free(machine):
    stack, name, instance_dir, env = machine
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        docker(env, "run", "-d", "--name", "taken", "-p", f"{port}:8080", "e2e/busybox", "sh", "-c",
               SERVE.format(body="late"))  # fmt: skip
        reported = within(10, lambda: str(port) in stack.machine("--stack", stack.name, "ls").stdout)
        assert reported is not None
        ls = stack.machine("--stack", stack.name, "ls", "--format", "{{.Name}}|{{.State}}|{{.Error}}").stdout
        assert f"{name}|Running|host port {port}/tcp is in use by another program: not forwarded" in ls
        record = json.loads(stack.machine("--stack", stack.name, "inspect", name).stdout)
        assert f"{port}/tcp" in record["Forwards"]["conflicts"]
        assert docker(env, "inspect", "-f", "{{.State.Running}}", "taken").stdout.strip() == "true"
    finally:
        holder.close()
    docker(env, "restart", "-t", "1", "taken")
    assert within(10, lambda: fetch(port) == "late") is not None
    assert str(port) not in stack.machine("--stack", stack.name, "ls").stdout


def test_fixed_forwards_work_from_boot(machine):
    _, _, _, env = machine
    docker(env, "run", "-d", "--name", "fixed", "-p", "8081:8080", "e2e/busybox", "sh", "-c",
           SERVE.format(body="fixed"))  # fmt: skip
    # options.forwards: STATIC_FORWARD_PORT → guest 8081, in qemu's command line since boot.
    assert within(10, lambda: fetch(STATIC_FORWARD_PORT) == "fixed") is not None
    assert processes_matching(f"hostfwd=tcp:127.0.0.1:{STATIC_FORWARD_PORT}-:8081")  # qemu's own, from boot
