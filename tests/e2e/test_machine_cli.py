"""`scripts/machine` end to end on the session's QEMU machine: docker-machine's everyday commands.

Runs after test_local_stack.py on the same running machine and leaves it running with the same config
(plus new certificates), so the fixture's destroy and leftover checks still apply. One kill/start cycle
(a reboot, minutes under TCG) is the only extra boot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from components.steps import tls
from tests.e2e.conftest import (
    ROOT,
    free_port,
    have_tools,
    processes_matching,
    record_figure,
    rewrite_machines,
    session_machine,
)  # fmt: skip

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]

MACHINE = os.path.join(ROOT, "scripts", "machine")


@pytest.fixture(scope="module")
def machine(local_machine):
    stack, name, _ = local_machine
    yield local_machine
    # The docker context made by `context` goes with the machine.
    subprocess.run(["docker", "context", "rm", "-f", name], capture_output=True, text=True)


def cli(stack, *args: str, input: str | None = None, timeout: float = 1200, **env: str):
    """scripts/machine with the session's backend, restricted to its stack (the global --stack option)."""
    return subprocess.run(
        [MACHINE, "--stack", stack.name, *args], cwd=ROOT, env={**stack.env, **env}, input=input,
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with exactly one `Error: …` line on stderr (the toolchain's own notes aside)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("toolchain:")]
    assert len(lines) == 1 and lines[0].startswith("Error"), result.stderr
    return lines[0]


def docker_env(stack, name: str) -> dict[str, str]:
    env = dict(stack.env, DOCKER_BUILDKIT="0")
    for line in ok(cli(stack, "env", name, SHELL="/bin/bash")).splitlines():
        if line.startswith("export "):
            key, value = line[len("export ") :].split("=", 1)
            env[key] = value.strip('"')
    return env


def server_version(env: dict[str, str], *context: str) -> str:
    result = subprocess.run(
        ["docker", *context, "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def served_serial(url: str) -> str:
    served = subprocess.run(
        ["openssl", "s_client", "-connect", url.removeprefix("tcp://"), "-showcerts"],
        input="", capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    cert = served[served.index("-----BEGIN CERTIFICATE-----") : served.index("-----END CERTIFICATE-----") + 25]
    return tls.serial_of(cert)


def test_ls_shows_the_machine_running_with_its_docker_version(machine):
    stack, name, _ = machine
    info = stack.outputs()["machines"][name]
    lines = ok(cli(stack, "ls", DOCKER_HOST="")).splitlines()
    assert lines[0].split() == ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS"]
    assert lines[1].split() == [name, "-", "qemu", "Running", info["url"], f"v{info['dockerVersion']}"]
    # Columns line up under their headers (tabwriter: padding 3).
    assert lines[1].index("Running") == lines[0].index("STATE")
    assert lines[1].index(info["url"]) == lines[0].index("URL")

    active_lines = ok(cli(stack, "ls", DOCKER_HOST=info["url"])).splitlines()
    assert active_lines[1].split()[:2] == [name, "*"]
    assert ok(cli(stack, "active", DOCKER_HOST=info["url"])) == f"{name}\n"
    assert ok(cli(stack, "ls", "-q")) == f"{name}\n"
    assert ok(cli(stack, "ls", "-q", "--filter", "state=stopped")) == ""
    assert ok(cli(stack, "ls", "--filter", "driver=qemu", "--format", "{{.Name}}: {{.DockerVersion}}")) == (
        f"{name}: v{info['dockerVersion']}\n"
    )


def test_status_ip_url_inspect_and_version(machine):
    stack, name, _ = machine
    info = stack.outputs()["machines"][name]
    assert ok(cli(stack, "status", name)) == "Running\n"
    assert ok(cli(stack, "ip", name)) == f"{info['ip']}\n"
    assert ok(cli(stack, "url", name)) == f"{info['url']}\n"
    record = json.loads(ok(cli(stack, "inspect", name)))
    assert (record["Name"], record["DriverName"], record["Driver"]["IPAddress"]) == (name, "qemu", info["ip"])
    assert ok(cli(stack, "inspect", name, "--format", "{{.Driver.SSHPort}}")) == f"{info['ssh']['port']}\n"
    assert ok(cli(stack, "version", name)) == f"{info['dockerVersion']}\n"


def test_env_in_every_shell_and_config_reach_docker(machine):
    stack, name, _ = machine
    url = stack.outputs()["machines"][name]["url"]
    for shell, line in {
        "fish": f'set -gx DOCKER_HOST "{url}";',
        "powershell": f'$Env:DOCKER_HOST = "{url}"',
        "cmd": f"SET DOCKER_HOST={url}",
        "tcsh": f'setenv DOCKER_HOST "{url}";',
        "emacs": f'(setenv "DOCKER_HOST" "{url}")',
    }.items():
        assert line in ok(cli(stack, "env", name, "--shell", shell)).splitlines()
    assert server_version(docker_env(stack, name)) == stack.outputs()["machines"][name]["dockerVersion"]
    # docker-machine's usage: the client flags from `config` (eval removes the %q quotes).
    script = f'eval docker $("{MACHINE}" --stack {stack.name} config {name}) version --format "{{{{.Server.Version}}}}"'
    result = subprocess.run(["bash", "-c", script], env=stack.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == stack.outputs()["machines"][name]["dockerVersion"]


def test_ssh_runs_a_command_on_the_guest(machine):
    stack, name, _ = machine
    out = ok(cli(stack, "ssh", name, "uname", "-a"))
    assert out.startswith("Linux ") and name in out, out  # the guest's kernel and hostname
    assert out != subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout
    assert cli(stack, "ssh", name, "exit", "3").returncode == 3  # the remote status comes back


def test_scp_copies_files_and_directories_both_ways(machine, tmp_path):
    stack, name, _ = machine
    local = tmp_path / "hello.txt"
    local.write_text("hello from the host\n")
    ok(cli(stack, "scp", str(local), f"{name}:/tmp/hello.txt"))
    assert ok(cli(stack, "ssh", name, "cat", "/tmp/hello.txt")) == "hello from the host\n"
    ok(cli(stack, "ssh", name, "sh", "-c", "'mkdir -p /tmp/d/sub && echo guest > /tmp/d/sub/f'"))
    ok(cli(stack, "scp", "-r", f"{name}:/tmp/d", str(tmp_path / "back")))
    assert (tmp_path / "back" / "sub" / "f").read_text() == "guest\n"
    ok(cli(stack, "scp", f"{name}:/tmp/hello.txt", str(tmp_path / "again.txt")))
    assert (tmp_path / "again.txt").read_text() == "hello from the host\n"


def test_mount_shows_the_guests_folder_and_unmount_leaves_no_sshfs(machine, tmp_path):
    """Issue 19: a machine's folder here over sshfs. As root: this sandbox's /dev/fuse is root's only (a Debian host's
    udev rule opens it to all), so a normal user cannot mount FUSE here at all."""
    stack, name, _ = machine
    where = tmp_path / "x"
    ok(cli(stack, "mount", f"{name}:/etc", str(where)))
    try:
        assert "ID=debian" in (where / "os-release").read_text()
        ok(cli(stack, "mount", "-u", f"{name}:/etc", str(where)))
        assert processes_matching(str(where)) == [] and os.listdir(where) == []
    finally:
        subprocess.run(["fusermount3", "-u", str(where)], capture_output=True)


def test_docker_context_reaches_the_machine(machine):
    stack, name, _ = machine
    assert ok(cli(stack, "context", name)) == f"{name}\n"
    ok(cli(stack, "context", name))  # again: an update
    assert server_version(stack.env, "--context", name) == stack.outputs()["machines"][name]["dockerVersion"]


def test_regenerate_certs_issues_a_new_server_certificate(machine):
    stack, name, _ = machine
    before = stack.outputs()["machines"][name]["serverCertSerial"]
    declined = cli(stack, "regenerate-certs", name, input="n\n")
    assert ok(declined) == "Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): "
    assert stack.outputs()["machines"][name]["serverCertSerial"] == before

    assert ok(cli(stack, "regenerate-certs", "-f", name)).splitlines() == ["Regenerating TLS certificates"]
    after = stack.outputs()["machines"][name]["serverCertSerial"]
    assert after != before
    env = docker_env(stack, name)
    assert served_serial(env["DOCKER_HOST"]) == after
    assert server_version(env) == stack.outputs()["machines"][name]["dockerVersion"]
    assert server_version(stack.env, "--context", name)


def test_regenerate_client_certs_replaces_the_ca_and_updates_local_material(machine):
    stack, name, _ = machine
    outputs = stack.outputs()
    ok(cli(stack, "regenerate-certs", "-f", "--client-certs", name))
    new = stack.outputs()
    assert new["caCert"] != outputs["caCert"] and new["clientCert"] != outputs["clientCert"]
    assert new["machines"][name]["serverCertSerial"] != outputs["machines"][name]["serverCertSerial"]
    cert_path = new["machines"][name]["env"]["DOCKER_CERT_PATH"]
    with open(os.path.join(cert_path, "ca.pem")) as f:
        assert f.read() == new["caCert"]  # rewritten by regenerate-certs itself
    assert server_version(stack.env, "--context", name)  # the context was updated too
    assert server_version(docker_env(stack, name))


def test_provision_re_runs_the_steps(machine):
    stack, name, _ = machine
    serial = stack.outputs()["machines"][name]["serverCertSerial"]
    out = ok(cli(stack, "provision", name))
    assert f'Machine "{name}" was provisioned.' in out
    history = json.loads(stack.pulumi("stack", "history", "--json", "--show-secrets").stdout)[0]
    assert history["resourceChanges"].get("replace", 0) >= 4, history["resourceChanges"]
    assert stack.outputs()["machines"][name]["serverCertSerial"] == serial
    assert server_version(docker_env(stack, name))


def test_errors_are_one_line_and_exit_1(machine):
    stack, name, _ = machine
    assert one_line_error(cli(stack, "status", "no-such-machine")) == 'Error: Host does not exist: "no-such-machine"'
    assert one_line_error(cli(stack, "env")).startswith('Error: No machine name(s) specified and no "default"')
    assert one_line_error(cli(stack, "rm")) == "Error: Expected to get one or more machine names as arguments"
    assert "already exists" in one_line_error(cli(stack, "create", name))
    assert "Invalid hostname" in one_line_error(cli(stack, "create", "bad_name"))
    # Declining rm's prompt keeps the machine.
    declined = cli(stack, "rm", name, input="n\n")
    assert declined.returncode == 0 and declined.stdout.endswith("Are you sure? (y/n): ")
    assert ok(cli(stack, "ls", "-q")) == f"{name}\n"
    # docker-machine's driver flags: --<driver>-<option>; an unknown one is refused before anything changes.
    assert "flag provided but not defined" in one_line_error(cli(stack, "create", "x", "--qemu-nope", "1"))


def test_kill_then_start_brings_docker_back_over_tls_with_the_same_certificates(machine, tmp_path):
    stack, name, instance_dir = machine
    # A container that restarts with Docker publishes its port again after the start (issue 11).
    port = free_port()
    env = docker_env(stack, name)
    shutil.copy("/bin/busybox", tmp_path / "busybox")
    (tmp_path / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n')
    build = subprocess.run(["docker", "build", "-q", "-t", "e2e/busybox", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        ["docker", "run", "-d", "--restart", "always", "-p", f"{port}:8080", "e2e/busybox", "sh", "-c",
         "mkdir -p /w && echo again > /w/index.html && exec httpd -f -p 8080 -h /w"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    serial = served_serial(stack.outputs()["machines"][name]["url"])
    # Served, then on the guest's disk: a power-off loses what the guest had not written yet, as a power cut does.
    deadline = time.monotonic() + 60
    while _fetch(port) != "again" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _fetch(port) == "again"
    ok(cli(stack, "ssh", name, "sync"))
    # kill is docker-machine's: the plug pulled at once (QMP quit), then the stack records the machine stopped.
    # Powered off: the guest stopped, so QEMU closed its forwarded Docker port. The process itself is gone only when
    # the host kernel has taken back the guest's memory, which here runs at about 1 GB/s (docs/cli.md).
    with open(os.path.join(instance_dir, "qemu.pid")) as f:
        pid = int(f.read().strip())
    docker_port = int(stack.outputs()["machines"][name]["port"])
    started, off = time.monotonic(), None
    killing = subprocess.Popen([MACHINE, "--stack", stack.name, "kill", name], cwd=ROOT, env=stack.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while os.path.exists(f"/proc/{pid}") and time.monotonic() - started < 30:
        if off is None and not _accepts(docker_port):
            off = time.monotonic() - started
        time.sleep(0.01)
    gone = time.monotonic() - started
    out, err = killing.communicate(timeout=1200)
    assert killing.returncode == 0, err
    assert out.splitlines() == [f'Killing "{name}"...', f'Machine "{name}" was killed.']
    assert off is not None and off < 2, (off, gone)
    record_figure("kill: from the command to the guest off (its Docker port refused)", f"{off:.2f} s")
    record_figure("kill: from the command to the QEMU process gone (memory returned)", f"{gone:.2f} s")
    assert ok(cli(stack, "status", name)) == "Stopped\n"
    assert ok(cli(stack, "ls", "--format", "{{.Name}} {{.State}} {{.URL}}|{{.DockerVersion}}")) == (
        f"{name} Stopped |Unknown\n"
    )
    assert one_line_error(cli(stack, "stop", name)) == f'Error: Machine "{name}" is already stopped.'
    assert one_line_error(cli(stack, "ssh", name, "true")) == (
        f'Error: Cannot run SSH command: Host "{name}" is not running'
    )
    assert one_line_error(cli(stack, "env", name)) == "Error checking TLS connection: Host is not running"
    assert not os.path.exists(os.path.join(instance_dir, "qemu.pid")) or not _alive(instance_dir)

    out = ok(cli(stack, "start", name))
    assert out.splitlines()[0] == f'Starting "{name}"...'
    assert f'Machine "{name}" was started.' in out
    assert ok(cli(stack, "status", name)) == "Running\n"
    assert one_line_error(cli(stack, "start", name)) == f'Error: Machine "{name}" is already running.'
    assert server_version(docker_env(stack, name)) == stack.outputs()["machines"][name]["dockerVersion"]
    assert served_serial(stack.outputs()["machines"][name]["url"]) == serial  # the same certificates
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _fetch(port) != "again":
        time.sleep(1)
    assert _fetch(port) == "again"
    subprocess.run(["docker", "rm", "-f", run.stdout.strip()], env=env, capture_output=True, timeout=120)


def _fetch(port: int) -> str | None:
    result = subprocess.run(["curl", "-sf", "--max-time", "2", f"http://127.0.0.1:{port}/"], capture_output=True,
                            text=True)  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 else None


def _alive(instance_dir: str) -> bool:
    try:
        with open(os.path.join(instance_dir, "qemu.pid")) as f:
            os.kill(int(f.read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def test_an_up_that_would_replace_the_vm_is_refused_without_consent(machine):
    """A bigger disk needs a new VM: without a terminal and without --yes, `up` names the machine and changes nothing;
    with --yes it goes ahead (the new VM answers over TLS)."""
    stack, name, instance_dir = machine
    with open(os.path.join(instance_dir, "qemu.pid")) as f:
        pid = f.read().strip()
    base = session_machine(name)
    rewrite_machines(stack, [session_machine(name, options={**base["options"], "disk": 24000})])
    refused = cli(stack, "up")
    assert refused.returncode == 1, refused.stderr
    assert f"up would replace or delete {name}, losing what is on them; nothing was changed" in refused.stderr
    assert f"{name}: VM replaced (disk changed): containers and volumes on it are lost" in refused.stderr
    assert "--yes (make up YES=1)" in refused.stderr
    with open(os.path.join(instance_dir, "qemu.pid")) as f:
        assert f.read().strip() == pid  # nothing changed
    started = time.monotonic()
    ok(cli(stack, "up", "--yes"))
    record_figure("disk change: up --yes (a new VM) seconds", round(time.monotonic() - started, 1))
    with open(os.path.join(instance_dir, "qemu.pid")) as f:
        assert f.read().strip() != pid
    assert server_version(docker_env(stack, name)) == stack.outputs()["machines"][name]["dockerVersion"]
