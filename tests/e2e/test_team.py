"""Issue 12 end to end: machines a team shares through a PostgreSQL backend, two users with separate HOMEs.

A throwaway PostgreSQL (Debian's package, initdb into a temporary directory, a free 127.0.0.1 port) holds the
state. User A works in a fresh clone of the repository; user B shares nothing with A but the backend URL and the
team's secrets key (and, as on one host, where the VMs' files are).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ROOT, free_port, have_tools, qemu_processes_for

HAVE_POSTGRES = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_tools() or not HAVE_POSTGRES, reason="needs qemu, docker, postgresql"),
]
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
BUSYBOX = 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n'


class Postgres:
    def __init__(self, base):
        self.bin = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
        self.data, self.port, self.password = base / "data", free_port(), secrets.token_hex(12)
        if AS_POSTGRES:
            shutil.chown(base, "postgres")
        pwfile = base / "pw"
        pwfile.write_text(self.password)
        if AS_POSTGRES:
            shutil.chown(pwfile, "postgres")
        self.run("initdb", "-D", str(self.data), "-U", "pulumi", "--auth=scram-sha-256", f"--pwfile={pwfile}")
        self.start()
        self.psql("postgres", "create database pulumi")
        self.url = f"postgres://pulumi:{self.password}@127.0.0.1:{self.port}/pulumi?sslmode=disable"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*AS_POSTGRES, f"{self.bin}/{tool}", *args], capture_output=True, text=True,
                                timeout=120, cwd="/")  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    def psql(self, database: str, sql: str) -> str:
        env = dict(os.environ, PGPASSWORD=self.password)
        command = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "pulumi", "-d", database, "-Atc", sql]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=True).stdout

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def postgres():
    # Not under pytest's temporary directory: that is root's alone, and the server runs as postgres.
    base = pathlib.Path(tempfile.mkdtemp(prefix="dmp-postgres-"))
    try:
        server = Postgres(base)
        yield server
        subprocess.run([*AS_POSTGRES, f"{server.bin}/pg_ctl", "-D", str(server.data), "-m", "immediate", "stop"],
                       capture_output=True, cwd="/")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


class User:
    """A person: an own HOME (docker's cert copies and contexts, Pulumi's workspace), the repo clone to work in."""

    def __init__(self, base, e2e_env: dict[str, str], cwd: str, **env: str):
        home = base / "home"
        home.mkdir()
        self.cwd = cwd
        self.env = dict(e2e_env, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), DMP_CACHE=cache_dir(), **env)
        self.env.pop("XDG_CACHE_HOME", None)

    def run(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                timeout=timeout)  # fmt: skip
        if check:
            assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def machine(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("scripts/machine", *args, check=check)

    def docker(self, stack: str, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, DOCKER_BUILDKIT="0")
        for line in self.machine("--stack", stack, "env", name).stdout.splitlines():
            if line.startswith("export "):
                key, value = line[len("export ") :].split("=", 1)
                env[key] = value.strip('"')
        result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result


def cache_dir() -> str:
    return os.environ.get("DMP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "docker-machine-pulumi"
    )


@pytest.fixture(scope="module")
def world(postgres, e2e_env, tmp_path_factory):
    """A fresh clone of the repository (its virtualenv borrowed), user A in it with an own backend, user B."""
    base = tmp_path_factory.mktemp("team")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    os.symlink(os.path.join(ROOT, ".venv"), clone / ".venv")
    key = base / "team.key"
    key.write_text(secrets.token_hex(24))
    key.chmod(0o600)
    team = {"PULUMI_BACKEND_URL": postgres.url, "PULUMI_CONFIG_PASSPHRASE_FILE": str(key)}
    personal = {k: v for k, v in e2e_env.items() if k not in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE_FILE")}
    (base / "a").mkdir()
    (base / "b").mkdir()
    a = User(base / "a", personal, str(clone))
    b = User(base / "b", personal, str(clone), **team)
    a_team = dict(team)
    busybox = base / "busybox"
    busybox.mkdir()
    shutil.copy("/bin/busybox", busybox / "busybox")
    (busybox / "Dockerfile").write_text(BUSYBOX)
    yield {"a": a, "b": b, "team": a_team, "key": key, "clone": clone, "busybox": str(busybox), "pg": postgres}
    for stack in ("team", "local"):
        a.run("scripts/pulumi", "destroy", "--yes", "--stack", stack, "--non-interactive", check=False)
    a.env.update(a_team)
    for stack in ("team", "local"):
        a.run("scripts/pulumi", "destroy", "--yes", "--stack", stack, "--non-interactive", check=False)
    for stack in ("local", "team"):
        assert qemu_processes_for(os.path.join(e2e_env["DMP_STATE"], f"docker-machine-{stack}")) == []


def vm_pid(e2e_env, stack: str, name: str) -> int:
    with open(os.path.join(e2e_env["DMP_STATE"], f"docker-machine-{stack}", "qemu", name, "qemu.pid")) as f:
        return int(f.read())


def test_make_up_stop_start_leave_a_fresh_clone_clean(world):
    a = world["a"]
    a.run("make", "up", timeout=2400)
    a.machine("stop", "default")
    a.machine("start", "default")
    assert a.run("git", "status", "--porcelain").stdout == ""


def test_a_local_stack_moves_to_the_team_backend_with_its_machine(world, e2e_env):
    a, b = world["a"], world["b"]
    pid = vm_pid(e2e_env, "local", "default")
    a.machine("--stack", "local", "backend", "migrate", world["pg"].url, "--key-file", str(world["key"]))
    assert vm_pid(e2e_env, "local", "default") == pid  # the VM was not recreated
    a.env.update(world["team"])
    assert a.machine("ls", "-q").stdout.split() == ["default"]
    # B, who never had this stack: env, then a container over TLS.
    b.docker("local", "default", "build", "-q", "-t", "e2e/busybox", world["busybox"])
    out = b.docker("local", "default", "run", "--rm", "e2e/busybox", "echo", "migrated").stdout
    assert out.strip() == "migrated"
    assert vm_pid(e2e_env, "local", "default") == pid


def test_a_machine_user_a_creates_is_usable_by_user_b(world):
    a, b = world["a"], world["b"]
    a.machine("--stack", "team", "create", "box", "--engine-install", "packages")
    ls = b.machine("ls", "--format", "{{.Name}} {{.State}} {{.DockerVersion}}").stdout.splitlines()
    assert any(line.startswith("box Running v") for line in ls), ls
    b.docker("team", "box", "build", "-q", "-t", "e2e/busybox", world["busybox"])
    assert b.docker("team", "box", "run", "--rm", "e2e/busybox", "echo", "hi from b").stdout.strip() == "hi from b"
    cert_dir = os.path.join(b.env["HOME"], ".docker", "machine", "machines", "box")
    assert oct(os.stat(os.path.join(cert_dir, "key.pem")).st_mode & 0o777) == "0o600"
    # Someone without the team's key gets one line.
    stranger = dict(b.env, PULUMI_CONFIG_PASSPHRASE="not-the-team-key")
    stranger.pop("PULUMI_CONFIG_PASSPHRASE_FILE")
    result = subprocess.run(["scripts/machine", "--stack", "team", "env", "box"], cwd=b.cwd, env=stranger,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if not line.startswith("toolchain:")]
    assert result.returncode == 1 and len(lines) == 1 and "passphrase" in lines[0], result.stderr


def _relabel(world, label: str) -> None:
    path = world["clone"] / "stacks" / "Pulumi.team.yaml"
    a = world["a"]
    a.run("scripts/pulumi", "config", "set", "--path", "machines[0].engine.labels[0]", label, "--stack", "team",
          "--non-interactive")  # fmt: skip
    assert label in path.read_text()


def _wait_for_lock(user: User, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if user.machine("--stack", "team", "unlock", "--check", check=False).returncode == 1:
            return
        time.sleep(0.5)
    raise AssertionError("the stack was never locked")


def _resources(user: User) -> int:
    exported = user.run("scripts/pulumi", "stack", "export", "--stack", "team", "--non-interactive").stdout
    return len(json.loads(exported)["deployment"]["resources"])


@contextlib.contextmanager
def up_in_background(user: User) -> Iterator[subprocess.Popen]:
    """`scripts/machine up` on stack team, running while the test acts; it ends before the next test starts."""
    process = subprocess.Popen(["scripts/machine", "--stack", "team", "up"], cwd=user.cwd, env=user.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.communicate(timeout=1800)


def test_two_ups_at_once_one_proceeds_the_other_names_who_holds_the_stack(world):
    a, b = world["a"], world["b"]
    before = _resources(a)
    _relabel(world, "together=1")
    with up_in_background(a) as first:
        _wait_for_lock(b)
        second = b.machine("--stack", "team", "up", check=False)
        out, err = first.communicate(timeout=1800)
    assert first.returncode == 0, err[-3000:]
    lines = [line for line in second.stderr.splitlines() if line.startswith("Error")]
    assert second.returncode == 1 and len(lines) == 1, second.stderr[-3000:]
    assert 'stack "team" is in use by another pulumi run' in lines[0] and "pid" in lines[0] and "since" in lines[0]
    assert _resources(a) == before


def test_the_backend_stopping_mid_up_is_named_and_the_next_up_converges(world, e2e_env):
    a, pg = world["a"], world["pg"]
    _relabel(world, "fault=backend")
    with up_in_background(a) as up:
        _wait_for_lock(world["b"])
        time.sleep(3)
        pg.stop()
        out, err = up.communicate(timeout=900)
    assert up.returncode == 1, err[-3000:]
    assert f"the state backend postgres://127.0.0.1:{pg.port}/pulumi does not answer" in err
    assert "Traceback" not in err
    pg.start()
    if a.machine("--stack", "team", "unlock", "--check", check=False).returncode == 1:
        a.machine("--stack", "team", "unlock")
    a.machine("--stack", "team", "up", "--refresh")
    instance = os.path.join(e2e_env["DMP_STATE"], "docker-machine-team", "qemu", "box")
    assert len(qemu_processes_for(instance)) == 1
    labels = a.docker("team", "box", "info", "--format", "{{json .Labels}}").stdout
    assert "fault=backend" in json.loads(labels)


def test_a_consumer_project_runs_a_container_through_the_stack_outputs(world):
    a, b = world["a"], world["b"]
    consumer = ["scripts/pulumi", "--cwd", "examples/consumer"]
    a.run(*consumer, "stack", "init", "c1", "--non-interactive")
    for key, value in (("machineStack", "organization/docker-machine/team"), ("machine", "box"),
                       ("name", "consumer-web")):  # fmt: skip
        a.run(*consumer, "config", "set", key, value, "--stack", "c1", "--non-interactive")
    try:
        a.run(*consumer, "up", "--yes", "--skip-preview", "--stack", "c1", "--non-interactive")
        names = b.docker("team", "box", "ps", "--format", "{{.Names}}").stdout.split()
        assert "consumer-web" in names
        exported = a.run(*consumer, "stack", "export", "--stack", "c1", "--non-interactive").stdout
        assert "PRIVATE KEY" not in exported
        a.run(*consumer, "destroy", "--yes", "--stack", "c1", "--non-interactive")
        names = b.docker("team", "box", "ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert "consumer-web" not in names
    finally:
        a.run(*consumer, "destroy", "--yes", "--stack", "c1", "--non-interactive", check=False)
        a.run(*consumer, "stack", "rm", "--yes", "--force", "--stack", "c1", "--non-interactive", check=False)
