"""Issue 8 end to end on the session's QEMU machine: `up` converges after faults and ends only when Docker answers.

A VM killed behind Pulumi's back, a `pulumi up` SIGKILLed during daemon-config, and every qemu gone at once (a host
restart). Each leaves the machine running at the same URL with the same CA, client and server certificates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import (
    ROOT,
    have_tools,
    processes_matching,
    qemu_processes_for,
    record_figure,
    rewrite_machines,
    session_machine,
)  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]


@pytest.fixture(scope="module")
def machine(local_machine):
    return local_machine


def ping(stack, name: str, tmp_path) -> subprocess.CompletedProcess[str]:
    """curl --cert … /_ping with the stack's client certificate, on the URL the outputs hold now."""
    outputs = stack.outputs()
    for key, file in (("caCert", "ca.pem"), ("clientCert", "cert.pem"), ("clientKey", "key.pem")):
        (tmp_path / file).write_text(outputs[key])
    url = outputs["machines"][name]["url"].replace("tcp://", "https://")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "cert.pem"),
         "--key", str(tmp_path / "key.pem"), f"{url}/_ping"], capture_output=True, text=True,
    )  # fmt: skip


def qemu_pid(instance_dir: str) -> int:
    with open(os.path.join(instance_dir, "qemu.pid")) as f:
        return int(f.read().strip())


def test_up_after_the_vm_was_killed_returns_when_docker_answers(machine, tmp_path):
    """kill -9 of qemu, and its pid reused by an unrelated process (as after a host reboot): that process is never
    signalled, the VM counts as stopped, and a plain `up` starts it again."""
    stack, name, instance_dir = machine
    os.kill(qemu_pid(instance_dir), signal.SIGKILL)
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        time.sleep(1)
        with open(os.path.join(instance_dir, "qemu.pid"), "w") as f:
            f.write(f"{bystander.pid}\n")
        ls = stack.machine("--stack", stack.name, "ls", "--format", "{{.Name}} {{.State}}").stdout
        assert f"{name} Stopped" in ls.splitlines()
        started = time.monotonic()
        stack.pulumi("up", "--yes", "--skip-preview", timeout=900)
        took = time.monotonic() - started
        assert bystander.poll() is None  # not signalled, though its pid was in the pidfile
    finally:
        bystander.kill()
    record_figure("kill -9 qemu, pid reused by a sleep, then up: up seconds", round(took, 1))
    result = ping(stack, name, tmp_path)
    assert (result.returncode, result.stdout) == (0, "OK"), result.stderr  # right after up returned
    assert len(qemu_processes_for(instance_dir)) == 1 and qemu_pid(instance_dir) != bystander.pid


def test_a_no_op_up_runs_no_remote_command(machine):
    stack, _, _ = machine
    stack.pulumi("up", "--yes", "--skip-preview", timeout=600)
    changes = json.loads(stack.pulumi("stack", "history", "--json").stdout)[0]["resourceChanges"]
    assert set(changes) == {"same"}, changes


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True).stdout
        children = {int(p) for p in out.split()}
        todo += list(children - found)
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_up_killed_during_daemon_config_is_recovered_with_the_printed_command(machine, tmp_path):
    stack, name, instance_dir = machine
    before = stack.outputs()
    rewrite_machines(stack, [session_machine(name, engine={**session_machine(name)["engine"],
                                                             "labels": ['note=50%off "q" $x', "fault=sigkill"]})])
    events = tmp_path / "events.jsonl"
    up = subprocess.Popen(
        [os.path.join(ROOT, "scripts", "pulumi"), "up", "--yes", "--skip-preview", "--stack", stack.name,
         "--non-interactive", "--event-log", str(events)], cwd=ROOT,
        env=dict(stack.env, PULUMI_DEBUG_COMMANDS="true"),  # what makes --event-log (the Automation API's) available
        stdout=open(tmp_path / "up.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and up.poll() is None:
        text = events.read_text() if events.exists() else ""
        if any("resourcePreEvent" in line and f"{name}-daemon-config" in line for line in text.splitlines()):
            break
        time.sleep(0.2)
    assert up.poll() is None, "up ended before daemon-config started:\n" + (tmp_path / "up.log").read_text()[-3000:]
    time.sleep(1)
    run = _descendants(up.pid)
    assert run, "the engine started no language host or provider"
    os.kill(up.pid, signal.SIGKILL)
    up.wait()
    time.sleep(10)
    assert [pid for pid in run if _alive(pid)] == [], [processes_matching(str(p)) for p in run if _alive(p)]

    # The tool names the lock and the exact command that clears it; that command clears it.
    check = stack.machine("--stack", stack.name, "unlock", "--check", check=False)
    lines = [line for line in check.stderr.splitlines() if not line.startswith("toolchain:")]
    assert check.returncode == 1 and len(lines) == 1, check.stderr
    assert "no longer exists" in lines[0] and "Traceback" not in check.stderr
    command = lines[0].split("clear the lock with: ", 1)[1].split()
    assert command[:2] == ["scripts/machine", "unlock"]
    stack.machine(*command[1:])
    stack.pulumi("up", "--yes", "--skip-preview", timeout=900)

    after = stack.outputs()
    assert len(qemu_processes_for(instance_dir)) == 1
    for key in ("caCert", "clientCert"):
        assert after[key] == before[key], key
    assert after["machines"][name]["url"] == before["machines"][name]["url"]
    labels = stack.machine("--stack", stack.name, "ssh", name, "docker info --format '{{json .Labels}}'").stdout
    assert "fault=sigkill" in json.loads(labels)
    rewrite_machines(stack, [session_machine(name)])
    stack.pulumi("up", "--yes", "--skip-preview", timeout=900)


def test_after_a_host_restart_start_brings_docker_back_at_the_same_url(machine, tmp_path):
    stack, name, instance_dir = machine
    before = stack.outputs()["machines"][name]
    for line in qemu_processes_for(os.path.dirname(instance_dir)):  # every VM of the stack
        os.kill(int(line.split()[0]), signal.SIGKILL)
    time.sleep(2)
    ls = stack.machine("--stack", stack.name, "ls", "--format", "{{.Name}} {{.State}}").stdout
    assert f"{name} Stopped" in ls.splitlines()
    started = time.monotonic()
    stack.machine("--stack", stack.name, "start", name)
    record_figure("host restart: scripts/machine start seconds", round(time.monotonic() - started, 1))
    after = stack.outputs()["machines"][name]
    assert after["url"] == before["url"] and after["serverCertSerial"] == before["serverCertSerial"]
    result = ping(stack, name, tmp_path)
    assert (result.returncode, result.stdout) == (0, "OK"), result.stderr
    served = subprocess.run(["openssl", "s_client", "-connect", after["url"].removeprefix("tcp://")], input="",
                            capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    from components.steps import tls

    cert = served[served.index("-----BEGIN CERTIFICATE-----") : served.index("-----END CERTIFICATE-----") + 25]
    assert tls.serial_of(cert) == before["serverCertSerial"]
