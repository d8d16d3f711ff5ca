"""``ssh``, ``scp``, ``sshfs`` and ``rsync`` command lines with the stack's SSH key and the machine's pinned host key
(docker-machine's external SSH client, with the host authenticated: StrictHostKeyChecking=yes)."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from components import environment
from components.steps.provisioning import AS_ROOT

from .errors import MachineError
from .machines import Machine

# docker-machine's baseSSHArgs (libmachine/ssh/client.go) with the host checked against the key we pinned, plus
# IdentitiesOnly: only the stack's key.
SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "ConnectionAttempts=3",
    "-o", "ConnectTimeout=10",
    "-o", "ControlMaster=no",
    "-o", "ControlPath=none",
    "-o", "LogLevel=error",
    "-o", "PasswordAuthentication=no",
    "-o", "ServerAliveInterval=60",
    "-o", "StrictHostKeyChecking=yes",
    "-o", "IdentitiesOnly=yes",
]  # fmt: skip


@dataclass(frozen=True)
class Keys:
    """One machine's private key and known_hosts file (its pinned host key, under the machine's alias)."""

    identity: str
    known_hosts: str
    alias: str

    def options(self) -> list[str]:
        return ["-i", self.identity, "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"HostKeyAlias={self.alias}"]


@contextmanager
def key_files(machines: list[Machine]) -> Iterator[dict[str, Keys]]:
    """Each machine's private key (0600) and known_hosts in a private directory, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="machine-ssh-")
    try:
        os.chmod(directory, 0o700)
        found = {}
        for machine in machines:
            key, host_key = machine.ssh_key, machine.ssh.host_key
            if not key:
                raise MachineError(f'the stack outputs have no SSH key for "{machine.name}" (sshPrivateKeys)')
            if not host_key:
                raise MachineError(f'the stack outputs have no SSH host key for "{machine.name}": run `up` once with '
                                   "this version, which pins it")  # fmt: skip
            base = os.path.join(directory, f"{machine.stack.replace('/', '_')}-{machine.name}")
            alias = f"docker-machine.{machine.name}"
            with open(os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(key if key.endswith("\n") else key + "\n")
            with open(os.open(f"{base}.known_hosts", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(f"{alias} {host_key}\n")
            found[f"{machine.stack}/{machine.name}"] = Keys(base, f"{base}.known_hosts", alias)
        yield found
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def ssh_argv(machine: Machine, keys: Keys, command: list[str], tty: bool = False) -> list[str]:
    ssh = machine.ssh
    argv = ["ssh", *SSH_OPTIONS, *keys.options(), "-p", str(ssh.port)]
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


def scp_argv(source: ScpPath, target: ScpPath, machine: Machine, keys: Keys, recursive: bool, quiet: bool) -> list[str]:
    ssh = machine.ssh
    argv = ["scp", *SSH_OPTIONS, *keys.options(), "-P", str(ssh.port)]
    if recursive:
        argv.append("-r")
    if quiet:
        argv.append("-q")

    def render(p: ScpPath) -> str:
        if p.machine is None:
            return p.path
        return f"{p.user or ssh.user}@{_host(ssh.host or machine.ip)}:{p.path}"

    return argv + [render(source), render(target)]


def rsync_argv(source: ScpPath, target: ScpPath, machine: Machine, keys: Keys, recursive: bool,
               quiet: bool) -> list[str]:  # fmt: skip
    """``scp --delta``: rsync over the machine's SSH (docker-machine's ``rsync -e ssh``), only changed files sent."""
    ssh = machine.ssh
    transport = shlex.join(["ssh", *SSH_OPTIONS, *keys.options(), "-p", str(ssh.port)])
    argv = ["rsync", "-e", transport, "--times", "--perms", "--links"]
    if recursive:
        argv.append("--recursive")
    if not quiet:
        argv.append("--progress")

    def render(p: ScpPath) -> str:
        return p.path if p.machine is None else f"{p.user or ssh.user}@{_host(ssh.host or machine.ip)}:{p.path}"

    return argv + [render(source), render(target)]


def sshfs_argv(machine: Machine, keys: Keys, remote: str, local: str) -> list[str]:
    """``mount``: the machine's folder on this host over SFTP; files show as this user's (idmap=user), and symlinks
    resolve on the machine (follow_symlinks), where their targets are: read here, /etc/os-release would name the
    host's /usr/lib."""
    ssh = machine.ssh
    pairs = [*SSH_OPTIONS, *keys.options()]
    # sshfs hands ssh its -o options; -F and -i have their own forms there.
    options = [value for flag, value in zip(pairs[::2], pairs[1::2], strict=True) if flag == "-o"]
    argv = ["sshfs", f"{ssh.user}@{_host(ssh.host or machine.ip)}:{remote}", local, "-p", str(ssh.port),
            "-F", "/dev/null", "-o", f"IdentityFile={keys.identity}", "-o", "idmap=user",
            "-o", "follow_symlinks"]  # fmt: skip
    for option in options:
        argv += ["-o", option]
    return argv


def unmount_argv(local: str) -> list[str]:
    if os.geteuid() == 0:
        return ["umount", local]
    return [shutil.which("fusermount3") or "fusermount", "-u", local]


def run_attached(argv: list[str], runner: Callable[..., subprocess.CompletedProcess] | None = None) -> int:
    """Run a client attached to this terminal; Ctrl-C goes to it (not to us); return its exit status.

    A Python handler, not SIG_IGN: an ignored signal stays ignored across exec (and ssh keeps it so).
    """
    runner = runner or subprocess.run
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        try:
            return runner(argv, env=environment.minimal()).returncode
        except FileNotFoundError:
            raise MachineError(f"{argv[0]} is not installed (openssh-client)") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def ssh_run(machine: Machine, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run a script as root on the machine (on stdin, like provisioning); its output is captured."""
    with key_files([machine]) as keys:
        argv = ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], [AS_ROOT])
        return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout,
                              env=environment.minimal())  # fmt: skip
