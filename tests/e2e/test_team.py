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

from tests import docblocks
from tests.e2e.conftest import ROOT, free_port, have_tools, qemu_processes_for, record_figure

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

    def run(self, *args: str, check: bool = True, timeout: float = 1800,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - subprocess's name
        result = subprocess.run(list(args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                timeout=timeout, input=input)  # fmt: skip
        if check:
            assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def machine(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return self.run("scripts/machine", *args, check=check, input=input)

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
    # What A had before: a docker context of the name `make up` would use, and docker-machine's own machine `default`.
    subprocess.run(["docker", "context", "create", "default-machine", "--description", "mine", "--docker",
                    "host=tcp://127.0.0.1:1"], env=a.env, check=True, capture_output=True)  # fmt: skip
    theirs = pathlib.Path(a.env["HOME"]) / ".docker" / "machine" / "machines" / "default"
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text('{"ConfigVersion": 3, "Name": "default"}')
    (theirs / "id_rsa").write_text("docker-machine's key")
    busybox = base / "busybox"
    busybox.mkdir()
    shutil.copy("/bin/busybox", busybox / "busybox")
    (busybox / "Dockerfile").write_text(BUSYBOX)
    yield {"a": a, "b": b, "team": a_team, "key": key, "clone": clone, "busybox": str(busybox), "pg": postgres,
           "theirs": theirs}  # fmt: skip
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


def context_description(user: User, name: str) -> str:
    inspected = subprocess.run(["docker", "context", "inspect", name], env=user.env, capture_output=True, text=True)
    return json.loads(inspected.stdout)[0]["Metadata"]["Description"] if inspected.returncode == 0 else ""


def test_make_up_stop_start_leave_a_fresh_clone_clean(world):
    a, theirs = world["a"], world["theirs"]
    made = docblocks.run("readme-setup", a.cwd, a.env, lines=1)  # the README's `make up`
    assert made.returncode == 0, made.stderr[-3000:]
    # The context A made by hand and docker-machine's own machine directory are left as they were, and up says so.
    assert "docker context default-machine exists and is one this project did not make: it is left as it was" in (
        made.stdout + made.stderr)  # fmt: skip
    assert context_description(a, "default-machine") == "mine"
    assert sorted(os.listdir(theirs)) == ["config.json", "id_rsa"]
    # The machine's client certificates went beside it, and `env` points there.
    assert f'DOCKER_CERT_PATH="{theirs}.local"' in a.machine("env", "default").stdout
    # The README's next command, as printed by make up.
    assert "eval \"$(scripts/machine env default)\"" in made.stdout
    shown = docblocks.run("readme-env", a.cwd, a.env)
    assert shown.returncode == 0 and "Server:" in shown.stdout, shown.stderr
    a.machine("stop", "default")
    a.machine("start", "default")
    assert a.run("git", "status", "--porcelain").stdout == ""


def test_a_switch_to_the_team_backend_leaves_the_local_machine_and_its_volume_alone(world, e2e_env):
    """docs/team.md's `backend set` with a local stack that runs a VM: `make up` names the other backend's stack in one
    line; with the stack file moved aside, the team's new stack "local" is refused the VM's directory in one line; the
    first VM keeps running with its volume, each backend lists its own, and destroying the team's stack leaves it
    answering over TLS."""
    a, clone = world["a"], world["clone"]
    a.docker("local", "default", "build", "-q", "-t", "e2e/busybox", world["busybox"])
    a.docker("local", "default", "volume", "create", "precious")
    a.docker("local", "default", "run", "--rm", "-v", "precious:/d", "e2e/busybox", "sh", "-c", "echo kept > /d/f")
    pid = vm_pid(e2e_env, "local", "default")
    team = {"TEAM_URL": world["pg"].url, "TEAM_KEY": str(world["key"])}
    switched = docblocks.run("team-backend-set", a.cwd, {**a.env, **team})  # docs/team.md, as written
    assert switched.returncode == 0, switched.stderr
    assert 'Your stacks "local" stay on file://' in switched.stderr  # what happens to the stack that runs the VM
    assert world["pg"].password not in switched.stdout + switched.stderr
    made = a.run("make", "up", check=False)
    errors = [line for line in made.stderr.splitlines() if line.startswith("Error")]
    assert made.returncode != 0 and len(errors) == 1, made.stderr[-3000:]
    assert 'stacks/Pulumi.local.yaml belongs to a stack "local" of another backend' in errors[0]
    assert "backend unset" in errors[0] and "backend migrate" in errors[0] and "STACK=NAME" in errors[0]
    stack_file = clone / "stacks" / "Pulumi.local.yaml"
    aside = clone / "Pulumi.local.yaml.aside"
    stack_file.rename(aside)
    try:
        made = a.run("make", "up", check=False, timeout=1200)
        out = made.stdout + made.stderr
        refusals = [line for line in out.splitlines() if "instance directory" in line and "belongs to" in line]
        assert made.returncode != 0 and refusals, out[-3000:]
        assert 'belongs to stack "local" on file://' in refusals[0] and "it is left as it is" in refusals[0]
        record_figure("backend switch: the refusal", refusals[0].strip())
        assert vm_pid(e2e_env, "local", "default") == pid
        # Each backend lists its own: the team's "local" has no machine; A's own still runs hers.
        assert "default" not in a.machine("ls", "-q").stdout.split()
        a.run("scripts/pulumi", "destroy", "--yes", "--stack", "local", "--non-interactive")
        a.run("scripts/pulumi", "stack", "rm", "--yes", "--stack", "local", "--non-interactive")
    finally:
        aside.rename(stack_file)
        a.machine("backend", "unset")
    assert a.machine("ls", "--format", "{{.Name}} {{.State}}").stdout == "default Running\n"
    out = a.docker("local", "default", "run", "--rm", "-v", "precious:/d", "e2e/busybox", "cat", "/d/f").stdout
    assert out.strip() == "kept" and vm_pid(e2e_env, "local", "default") == pid


def test_a_local_stack_moves_to_the_team_backend_with_its_machine(world, e2e_env):
    a, b = world["a"], world["b"]
    pid = vm_pid(e2e_env, "local", "default")
    team = {"TEAM_URL": world["pg"].url, "TEAM_KEY": str(world["key"])}
    migrated = docblocks.run("team-migrate", a.cwd, {**a.env, **team})  # docs/team.md, as written
    assert migrated.returncode == 0, migrated.stderr
    assert vm_pid(e2e_env, "local", "default") == pid  # the VM was not recreated
    a.env.update(world["team"])
    assert a.machine("ls", "-q").stdout.split() == ["default"]
    # The moved stack is the same to the engine: nothing to do (its local artefacts were handed over too), and the
    # reviewer's commands of docs/preview.md and docs/policy.md say so.
    for block in ("preview-formats", "policy-preview", "policy-levels"):
        shown = docblocks.run(block, a.cwd, a.env, timeout=900)
        assert shown.returncode == 0, (block, shown.stdout[-2000:], shown.stderr[-2000:])
    assert "default  unchanged  no change" in docblocks.run("preview-formats", a.cwd, a.env).stdout
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
    """examples/consumer/README.md as written, from the repository's folder: a container on A's machine (the stack
    moved to the team's backend), which B sees; destroy removes it; its state holds no private key."""
    a, b = world["a"], world["b"]
    consumer = ["scripts/pulumi", "--cwd", "examples/consumer"]
    try:
        ran = docblocks.run("consumer-up", a.cwd, {**a.env, "IMAGE": "e2e/busybox"})
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        names = b.docker("local", "default", "ps", "--format", "{{.Names}}").stdout.split()
        assert "consumer-web" in names
        exported = a.run(*consumer, "stack", "export", "--stack", "dev", "--non-interactive").stdout
        assert "PRIVATE KEY" not in exported
        a.run(*consumer, "destroy", "--yes", "--stack", "dev", "--non-interactive")
        names = b.docker("local", "default", "ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert "consumer-web" not in names
    finally:
        a.run(*consumer, "destroy", "--yes", "--stack", "dev", "--non-interactive", check=False)
        a.run(*consumer, "stack", "rm", "--yes", "--force", "--stack", "dev", "--non-interactive", check=False)


def test_rm_leaves_docker_machines_own_machine_and_the_users_context(world):
    a, theirs = world["a"], world["theirs"]
    a.env.update(world["team"])  # the stack moved there with its machine
    a.machine("--stack", "local", "rm", "-y", "default")
    assert sorted(os.listdir(theirs)) == ["config.json", "id_rsa"]
    assert (theirs / "config.json").read_text() == '{"ConfigVersion": 3, "Name": "default"}'
    assert context_description(a, "default-machine") == "mine"
    assert not (theirs.parent / "default.local").exists()  # ours went with the machine
    # The README's destroy, on the (now empty) stack.
    down = docblocks.run("readme-down", a.cwd, a.env)
    assert down.returncode == 0, down.stderr[-3000:]
