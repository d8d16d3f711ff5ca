"""``ssh`` and ``scp`` command lines with the stack's SSH key (docker-machine's external SSH client)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from components.provisioning import AS_ROOT

from .errors import MachineError
from .machines import Machine

# docker-machine's baseSSHArgs (libmachine/ssh/client.go), plus IdentitiesOnly: only the stack's key.
SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "ConnectionAttempts=3",
    "-o", "ConnectTimeout=10",
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
    "-o", "LogLevel=quiet",
    "-o", "PasswordAuthentication=no",
    "-o", "ServerAliveInterval=60",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "IdentitiesOnly=yes",
]  # fmt: skip


@contextmanager
def key_files(machines: list[Machine]) -> Iterator[dict[str, str]]:
    """Each machine's private key in a 0600 file of a private directory, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="machine-ssh-")
    try:
        os.chmod(directory, 0o700)
        paths = {}
        for machine in machines:
            key = machine.ssh_key
            if not key:
                raise MachineError(f'the stack outputs have no SSH key for "{machine.name}" (sshPrivateKeys)')
            path = os.path.join(directory, f"{machine.stack.replace('/', '_')}-{machine.name}")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(key if key.endswith("\n") else key + "\n")
            paths[f"{machine.stack}/{machine.name}"] = path
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def ssh_argv(machine: Machine, key_path: str, command: list[str], tty: bool = False) -> list[str]:
    ssh = machine.ssh
    argv = ["ssh", *SSH_OPTIONS, "-i", key_path, "-p", str(ssh.port)]
    if tty:
        argv.append("-t")
    argv.append(f"{ssh.user}@{ssh.host or machine.ip}")
    return argv + command


@dataclass
class ScpPath:
    path: str
    machine: str | None = None
    user: str | None = None


def parse_scp_arg(arg: str) -> ScpPath:
    """``[[user@]machine:][path]``; no colon, or ``localhost:``, is a local path (docker-machine's rule)."""
    if ":" not in arg:
        return ScpPath(arg)
    host, _, path = arg.partition(":")
    if host == "localhost":
        return ScpPath(path)
    user = None
    if "@" in host:
        user, _, host = host.partition("@")
    return ScpPath(path, host, user)


def scp_argv(
    source: ScpPath, target: ScpPath, machine: Machine, key_path: str, recursive: bool, quiet: bool
) -> list[str]:
    ssh = machine.ssh
    argv = ["scp", *SSH_OPTIONS, "-i", key_path, "-P", str(ssh.port)]
    if recursive:
        argv.append("-r")
    if quiet:
        argv.append("-q")

    def render(p: ScpPath) -> str:
        if p.machine is None:
            return p.path
        return f"{p.user or ssh.user}@{_host(ssh.host or machine.ip)}:{p.path}"

    return argv + [render(source), render(target)]


def run_attached(argv: list[str], runner: Callable[..., subprocess.CompletedProcess] | None = None) -> int:
    """Run a client attached to this terminal; Ctrl-C goes to it (not to us); return its exit status.

    A Python handler, not SIG_IGN: an ignored signal stays ignored across exec (and ssh keeps it so).
    """
    runner = runner or subprocess.run
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        try:
            return runner(argv).returncode
        except FileNotFoundError:
            raise MachineError(f"{argv[0]} is not installed (openssh-client)") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def ssh_run(machine: Machine, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run a script as root on the machine (on stdin, like provisioning); its output is captured."""
    with key_files([machine]) as keys:
        argv = ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], [AS_ROOT])
        return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
