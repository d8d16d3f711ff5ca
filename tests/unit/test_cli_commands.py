"""`scripts/machine` commands end to end against a fake `pulumi` and a fake Docker daemon (no VM)."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import stat

import pytest
from typer.testing import CliRunner

from components import drivers
from components.drivers.qemu.vm import VM as QEMU_VM
from components.steps import tls
from scripts.machinecli import app as cli
from scripts.machinecli import formats, machines, power, probe, sshclient, ui, workspace
from scripts.machinecli import maintenance as provision
from scripts.machinecli.errors import MachineError
from tests.fakes.docker import (
    HOST_KEY_PUBLIC,
    DockerServer,
    Listener,
    closed_port,
    machine_info,
    make_pki,
    stack_outputs,
)
from tests.fakes.workspace import FakeStack, FakeWorkspace, machine_resources

KEY = workspace.MACHINES_KEY
COMPONENT = "dockermachine:index:DockerMachine"


@pytest.fixture(scope="module")
def sshd():
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHELL", "/bin/bash")
    for var in ("DOCKER_HOST", "MACHINE_STACK", "no_proxy", "NO_PROXY", "MACHINE_DRIVER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(power, "DOCKER_WAIT", 3.0)


def invoke(*args: str, input: str | None = None):
    ui.ARGV = ["scripts/machine", *args]
    return CliRunner().invoke(cli.app, list(args), input=input)


def error_line(result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def world(monkeypatch, pki, docker, sshd):
    """Stack `local`: `dev` (running: Docker answers), `web` (stopped: nothing listens); `far`: generic in `cloud`."""
    down = closed_port()
    local = {
        "dev": machine_info("dev", docker.port, sshd.port),
        "web": machine_info("web", down, down),
    }
    cloud = {"far": machine_info("far", down, sshd.port, driver="generic")}
    fake = FakeWorkspace(
        FakeStack(
            "local",
            stack_outputs(pki, local),
            {KEY: [{"name": "dev", "driver": "qemu", "engine": {"labels": ["env=dev"]}}, {"name": "web"}]},
            machine_resources("local", "dev") + machine_resources("local", "web"),
            current=True,
        ),
        FakeStack(
            "cloud",
            stack_outputs(pki, cloud),
            {KEY: [{"name": "far", "driver": "generic", "options": {"address": "127.0.0.1"}}]},
            machine_resources("cloud", "far", driver="generic", undo=True),
        ),
    ).install(monkeypatch)
    return fake


# --- reading: ls, status, active, ip, url, inspect, version ----------------------------------------------


def test_ls_probes_every_host(world, docker):
    result = invoke("ls")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "SWARM", "DOCKER", "ERRORS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["dev"].split() == ["dev", "-", "qemu", "Running", f"tcp://127.0.0.1:{docker.port}", "v24.0.7"]
    assert rows["web"].split() == ["web", "-", "qemu", "Stopped", "Unknown"]
    # SSH answers but Docker does not: Running, and why in ERRORS.
    far_url = world.by_name["cloud"].outputs["machines"]["far"]["url"]
    assert rows["far"].split()[:6] == ["far", "-", "generic", "Running", far_url, "Unknown"]
    assert "Unable to query docker version: Get https://127.0.0.1:" in rows["far"]
    assert [line.split()[0] for line in lines[1:]] == ["dev", "far", "web"]


def test_ls_active_quiet_filters_and_format(world, docker, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{docker.port}")
    assert invoke("ls").stdout.splitlines()[1].split()[:2] == ["dev", "*"]
    assert invoke("active").stdout == "dev\n"
    assert invoke("ls", "-q").stdout == "dev\nfar\nweb\n"
    assert invoke("ls", "-q", "--filter", "state=running").stdout == "dev\nfar\n"
    assert invoke("ls", "-q", "--filter", "label=env=dev").stdout == "dev\n"
    assert invoke("ls", "-q", "--filter", "driver=generic").stdout == "far\n"
    assert invoke("ls", "-q", "--stack", "cloud").stdout == "far\n"
    assert invoke("--stack", "cloud", "ls", "-q").stdout == "far\n"
    assert invoke("ls", "--filter", "name=^w", "--format", "{{.Name}}={{.State}}").stdout == "web=Stopped\n"
    assert error_line(invoke("ls", "--filter", "size=big")) == "Error: Unsupported filter key 'size'"
    assert error_line(invoke("ls", "--format", "{{.Nope")).startswith("Error: Template parsing error")


def test_active_without_a_match(world):
    assert error_line(invoke("active")) == "Error: No active host found"


def test_status_is_live(world):
    assert invoke("status", "dev").stdout == "Running\n"
    assert invoke("status", "web").stdout == "Stopped\n"


def test_ls_reports_a_host_that_does_not_answer_in_time(world, monkeypatch, pki):
    hung = Listener()  # accepts TCP, never speaks TLS
    try:
        world.by_name["cloud"].outputs["machines"]["far"] = machine_info("far", hung.port, hung.port, driver="generic")
        found = machines.Registry().machines()
        # Generous enough for the fake Docker to answer on a loaded machine; the hung host still times out.
        states = [p.state for p in probe.probe_all(found, 2.0)]
        assert dict(zip([m.name for m in found], states, strict=True)) == {
            "dev": "Running", "web": "Stopped", "far": "Timeout"
        }  # fmt: skip
        item = probe.ls_items([m for m in found if m.name == "far"], 1.0)[0]
        assert formats.ls_output([item]).splitlines()[1].split() == ["far", "generic", "Timeout"]
    finally:
        hung.close()


def test_ip_url_inspect_and_version(world, docker):
    assert invoke("ip", "dev", "web").stdout == "127.0.0.1\n127.0.0.1\n"
    assert invoke("url", "dev").stdout == f"tcp://127.0.0.1:{docker.port}\n"
    record = json.loads(invoke("inspect", "dev").stdout)
    assert record["Name"] == "dev" and record["Driver"]["SSHUser"] == "docker"
    assert record["HostOptions"]["EngineOptions"]["Labels"] == ["env=dev"]
    assert invoke("inspect", "dev", "-f", "{{.DriverName}} {{.Stack}}").stdout == "qemu local\n"
    assert invoke("version", "dev").stdout == "24.0.7\n"
    assert invoke("version").stdout.startswith("machine version ")
    assert error_line(invoke("version", "web")) == 'Error: Host "web" is not running'


def test_unknown_machine_and_default_machine(world):
    assert error_line(invoke("status", "nope")) == 'Error: Host does not exist: "nope"'
    assert error_line(invoke("env")) == 'Error: No machine name(s) specified and no "default" machine exists'
    world.by_name["local"].outputs["machines"]["default"] = world.by_name["local"].outputs["machines"]["dev"]
    assert invoke("status").stdout == "Running\n"


def test_a_stack_that_cannot_be_read_is_named_when_a_machine_is_missing(world, monkeypatch):
    real = world.outputs

    def outputs(stack):
        if stack == "cloud":
            raise MachineError("incorrect passphrase")
        return real(stack)

    monkeypatch.setattr(world, "outputs", outputs)
    assert error_line(invoke("status", "far")) == (
        'Error: Host does not exist: "far" (unreadable: stack "cloud": incorrect passphrase)'
    )
    result = invoke("ls", "-q")
    assert result.stdout == "dev\nweb\n" and 'Warning: stack "cloud": incorrect passphrase' in result.stderr


def test_the_entry_point_runs_outside_the_repository_directory(tmp_path):
    import subprocess
    import sys

    script = os.path.join(workspace.ROOT, "scripts", "machine.py")
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DMP_ARGV0": "scripts/machine"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: machine [OPTIONS] COMMAND [ARGS]...")
    for command in ("ls", "env", "config", "regenerate-certs", "context", "scp"):
        assert f"  {command} " in result.stdout


def test_a_name_in_two_stacks_prefers_the_current_stack(world):
    world.by_name["cloud"].outputs["machines"]["dev"] = world.by_name["cloud"].outputs["machines"]["far"]
    assert invoke("inspect", "dev", "-f", "{{.Stack}}").stdout == "local\n"
    world.by_name["local"].current = False
    assert "choose one with --stack" in error_line(invoke("status", "dev"))
    assert invoke("inspect", "dev", "-f", "{{.Stack}}", "--stack", "cloud").stdout == "cloud\n"


# --- env, config -----------------------------------------------------------------------------------------


def test_env_checks_tls_writes_the_certs_and_prints_the_hint(world, docker, pki):
    result = invoke("env", "dev", "--stack", "local")
    assert result.exit_code == 0, result.stderr
    cert_path = os.path.expanduser("~/.docker/machine/machines/dev")
    assert result.stdout == (
        'export DOCKER_TLS_VERIFY="1"\n'
        f'export DOCKER_HOST="tcp://127.0.0.1:{docker.port}"\n'
        f'export DOCKER_CERT_PATH="{cert_path}"\n'
        'export DOCKER_MACHINE_NAME="dev"\n'
        "# Run this command to configure your shell: \n"
        "# eval $(scripts/machine env dev --stack local)\n"
    )
    with open(os.path.join(cert_path, "key.pem")) as f:
        assert f.read() == pki.client_key
    assert stat.S_IMODE(os.stat(os.path.join(cert_path, "key.pem")).st_mode) == 0o600
    assert (
        invoke("env", "dev", "--shell", "fish").stdout.splitlines()[-1]
        == "# eval (scripts/machine env dev --shell fish)"
    )


def test_env_and_config_use_this_users_cert_path_not_that_of_whoever_ran_up(world, docker, pki):
    # A teammate's `up` recorded their own home in the machine's env output.
    world.by_name["local"].outputs["machines"]["dev"]["env"]["DOCKER_CERT_PATH"] = "/home/alice/.docker/machine/dev"
    mine = os.path.expanduser("~/.docker/machine/machines/dev")
    assert f'export DOCKER_CERT_PATH="{mine}"\n' in invoke("env", "dev").stdout
    assert f"--tlscacert=\"{mine}/ca.pem\"" in invoke("config", "dev").stdout
    assert invoke("inspect", "dev", "-f", "{{.HostOptions.AuthOptions.CertDir}}").stdout == f"{mine}\n"
    with open(os.path.join(mine, "key.pem")) as f:
        assert f.read() == pki.client_key


def test_env_unset_needs_no_machine(world, monkeypatch):
    assert invoke("env", "-u").stdout.startswith("unset DOCKER_TLS_VERIFY\n")
    assert error_line(invoke("env", "-u", "dev")) == "Error: Expected no machine name when the -u flag is present"
    monkeypatch.delenv("SHELL")
    without_shell = invoke("env", "dev")
    assert without_shell.exit_code == 0
    assert without_shell.stdout.startswith('export DOCKER_TLS_VERIFY="1"\n')
    assert "$SHELL is not set" in without_shell.stderr and "--shell" in without_shell.stderr
    assert invoke("env", "dev", "--shell", "tcsh").stdout.startswith('setenv DOCKER_TLS_VERIFY "1";\n')


def test_env_no_proxy_uses_the_machine_ip(world, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert 'export NO_PROXY="localhost,127.0.0.1"' in invoke("env", "dev", "--no-proxy").stdout.splitlines()


def test_env_on_a_certificate_mismatch_says_to_regenerate(world, monkeypatch):
    other = make_pki()  # the daemon presents a certificate from another CA
    server = DockerServer(other, trusted_ca=world.by_name["local"].outputs["caCert"])
    try:
        world.by_name["local"].outputs["machines"]["dev"] = machine_info("dev", server.port, closed_port())
        result = invoke("env", "dev")
        assert result.exit_code == 1 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert lines[0].startswith(
            "Error checking TLS connection: Error checking and/or regenerating the certs: "
            f'There was an error validating certificates for host "127.0.0.1:{server.port}": x509: '
        )
        assert lines[1:] == [
            "You can attempt to regenerate them using 'scripts/machine regenerate-certs dev'.",
            "Be advised that this will trigger a Docker daemon restart which might stop running containers.",
        ]
    finally:
        server.close()


def test_env_and_config_on_a_stopped_or_unreachable_machine(world, sshd):
    assert error_line(invoke("env", "web")) == "Error checking TLS connection: Host is not running"
    assert error_line(invoke("config", "web")) == "Error checking TLS connection: Host is not running"
    line = error_line(invoke("env", "far"))
    assert line.startswith("Error checking TLS connection: Docker on tcp://127.0.0.1:") and "does not answer" in line


def test_config_prints_the_client_flags(world, docker):
    cert_path = os.path.expanduser("~/.docker/machine/machines/dev")
    assert invoke("config", "dev").stdout == (
        f'--tlsverify\n--tlscacert="{cert_path}/ca.pem"\n--tlscert="{cert_path}/cert.pem"\n'
        f'--tlskey="{cert_path}/key.pem"\n-H=tcp://127.0.0.1:{docker.port}\n'
    )
    assert os.path.exists(os.path.join(cert_path, "cert.pem"))


# --- ssh, scp --------------------------------------------------------------------------------------------


@pytest.fixture
def attached(monkeypatch):
    calls = []

    def fake(argv, runner=None):
        key = argv[argv.index("-i") + 1]
        known_hosts = next(a.removeprefix("UserKnownHostsFile=") for a in argv if a.startswith("UserKnownHostsFile="))
        calls.append((argv, oct(stat.S_IMODE(os.stat(key).st_mode)), open(key).read(), open(known_hosts).read()))
        return 7

    monkeypatch.setattr(sshclient, "run_attached", fake)
    return calls


def test_ssh_runs_the_command_with_the_stacks_key(world, sshd, attached):
    result = invoke("ssh", "dev", "uname", "-a", "--stack", "x")
    assert result.exit_code == 7  # the remote status comes back
    argv, mode, key, known_hosts = attached[0]
    assert mode == "0o600" and key == "-----BEGIN OPENSSH PRIVATE KEY-----\ndev\n"
    assert not os.path.exists(argv[argv.index("-i") + 1])  # removed afterwards
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    # The host is checked against the key the stack pinned, under the machine's own alias, never accepted blindly.
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=docker-machine.dev" in argv
    assert known_hosts == f"docker-machine.dev {HOST_KEY_PUBLIC}\n"
    assert not any(a in argv for a in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"))
    # Everything after the name is the remote command, flags included (docker-machine: no flag parsing).
    assert argv[argv.index("-p") :] == ["-p", str(sshd.port), "docker@127.0.0.1", "uname", "-a", "--stack", "x"]
    invoke("--stack", "local", "ssh", "dev")
    assert attached[1][0][-1] == "docker@127.0.0.1"  # no command: a login shell


def test_ssh_to_a_stopped_machine(world, attached):
    assert error_line(invoke("ssh", "web", "true")) == 'Error: Cannot run SSH command: Host "web" is not running'
    assert attached == []


def test_scp_both_directions(world, sshd, attached):
    invoke("scp", "-r", "./dir", "dev:/tmp/dir")
    argv = attached[0][0]
    assert argv[0] == "scp" and argv[argv.index("-P") + 1] == str(sshd.port)
    assert argv[-3:] == ["-r", "./dir", "docker@127.0.0.1:/tmp/dir"]
    invoke("scp", "root@dev:/etc/hostname", "localhost:out")
    assert attached[1][0][-2:] == ["root@127.0.0.1:/etc/hostname", "out"]
    assert "not supported" in error_line(invoke("scp", "dev:a", "far:b"))
    assert error_line(invoke("scp", "nope:a", "b")) == 'Error: Host does not exist: "nope"'


@pytest.fixture
def spawned(monkeypatch):
    """What rsync and sshfs would be run with, and the pinned host key file they would read."""
    calls = []

    def fake(argv, runner=None):
        text = " ".join(argv)
        known_hosts = text.split("UserKnownHostsFile=")[1].split()[0]
        calls.append((argv, open(known_hosts).read()))
        return 0

    monkeypatch.setattr(sshclient, "run_attached", fake)
    return calls


def test_scp_delta_is_rsync_over_the_pinned_ssh(world, sshd, spawned):
    invoke("scp", "-r", "--delta", "./dir", "dev:/srv/dir")
    argv, known_hosts = spawned[0]
    assert argv[0] == "rsync" and argv[-2:] == ["./dir", "docker@127.0.0.1:/srv/dir"] and "--recursive" in argv
    transport = shlex.split(argv[argv.index("-e") + 1])
    assert transport[0] == "ssh" and transport[transport.index("-p") + 1] == str(sshd.port)
    assert "StrictHostKeyChecking=yes" in transport and known_hosts == f"docker-machine.dev {HOST_KEY_PUBLIC}\n"


def test_mount_is_sshfs_with_the_pinned_key_and_unmount_fusermount(world, sshd, spawned, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("mount", "dev:/etc").exit_code == 0
    argv, known_hosts = spawned[0]
    # Not docker-machine's default (the remote path itself: this host's /etc): the folder's name, here.
    assert argv[:3] == ["sshfs", "docker@127.0.0.1:/etc", str(tmp_path / "etc")] and (tmp_path / "etc").is_dir()
    assert argv[argv.index("-p") + 1] == str(sshd.port) and "idmap=user" in argv
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=docker-machine.dev" in argv
    assert known_hosts == f"docker-machine.dev {HOST_KEY_PUBLIC}\n"
    monkeypatch.setattr(sshclient, "run_attached", lambda argv, runner=None: spawned.append((argv, "")) or 0)
    invoke("mount", "-u", "dev:/etc", "mnt")
    assert spawned[-1][0][-2:] == ["-u", str(tmp_path / "mnt")] or spawned[-1][0] == ["umount", str(tmp_path / "mnt")]
    assert "name the machine's folder" in error_line(invoke("mount", "/etc"))


def test_scp_argument_parsing():
    assert sshclient.parse_scp_arg("/tmp/x") == sshclient.ScpPath("/tmp/x")
    assert sshclient.parse_scp_arg("localhost:/tmp/x") == sshclient.ScpPath("/tmp/x")
    assert sshclient.parse_scp_arg("dev:") == sshclient.ScpPath("", "dev")
    assert sshclient.parse_scp_arg("u@dev:~/f") == sshclient.ScpPath("~/f", "dev", "u")


# --- power: start, stop, restart, kill -------------------------------------------------------------------


def _states(monkeypatch, **states):
    monkeypatch.setattr(
        probe, "probe_all", lambda machines, timeout=10: [probe.Probe(states.get(m.name, "Running")) for m in machines]
    )


def test_stop_sets_the_desired_state_and_runs_a_targeted_refreshed_up(world, monkeypatch):
    _states(monkeypatch, dev="Running")
    result = invoke("stop", "dev")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == 'Stopping "dev"...\nMachine "dev" was stopped.\n'
    assert world.machines_config("local")[0]["state"] == "stopped"
    (up,) = world.streams
    targets = [up[i + 1] for i, a in enumerate(up) if a == "--target"]
    component = f"urn:pulumi:local::{workspace.PROJECT}::dockermachine:index:DockerMachine::dev"
    assert targets[0] == component
    assert len(targets) == 9 and all("web" not in t for t in targets)  # the component and its 8 children
    assert {"--target-dependents", "--refresh", "--yes", "--skip-preview"} <= set(up)
    assert up[: up.index("--target")].count("local") == 1


def test_power_errors(world, monkeypatch):
    _states(monkeypatch, dev="Stopped", web="Stopped")
    assert error_line(invoke("stop", "dev")) == 'Error: Machine "dev" is already stopped.'
    _states(monkeypatch)
    assert error_line(invoke("start", "dev")) == 'Error: Machine "dev" is already running.'
    assert error_line(invoke("stop", "far")) == "Error: generic driver does not support stop"
    assert error_line(invoke("start", "far")) == "Error: generic driver does not support start"
    assert world.streams == []


def test_kill_powers_off_at_once_then_records_the_machine_stopped(world, monkeypatch):
    order = []
    monkeypatch.setattr(probe, "probe_all", lambda *a, **k: order.append("probe"))  # no probe: every second counts
    qemu = drivers.load("qemu")
    monkeypatch.setattr(type(qemu), "kill", lambda self, name, details: order.append(("kill", name)) or True)
    world.on_stream = lambda args, fake: order.append(("up", fake.machines_config("local")[0]["state"]))
    assert invoke("kill", "dev").stdout == 'Killing "dev"...\nMachine "dev" was killed.\n'
    assert order == [("kill", "dev"), ("up", "stopped")]


def test_kill_of_a_stopped_machine_or_a_driver_without_a_hard_power_off(world, monkeypatch):
    qemu = drivers.load("qemu")
    monkeypatch.setattr(type(qemu), "kill", lambda self, name, details: False)
    assert error_line(invoke("kill", "dev")) == 'Error: Machine "dev" is already stopped.'
    assert world.streams == []
    monkeypatch.setattr(type(qemu), "kill", lambda self, name, details: None)
    result = invoke("kill", "dev")
    assert "has no hard power-off: it is stopped instead" in result.stderr
    assert world.machines_config("local")[0]["state"] == "stopped"
    assert error_line(invoke("kill", "far")) == "Error: generic driver does not support kill"


def test_start_waits_for_docker_and_prints_the_hint(world, monkeypatch):
    _states(monkeypatch, web="Stopped")
    world.by_name["local"].config[KEY][1]["state"] = "stopped"
    # The machine comes up at the address the stack outputs hold after the update.
    live = dict(world.by_name["local"].outputs["machines"]["dev"], name="web")
    world.on_stream = lambda args, fake: fake.by_name["local"].outputs["machines"].__setitem__("web", live)
    result = invoke("start", "web")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        'Starting "web"...',
        'Machine "web" was started.',
        "Started machines may have new IP addresses. You may need to re-run the `scripts/machine env` command.",
    ]
    assert world.machines_config("local")[1]["state"] == "running"


def test_start_fails_when_docker_does_not_come_back(world, monkeypatch):
    _states(monkeypatch, web="Stopped")
    monkeypatch.setattr(power, "DOCKER_WAIT", 0.2)
    assert 'Docker on "web" did not answer within' in error_line(invoke("start", "web"))


def test_restart_stops_then_starts(world, monkeypatch):
    _states(monkeypatch)
    result = invoke("restart", "dev")
    assert result.exit_code == 0, result.stderr
    assert len(world.streams) == 2 and world.machines_config("local")[0]["state"] == "running"
    assert result.stdout.splitlines()[-1].startswith("Restarted machines may have new IP addresses.")


def test_restart_of_a_generic_host_reboots_it_over_ssh(world, monkeypatch):
    _states(monkeypatch)
    scripts = []
    monkeypatch.setattr(sshclient, "ssh_run", lambda m, script, timeout=0: scripts.append((m.name, script)))
    monkeypatch.setattr(probe, "ssh_reachable", lambda m, timeout=0: "open" if not scripts else "refused")
    monkeypatch.setattr(power, "wait_for_docker", lambda machines: None)
    assert invoke("restart", "far").exit_code == 0
    assert scripts[0][0] == "far" and "reboot" in scripts[0][1]
    assert world.streams == []


# --- regenerate-certs, provision, upgrade ----------------------------------------------------------------


def test_regenerate_certs_prompts_like_docker_machine(world, monkeypatch):
    _states(monkeypatch)
    result = invoke("regenerate-certs", "dev", input="n\n")
    assert result.exit_code == 0
    assert result.stdout == "Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): "
    assert world.streams == [] and "tls_rotation" not in world.machines_config("local")[0]

    result = invoke("regenerate-certs", "dev", input="yes\n")
    assert result.stdout.endswith("(y/n): Regenerating TLS certificates\n")
    token = world.machines_config("local")[0]["tls_rotation"]
    assert isinstance(token, str) and token.endswith("Z")
    assert "--target" in world.streams[0]

    assert invoke("regenerate-certs", "-f", "dev").stdout == "Regenerating TLS certificates\n"
    assert world.machines_config("local")[0]["tls_rotation"] != token


def test_regenerate_client_certs_rotates_the_ca_for_the_whole_stack(world, monkeypatch):
    _states(monkeypatch)
    monkeypatch.setattr(provision, "refresh_local_material", lambda stack_name: None)
    result = invoke("regenerate-certs", "-f", "--client-certs", "dev")
    assert result.stdout == "Regenerating TLS certificates\nRegenerating local certificates\n"
    assert world.by_name["local"].config[f"{workspace.PROJECT}:ca_rotation"]
    assert "--target" not in world.streams[0]  # a new CA means new certificates for every machine


def test_regenerate_certs_needs_the_machines_running(world, monkeypatch):
    _states(monkeypatch, web="Stopped")
    assert error_line(invoke("regenerate-certs", "-f", "web")) == 'Error: Host "web" is not running'
    assert error_line(invoke("regenerate-certs", "-f", "--client-certs", "dev")) == 'Error: Host "web" is not running'


def test_provision_replaces_the_steps_except_those_that_undo(world, monkeypatch, sshd):
    _states(monkeypatch)
    assert invoke("provision", "dev").stdout == 'Provisioning "dev"...\nMachine "dev" was provisioned.\n'
    up = world.streams[0]
    replaced = [up[i + 1].rsplit("::", 1)[-1] for i, a in enumerate(up) if a == "--replace"]
    assert replaced == ["dev-wait-for-ssh", "dev-install-docker", "dev-tls", "dev-daemon-config", "dev-docker-check"]
    result = invoke("provision", "far")
    assert "far-daemon-config: not re-run" in result.stderr
    up = world.streams[1]
    replaced = [up[i + 1].rsplit("::", 1)[-1] for i, a in enumerate(up) if a == "--replace"]
    assert replaced == ["far-wait-for-ssh", "far-install-docker", "far-tls", "far-docker-check"]


def test_upgrade_runs_the_package_upgrade_over_ssh(world, monkeypatch):
    _states(monkeypatch)
    scripts = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    monkeypatch.setattr(sshclient, "ssh_run", lambda m, script, timeout=0: scripts.append(script) or Done())
    result = invoke("upgrade", "dev")
    assert result.exit_code == 0, result.stderr
    assert "--only-upgrade" in scripts[0] and "systemctl restart docker" in scripts[0]
    assert result.stdout.splitlines()[-1] == 'Docker on "dev" is now 24.0.7'


# --- create, rm ------------------------------------------------------------------------------------------


def test_create_adds_the_machine_and_runs_a_targeted_up(world):
    result = invoke(
        "create", "box", "-d", "qemu", "--qemu-memory", "4096", "--qemu-accel=tcg", "--engine-label", "a=b",
        "--engine-install", "packages", "--tls-san", "box.test",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert world.machines_config("local")[-1] == {
        "name": "box",
        "driver": "qemu",
        "options": {"memory": 4096, "accel": "tcg"},
        "engine": {"install": "packages", "labels": ["a=b"]},
        "tls_san": ["box.test"],
    }
    up = world.streams[0]
    assert up[up.index("--target") + 1].endswith("DockerMachine::box") and "--target-dependents" in up
    assert result.stdout.splitlines() == [
        "Creating machine...",
        "Docker is up and running!",
        "To see how to connect your Docker Client to the Docker Engine running on this virtual machine, "
        "run: scripts/machine env box",
    ]


def test_create_refuses_bad_input_before_changing_anything(world):
    assert error_line(invoke("create", "bad_name")) == (
        "Error creating machine: Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -"
    )
    assert error_line(invoke("create", "dev")) == 'Error: Docker machine "dev" already exists'
    assert "flag provided but not defined: --qemu-colour" in error_line(invoke("create", "x", "--qemu-colour", "red"))
    assert "unknown driver 'nope'" in error_line(invoke("create", "x", "-d", "nope"))
    result = invoke("create", "x", "--qemu-memory", "12")
    assert result.exit_code == 1 and "memory" in result.stderr
    assert world.streams == [] and len(world.machines_config("local")) == 2


def test_create_in_a_new_stack_runs_a_full_up(world):
    assert invoke("create", "first", "--stack", "fresh").exit_code == 0
    assert world.machines_config("fresh") == [{"name": "first", "driver": "qemu"}]
    assert "--target" not in world.streams[0]


def test_create_failure_keeps_the_half_made_machine_like_docker_machine(world):
    world.fail_stream = "up"
    result = invoke("create", "box")
    assert result.exit_code == 1 and "Error creating machine: pulumi up failed" in result.stderr
    assert "scripts/machine rm -f box" in result.stderr
    assert world.machines_config("local")[-1]["name"] == "box"


def test_rm_prompts_and_removes_one_machine(world):
    result = invoke("rm", "web", input="n\n")
    assert result.stdout == (
        "About to remove web\nWARNING: This action will delete both local reference and remote instance.\n"
        "Are you sure? (y/n): "
    )
    assert world.streams == []
    result = invoke("rm", "-y", "web")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("Successfully removed web\n")
    assert [m["name"] for m in world.machines_config("local")] == ["dev"]
    up = world.streams[0]
    assert up[0] == "up" and up[up.index("--target") + 1].endswith("DockerMachine::web")


def test_rm_of_the_last_machine_destroys_the_stack(world):
    assert invoke("rm", "-y", "far").exit_code == 0
    assert world.streams[0][0] == "destroy"
    assert KEY not in world.by_name["cloud"].config


def test_rm_failure_restores_the_config_unless_forced(world, tmp_path, monkeypatch):
    config_file = tmp_path / "Pulumi.local.yaml"
    config_file.write_text("config: {}\n# as it was\n")
    monkeypatch.setattr(workspace, "config_file", lambda stack: str(config_file))
    world.fail_stream = "up"
    result = invoke("rm", "-y", "web")
    assert result.exit_code == 1 and 'Error removing host "web": pulumi up failed' in result.stderr
    assert config_file.read_text() == "config: {}\n# as it was\n"

    config_file.write_text("changed\n")
    result = invoke("rm", "-f", "web")
    assert result.exit_code == 0 and "Successfully removed web" in result.stdout
    assert config_file.read_text() == "changed\n"
    assert not any(r["urn"].endswith("::web") for r in world.by_name["local"].resources)  # forgotten


def test_rm_needs_a_name(world):
    assert error_line(invoke("rm")) == "Error: Expected to get one or more machine names as arguments"
    result = invoke("rm", "-y", "nope")
    assert result.exit_code == 1 and 'Error removing host "nope": Host does not exist: "nope"' in result.stderr


# --- context ----------------------------------------------------------------------------------------------


def test_context_creates_then_updates(world, monkeypatch, tmp_path, docker):
    from tests.unit.test_cli_dockercontext import fake_docker

    log = fake_docker(monkeypatch, tmp_path)
    result = invoke("context", "dev")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "dev\n"
    assert invoke("context", "dev").exit_code == 0
    calls = [line.split()[:3] for line in log.read_text().splitlines() if "inspect" not in line]
    assert calls == [["context", "create", "dev"], ["context", "update", "dev"]]
    assert f"host=tcp://127.0.0.1:{docker.port}" in log.read_text()
    assert invoke("context", "dev", "--rm").exit_code == 0


# --- the pulumi plumbing ---------------------------------------------------------------------------------


def test_a_failed_operation_reports_the_engines_error_events(monkeypatch):
    """The errors come from the engine's diagnostic events (the Automation API's on_event), not from its text."""
    from pulumi import automation as auto
    from pulumi.automation._cmd import CommandResult
    from pulumi.automation.events import DiagnosticEvent, EngineEvent

    def event(message: str, severity: str) -> EngineEvent:
        return EngineEvent(sequence=1, timestamp=0, diagnostic_event=DiagnosticEvent(message, "", severity))

    def failing_up(stack, on_output, on_event):
        on_output("Updating (local):")
        for message, severity in [("machine dev: vm: qemu failed to start\n", "error"), ("note", "info"),
                                  ("update failed", "error")]:  # fmt: skip
            on_event(event(message, severity))
        raise auto.errors.CommandError(CommandResult("", "error: update failed", 255))

    ws = workspace.Workspace()
    monkeypatch.setattr(ws, "_stack", lambda name: name)
    monkeypatch.setattr(ws, "locks", lambda stack: [])
    with pytest.raises(MachineError) as info:
        ws._operation("local", "up", "Starting dev", failing_up)
    assert str(info.value) == "pulumi up failed:\nmachine dev: vm: qemu failed to start"


def test_machine_resources_walks_the_tree():
    resources = machine_resources("s", "dev") + machine_resources("s", "dev2")
    found = machines.machine_resources("s", "dev", resources)
    assert found.component.endswith("::dev") and len(found.descendants) == 8
    assert all(r["urn"].rsplit("::", 1)[-1].startswith("dev-") for r in found.descendants)
    assert not any("dev2" in u for u in found.urns)
    new = machines.machine_resources("s", "box", resources)
    assert new.urns == [f"urn:pulumi:s::{workspace.PROJECT}::dockermachine:index:DockerMachine::box"]


# --- certificates due for renewal, and up's consent to losing a machine ------------------------------------------


def test_ls_shows_a_server_certificate_that_expires_within_30_days(world, docker, monkeypatch):
    now = datetime.datetime(2027, 3, 1, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(tls, "now", lambda: now)
    dev = world.by_name["local"].outputs["machines"]["dev"]
    dev["serverCertExpires"] = (now + datetime.timedelta(days=10, hours=1)).isoformat()
    rows = {line.split()[0]: line for line in invoke("ls").stdout.splitlines()[1:]}
    assert rows["dev"].endswith("the server certificate expires in 10 days: run up to renew it")
    dev["serverCertExpires"] = (now + datetime.timedelta(days=200)).isoformat()
    assert invoke("ls").stdout.splitlines()[1].split()[-1] == "v24.0.7"  # nothing due: no error


def _replacing_preview(machine: str) -> dict:
    vm = f"urn:pulumi:local::docker-machine::dockermachine:index:DockerMachine${QEMU_VM.token}::{machine}-vm"
    state = {"type": QEMU_VM.token, "parent": f"urn:pulumi:local::docker-machine::{COMPONENT}::{machine}",
             "inputs": {"disk": 30000}}  # fmt: skip
    return {"steps": [{"op": "replace", "urn": vm, "newState": state, "oldState": {**state, "inputs": {"disk": 20000}},
                       "replaceReasons": ["disk"]}], "changeSummary": {"replace": 1}}  # fmt: skip


def test_up_that_would_replace_a_machine_is_refused_without_a_terminal_unless_yes(world):
    world.previews["local"] = _replacing_preview("dev")
    result = invoke("--stack", "local", "up")
    assert result.exit_code == 1
    assert "up would replace or delete dev, losing what is on them; nothing was changed" in result.stderr
    assert "dev: VM replaced (disk changed): containers and volumes on it are lost" in result.stderr
    assert "--yes (make up YES=1)" in result.stderr
    assert [s[0] for s in world.streams] == ["preview"]  # nothing ran but the preview
    assert invoke("--stack", "local", "up", "--yes").exit_code == 0
    assert [s[0] for s in world.streams] == ["preview", "preview", "up"]


def test_up_that_loses_nothing_needs_no_consent(world):
    assert invoke("--stack", "local", "up").exit_code == 0
    assert [s[0] for s in world.streams] == ["preview", "up"]


def test_make_ups_stack_is_refused_in_one_line_when_its_file_belongs_to_another_backend(world, monkeypatch,
                                                                                         tmp_path):  # fmt: skip
    stack_file = tmp_path / "Pulumi.mine.yaml"
    stack_file.write_text("encryptionsalt: v1:abc:def\nconfig: {}\n")
    monkeypatch.setattr(workspace, "config_file", lambda stack: str(stack_file))
    monkeypatch.setenv("PULUMI_BACKEND_URL", "postgres://team:s3cret@db.example.test:5432/pulumi")
    line = error_line(invoke("--stack", "mine", "up", "--create"))
    assert 'belongs to a stack "mine" of another backend' in line and "postgres://team:****@db.example.test" in line
    assert "backend unset" in line and "backend migrate" in line and "make up STACK=NAME" in line
    assert "s3cret" not in line and "mine" not in world.by_name and world.streams == []
    stack_file.write_text("config: {}\n")  # a new stack file (no secrets yet): the stack is made and selected
    invoke("--stack", "mine", "up", "--create")
    assert "mine" in world.by_name and world.selected == "mine"
