"""End-to-end fixtures: a real Pulumi engine on an isolated file backend, driving real VMs."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Stack:
    """A throwaway stack whose config file lives in stacks/ for the duration of the test session."""

    name: str
    env: dict[str, str]
    config_file: str
    state_dir: str
    # Another Pulumi project than the repo's (e.g. tests/e2e/bare_vm), run with --cwd.
    project_dir: str | None = None
    # A network namespace the engine and scripts/machine run in (their traffic stays inside it).
    netns: str | None = None

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def pulumi(self, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
        cwd = ["--cwd", self.project_dir] if self.project_dir else []
        command = [*self.prefix, os.path.join(ROOT, "scripts", "pulumi"), *cwd, *args, "--stack", self.name]
        result = subprocess.run(
            [*command, "--non-interactive"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
        return result

    def machine(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, os.path.join(ROOT, "scripts", "machine"), *args], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=900,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"machine {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def outputs(self) -> dict:
        return json.loads(self.pulumi("stack", "output", "--json", "--show-secrets").stdout)


def rewrite_machines(stack: Stack, machines: list[dict], **other: object) -> None:
    """Replace the stack's machines (and ``other`` docker-machine keys, e.g. swarm=…), keeping the rest of its config
    file (salt, secrets provider, other keys)."""
    with open(stack.config_file) as f:
        document = yaml.safe_load(f) or {}
    config = document.setdefault("config", {})
    config["docker-machine:machines"] = machines
    config.update({f"docker-machine:{key}": value for key, value in other.items()})
    with open(stack.config_file, "w") as f:
        json.dump(document, f, indent=1)  # JSON is YAML


def write_stack_config(name: str, machines: list[dict]) -> str:
    path = os.path.join(ROOT, "stacks", f"Pulumi.{name}.yaml")
    with open(path, "w") as f:
        json.dump({"config": {"docker-machine:machines": machines}}, f, indent=1)  # JSON is YAML
    return path


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory) -> dict[str, str]:
    """Environment for every e2e command: own backend, state dir and passphrase; shared caches."""
    base = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ)
    env.pop("PULUMI_CONFIG_PASSPHRASE", None)
    env.pop("SHELL", None)  # CI runs without a login shell; so do the tests
    passphrase = base / "passphrase"
    passphrase.write_text(secrets.token_hex(16))
    passphrase.chmod(0o600)
    env.update(
        PULUMI_BACKEND_URL=f"file://{base / 'backend'}",
        PULUMI_CONFIG_PASSPHRASE_FILE=str(passphrase),
        DMP_STATE=str(base / "state"),
    )
    (base / "backend").mkdir()
    # Projects other than the repo's import `components` from the checkout (their dynamic providers too).
    env["PYTHONPATH"] = ROOT
    return env


def new_stack(env: dict[str, str], prefix: str, machines: list[dict] | None, project_dir: str | None = None) -> Stack:
    """A stack of the repo's project with ``machines``, or of another project (no config) in ``project_dir``."""
    name = f"test-{prefix}-{secrets.token_hex(3)}"
    if project_dir:
        config_file = os.path.join(project_dir, f"Pulumi.{name}.yaml")
    else:
        config_file = write_stack_config(name, machines or [])
    stack = Stack(name, env, config_file, env["DMP_STATE"], project_dir)
    cwd = ["--cwd", project_dir] if project_dir else []
    subprocess.run(
        [os.path.join(ROOT, "scripts", "pulumi"), *cwd, "stack", "init", name], cwd=ROOT, env=env,
        check=True, capture_output=True, text=True,
    )
    return stack


def remove_stack(stack: Stack) -> None:
    cwd = ["--cwd", stack.project_dir] if stack.project_dir else []
    subprocess.run(
        [os.path.join(ROOT, "scripts", "pulumi"), *cwd, "stack", "rm", "--yes", "--force", "--stack", stack.name],
        cwd=ROOT, env=stack.env, capture_output=True, text=True,
    )
    if os.path.exists(stack.config_file):
        os.unlink(stack.config_file)


def command_lines() -> list[str]:
    """``PID ARGS…`` of every process, whole (ps cuts long command lines to the terminal's width)."""
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if args:
                lines.append(f"{entry} {args}")
    return lines


def qemu_processes_for(path_fragment: str) -> list[str]:
    return [line for line in command_lines() if "qemu-system" in line and path_fragment in line]


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("qemu-system-x86_64", "qemu-img", "docker", "curl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A fixed host port forwarded to the session machine's guest port 8081 from boot (options.forwards).
STATIC_FORWARD_PORT = free_port()


def session_machine(name: str, **extra) -> dict:
    """The session machine's config: labels and env with systemd's and the shell's specials, a fixed forward."""
    return {
        "name": name,
        "driver": "qemu",
        "options": {"forwards": [f"{STATIC_FORWARD_PORT}:8081"]},
        "engine": {"install": "packages", "labels": ['note=50%off "q" $x'], "env": ['DMP_PROBE=a"b%h']},
        **extra,
    }


def processes_matching(fragment: str) -> list[str]:
    return [line for line in command_lines() if fragment in line]


def record_figure(key: str, value) -> None:
    """Figures the issues ask to quote, collected into $E2E_FIGURES (JSON) when it is set."""
    path = os.environ.get("E2E_FIGURES")
    if not path:
        return
    figures = json.load(open(path)) if os.path.exists(path) else {}
    figures[key] = value
    with open(path, "w") as f:
        json.dump(figures, f, indent=1)


@pytest.fixture(scope="session")
def local_machine(e2e_env):
    """One QEMU machine for the whole session (boots are minutes under TCG): (stack, name, instance dir)."""
    name = f"e2e-{os.getpid()}"
    stack = new_stack(e2e_env, "local", [session_machine(name)])
    instance_dir = os.path.join(stack.state_dir, f"docker-machine-{stack.name}", "qemu", name)
    cert_dir = os.path.expanduser(f"~/.docker/machine/machines/{name}")
    try:
        stack.pulumi("up", "--yes", "--skip-preview", timeout=2400)
        yield stack, name, instance_dir
        stack.pulumi("destroy", "--yes", timeout=600)
        # Nothing of the VM may survive destroy: process, port forwarder, overlay, seed, sockets, pidfiles, tap.
        assert qemu_processes_for(instance_dir) == []
        assert processes_matching(f"components.drivers.qemu.forwarder {instance_dir}") == []
        assert processes_matching(f"--socket-path {instance_dir}/virtiofs") == []  # its host folders' daemons
        assert not os.path.exists(instance_dir), os.listdir(instance_dir)
        tap = "dm" + hashlib.sha256(instance_dir.encode()).hexdigest()[:10]
        assert tap not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    finally:
        if qemu_processes_for(instance_dir):  # a failed run must not leak a VM into the next one
            stack.pulumi("destroy", "--yes", check=False, timeout=600)
        remove_stack(stack)
        shutil.rmtree(cert_dir, ignore_errors=True)
