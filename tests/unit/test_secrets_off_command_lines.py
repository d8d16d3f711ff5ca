"""Secrets stay off command lines and out of children's environments (issue: trust): every subprocess the CLI starts is
spied on while the environment and the stack hold secrets, and none of them appears in an argv or a child's
environment; a backend password is masked in every form it takes."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from components.drivers._local import process
from scripts.machinecli import team, ui, workspace
from tests.unit.test_cli_commands import environment, error_line, invoke, sshd, world  # noqa: F401 - the CLI's fixtures (environment: HOME in tmp)

PASSPHRASE, DB_PASSWORD, TOKEN = "p4ss-phrase-Z", "db-s3cret-Q", "cloud-token-W"


class Spy:
    """subprocess.Popen that starts nothing: every child's argv, environment and stdin, recorded."""

    def __init__(self):
        self.children: list[dict] = []

    def popen(self, args, **kwargs):
        spy = self

        class Child:
            returncode, pid, stdout, stderr, stdin = 0, 4242, None, None, None

            def __init__(self):
                self.args = args
                spy.children.append({"argv": [str(a) for a in args], "env": kwargs.get("env") or dict(os.environ)})

            def communicate(self, input=None, timeout=None):  # noqa: A002 - subprocess's name
                spy.children[-1]["stdin"] = input
                return ("", "")

            def wait(self, timeout=None):
                return 0

            def poll(self):
                return 0

            def kill(self):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Child()

    def secrets_seen(self, secrets: list[str]) -> list[str]:
        found = []
        for child in self.children:
            for where, values in (("argv", child["argv"]), ("env", [f"{k}={v}" for k, v in child["env"].items()])):
                found += [f"{child['argv'][0]} {where}: {s}" for s in secrets for v in values if s in v]
        return found


@pytest.fixture
def secret_environment(monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PGPASSWORD", DB_PASSWORD)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN)
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"postgres://team:{DB_PASSWORD}@db.example.test:5432/pulumi")


@pytest.fixture
def spy(monkeypatch, secret_environment):
    found = Spy()
    monkeypatch.setattr(subprocess, "Popen", found.popen)
    return found


def test_no_secret_in_the_argv_or_environment_of_any_child_the_cli_starts(world, spy, sshd, monkeypatch):  # noqa: F811
    machine_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nMACHINE-KEY-MATERIAL-9\n-----END OPENSSH PRIVATE KEY-----\n"
    world.by_name["local"].outputs["sshPrivateKeys"]["dev"] = machine_key
    client_key = world.by_name["local"].outputs["clientKey"]
    monkeypatch.setattr("scripts.machinecli.probe.ssh_reachable", lambda machine, timeout=10: "open")
    for args in (("ssh", "dev", "uname"), ("scp", "dev:/etc/hostname", "out"), ("upgrade", "dev"),
                 ("context", "dev")):  # fmt: skip
        invoke(*args)
    kinds = {child["argv"][0] for child in spy.children}
    assert {"ssh", "scp", "docker"} <= kinds, kinds
    secrets = [PASSPHRASE, DB_PASSWORD, TOKEN, "MACHINE-KEY-MATERIAL-9", client_key.splitlines()[1]]
    assert spy.secrets_seen(secrets) == []
    # The machine's key reached ssh as a 0600 file named on the command line, never as its text.
    assert all("-i" in c["argv"] for c in spy.children if c["argv"][0] in ("ssh", "scp"))


def test_a_secret_config_value_moves_to_the_team_backend_on_stdin(spy):
    value = "config-secret-V"
    team._set_secret({"PULUMI_BACKEND_URL": "postgres://db:5432/pulumi"}, "local", "docker-machine:token", value)
    (child,) = spy.children
    assert child["argv"][:4] == ["pulumi", "config", "set", "docker-machine:token"] and "--secret" in child["argv"]
    assert child["stdin"] == value and not [a for a in child["argv"] if value in a]


def test_daemons_inherit_no_secret(spy, tmp_path):
    process.spawn_module("components.drivers.qemu.hub", [str(tmp_path)], pidfile=str(tmp_path / "pid"),
                         log=str(tmp_path / "log"))  # fmt: skip
    (child,) = spy.children
    assert spy.secrets_seen([PASSPHRASE, DB_PASSWORD, TOKEN]) == []
    assert "PULUMI_BACKEND_URL" not in child["env"] and child["env"]["PYTHONPATH"] == process.project_root()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://team:pw@db:5432/pulumi", "postgres://team:****@db:5432/pulumi"),
        ("postgres://team:p@ss:w@rd@db:5432/pulumi?sslmode=require", "postgres://team:****@db:5432/pulumi?sslmode=require"),
        ("postgres://team@db/pulumi?password=pw&sslmode=disable", "postgres://team@db/pulumi?password=****&sslmode=disable"),
        ("postgresql://db/pulumi?sslpassword=pw", "postgresql://db/pulumi?sslpassword=****"),
        ("file:///home/me/state", "file:///home/me/state"),
    ],
)  # fmt: skip
def test_backend_show_masks_every_form_of_password(url, shown, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", url)
    result = invoke("backend", "show")
    assert result.stdout == shown + "\n"


def test_backend_set_refuses_a_password_on_the_command_line_and_keeps_it_in_a_passfile(world, tmp_path,  # noqa: F811
                                                                                       monkeypatch):  # fmt: skip
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = tmp_path / "team.key"
    key.write_text("k")
    key.chmod(0o600)
    url = f"postgres://team:{DB_PASSWORD}@db.example.test:5432/pulumi?sslmode=disable"
    line = error_line(invoke("backend", "set", url, "--key-file", str(key)))
    assert "holds a password" in line and "stdin" in line and DB_PASSWORD not in line
    result = invoke("backend", "set", "-", "--key-file", str(key), input=url + "\n")
    assert result.exit_code == 0, result.stderr
    stored = tmp_path / "config" / "docker-machine-pulumi"
    assert (stored / "backend.url").read_text() == "postgres://team@db.example.test:5432/pulumi?sslmode=disable\n"
    assert (stored / "pgpass").read_text() == f"db.example.test:5432:pulumi:team:{DB_PASSWORD}\n"
    assert stat.S_IMODE((stored / "pgpass").stat().st_mode) == 0o600
    assert DB_PASSWORD not in result.stderr + result.stdout


def test_the_lock_rows_of_a_postgres_backend_are_read_in_process(monkeypatch):
    """No psql on a command line with the URL: the rows come through psycopg (and libpq's passfile)."""
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or (_ for _ in ()).throw(OSError))
    assert workspace._lock_records("postgres://team@127.0.0.1:1/pulumi?connect_timeout=1", "local") == []
    assert started == []
    assert ui  # the CLI module the fixtures drive
