"""Every SSH dial authenticates the host by a pinned key (issue: trust): against a real SSH server (paramiko's server
side), the right key lets the step run; another key ends the dial before anything is sent, naming both fingerprints."""

from __future__ import annotations

import ast
import io
import os
import time
from dataclasses import dataclass

import paramiko
import pytest

from components.errors import StepError
from components.steps import remote, tls
from tests.fakes.sshd import FakeSshd
from tests.unit.conftest import ROOT


def line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@dataclass
class Key:
    paramiko: paramiko.PKey
    text: str


def new_key() -> Key:
    text, _ = tls.new_ssh_key()
    return Key(paramiko.Ed25519Key.from_private_key(io.StringIO(text)), text)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {name: new_key() for name in ("host", "impostor", "client")}


@pytest.fixture
def sshd(keys):
    server = FakeSshd(keys["host"].paramiko, keys["client"].paramiko)
    yield server
    server.close()


def connection(sshd: FakeSshd, keys, pinned: str | None) -> dict:
    return {"host": "127.0.0.1", "port": sshd.port, "user": "docker", "private_key": keys["client"].text,
            "host_key": pinned, "dial_error_limit": 3, "per_dial_timeout": 5}  # fmt: skip


def test_the_pinned_host_gets_the_script(sshd, keys):
    stdout, _ = remote.run(connection(sshd, keys, line(keys["host"].paramiko)), "sh -s", "secret material")
    assert stdout == str(len("secret material"))
    assert sshd.commands == ["sh -s"] and sshd.received == [b"secret material"]


def test_another_host_key_ends_the_dial_before_anything_is_sent(sshd, keys):
    started = time.monotonic()
    with pytest.raises(remote.HostKeyMismatch) as refused:
        remote.run(connection(sshd, keys, line(keys["impostor"].paramiko)), "sh -s", "the server's private key")
    message = str(refused.value)
    assert remote.fingerprint(keys["host"].paramiko) in message
    assert remote.fingerprint(keys["impostor"].paramiko) in message
    assert "nothing was sent" in message
    assert sshd.commands == [] and sshd.received == []
    assert sshd.connections == 1 and time.monotonic() - started < 5  # refused at once, not dialled again


def test_no_pinned_key_no_dial(sshd, keys):
    with pytest.raises(remote.RemoteError, match="no SSH host key to pin"):
        remote.run(connection(sshd, keys, None), "sh -s", "x")
    assert sshd.connections == 0


def test_a_step_on_a_host_with_another_key_fails_in_one_line(sshd, keys):
    props = {"connection": connection(sshd, keys, line(keys["impostor"].paramiko)), "create": "sh -s", "stdin": "CERT",
             "machine": "gen", "step": "tls"}  # fmt: skip
    with pytest.raises(StepError) as failed:
        remote._RemoteCommandProvider().create(props)
    text = str(failed.value)
    assert text.startswith("machine gen: tls: ssh 127.0.0.1:") and "\n" not in text
    assert remote.fingerprint(keys["host"].paramiko) in text and remote.fingerprint(keys["impostor"].paramiko) in text
    assert sshd.received == []


def test_first_use_reads_the_key_without_logging_in(sshd, keys):
    assert remote.scan_host_key("127.0.0.1", sshd.port, attempts=3) == line(keys["host"].paramiko)
    assert sshd.commands == []


def _ssh_client_sites() -> list[str]:
    """Every function of the product code that opens an SSH client or transport itself (the innermost one)."""
    sites = []

    def visit(node: ast.AST, function: str, path: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                if child.func.attr in ("SSHClient", "Transport"):
                    sites.append(f"{os.path.relpath(path, ROOT)}:{function}")
            visit(child, inner, path)

    for directory in ("components", os.path.join("scripts", "machinecli")):
        for base, _, files in os.walk(os.path.join(ROOT, directory)):
            for file in (f for f in files if f.endswith(".py")):
                path = os.path.join(base, file)
                visit(ast.parse(open(path).read()), "", path)
    return sorted(sites)


def test_no_code_path_dials_without_the_pinned_key():
    """paramiko is opened in two places only: the pinned dial and the first-use read of a key nobody gave; no policy
    accepts an unknown key; the CLI's ssh/scp/sshfs/rsync check the key strictly."""
    assert _ssh_client_sites() == ["components/steps/remote.py:dial", "components/steps/remote.py:read"]
    source = open(os.path.join(ROOT, "components", "steps", "remote.py")).read()
    assert "RejectPolicy()" in source and "AutoAddPolicy" not in source and "WarningPolicy" not in source
    from scripts.machinecli import sshclient

    assert "StrictHostKeyChecking=yes" in sshclient.SSH_OPTIONS
    assert not [o for o in sshclient.SSH_OPTIONS if o in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null")]
