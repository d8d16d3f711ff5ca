"""Machines from the project's stacks, stack config edits and targeted updates — every ``pulumi`` call.

Reading goes through ``pulumi stack ls/output --json`` and ``pulumi config get --json``; edits through
``pulumi config set --path`` / ``set-all`` / ``rm`` (the CLI honours ``stackConfigDir``, keeps comments
and the ``encryptionsalt`` line); changes are applied with ``pulumi up`` targeted at one machine's
component and its children (``--target <component> --target-dependents``).

``run_pulumi`` and ``stream_pulumi`` are the only functions that start ``pulumi``: tests replace them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPONENT_TYPE = "dockermachine:index:DockerMachine"
REMOTE_COMMAND_TYPE = "pulumi-python:dynamic/remote:Command"
API_CHECK_TYPE = "pulumi-python:dynamic/docker:ApiCheck"
DEFAULT_MACHINE = "default"


class MachineError(Exception):
    """A failure worded for the user; the CLI prints it as one ``Error: …`` line (or its own lines)."""


def project_name() -> str:
    try:
        with open(os.path.join(ROOT, "Pulumi.yaml")) as f:
            for line in f:
                if line.startswith("name:"):
                    return line.split(":", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return "docker-machine"


PROJECT = project_name()
MACHINES_KEY = f"{PROJECT}:machines"
CA_ROTATION_KEY = f"{PROJECT}:ca_rotation"


# --- running pulumi -------------------------------------------------------------------------------------


def run_pulumi(args: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pulumi ARGS`` in the project (captured). Replaced in unit tests."""
    try:
        return subprocess.run(
            ["pulumi", *args, "--non-interactive"], cwd=ROOT, capture_output=True, text=True, input=input
        )
    except FileNotFoundError:
        raise MachineError("pulumi is not on PATH (run this through scripts/machine)") from None


def _pulumi_json(args: list[str]) -> Any:
    result = run_pulumi([*args, "--json"])
    if result.returncode != 0:
        raise MachineError(_first_error(result.stderr) or f"pulumi {' '.join(args)} failed")
    return json.loads(result.stdout or "null")


def _first_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    return lines[-1] if lines else ""


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None]]:
    """Pulumi's progress lines: a rich spinner on a terminal, the plain lines on stderr otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(title) as status:

            def update(line: str) -> None:
                text = line.strip()
                if text and not text.startswith(("Resources:", "Duration:", "Diagnostics:")):
                    status.update(f"{title} [dim]{text[:100]}[/dim]")

            yield update
    else:

        def echo(line: str) -> None:
            sys.stderr.write(line if line.endswith("\n") else line + "\n")
            sys.stderr.flush()

        yield echo


def stream_pulumi(args: list[str], title: str) -> None:
    """Run a long ``pulumi`` operation showing its progress; raise with its diagnostics when it fails."""
    try:
        proc = subprocess.Popen(
            ["pulumi", *args, "--non-interactive", "--color", "never"],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=1,
        )
    except FileNotFoundError:
        raise MachineError("pulumi is not on PATH (run this through scripts/machine)") from None
    tail: deque[str] = deque(maxlen=400)
    with _progress(title) as update:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            update(line)
    if proc.wait() != 0:
        raise MachineError(f"pulumi {args[0]} failed:\n" + diagnostics(list(tail)))


def diagnostics(lines: list[str]) -> str:
    """The ``Diagnostics:`` section of pulumi's output (else its last lines), without blank lines."""
    if "Diagnostics:" in lines:
        start = lines.index("Diagnostics:") + 1
        section = []
        for line in lines[start:]:
            if line.startswith(("Resources:", "Outputs:", "Duration:")):
                break
            if line.strip():
                section.append(line.rstrip())
        if section:
            return "\n".join(section)
    return "\n".join(line for line in lines[-20:] if line.strip())


# --- stacks and machines ----------------------------------------------------------------------------------


@dataclass
class StackInfo:
    name: str
    current: bool = False
    resource_count: int | None = None

    @property
    def short(self) -> str:
        """The stack's own name (``org/project/stack`` → ``stack``), as in URNs and config file names."""
        return self.name.rsplit("/", 1)[-1]


def short_name(stack: str) -> str:
    return stack.rsplit("/", 1)[-1]


@dataclass
class Machine:
    name: str
    stack: str
    info: dict[str, Any]
    outputs: dict[str, Any] = field(repr=False)

    @property
    def driver(self) -> str:
        return self.info.get("driver", "")

    @property
    def url(self) -> str:
        return self.info.get("url", "")

    @property
    def ip(self) -> str:
        return self.info.get("ip", "")

    @property
    def env(self) -> dict[str, str]:
        return self.info.get("env") or {}

    @property
    def cert_path(self) -> str:
        return self.env.get("DOCKER_CERT_PATH") or default_cert_path(self.name)

    @property
    def docker_host(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("tcp://").rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def ssh(self) -> dict[str, Any]:
        return self.info.get("ssh") or {}

    @property
    def ssh_key(self) -> str | None:
        return (self.outputs.get("sshPrivateKeys") or {}).get(self.name)

    @property
    def tls(self) -> tuple[str, str, str]:
        return self.outputs.get("caCert", ""), self.outputs.get("clientCert", ""), self.outputs.get("clientKey", "")

    def write_client_certs(self) -> None:
        write_client_certs(self.cert_path, *self.tls)


def default_cert_path(name: str) -> str:
    return os.path.join(os.path.expanduser("~"), ".docker", "machine", "machines", name)


def store_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".docker", "machine")


def write_client_certs(cert_path: str, ca_cert: str, client_cert: str, client_key: str) -> None:
    """docker-machine's per-machine copies (ca.pem, cert.pem, key.pem 0600) where DOCKER_CERT_PATH points."""
    os.makedirs(cert_path, mode=0o700, exist_ok=True)
    files = {"ca.pem": (ca_cert, 0o644), "cert.pem": (client_cert, 0o644), "key.pem": (client_key, 0o600)}
    for filename, (content, mode) in files.items():
        path = os.path.join(cert_path, filename)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


class Registry:
    """The machines of the project's stacks (one stack with ``--stack``), read once per command."""

    def __init__(self, stack: str | None = None):
        self.selected = stack
        self._stacks: list[StackInfo] | None = None
        self._outputs: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []

    def stacks(self) -> list[StackInfo]:
        if self._stacks is None:
            listed = [
                StackInfo(s["name"], bool(s.get("current")), s.get("resourceCount"))
                for s in _pulumi_json(["stack", "ls"]) or []
            ]
            if self.selected:
                match = [s for s in listed if s.name == self.selected or s.short == self.selected]
                if not match:
                    raise MachineError(f'Stack "{self.selected}" does not exist in this project')
                listed = match
            self._stacks = listed
        return self._stacks

    def current_stack(self) -> StackInfo | None:
        stacks = self.stacks()
        if self.selected or len(stacks) == 1:
            return stacks[0] if stacks else None
        return next((s for s in stacks if s.current), None)

    def outputs(self, stack: str) -> dict[str, Any]:
        if stack not in self._outputs:
            self._outputs[stack] = _pulumi_json(["stack", "output", "--show-secrets", "--stack", stack]) or {}
        return self._outputs[stack]

    def _load_all(self) -> None:
        todo = [s.name for s in self.stacks() if s.name not in self._outputs and s.resource_count != 0]

        def load(stack: str) -> tuple[str, dict[str, Any] | None, str | None]:
            try:
                return stack, _pulumi_json(["stack", "output", "--show-secrets", "--stack", stack]) or {}, None
            except MachineError as err:
                return stack, None, str(err)

        with ThreadPoolExecutor(max_workers=8) as pool:
            for stack, outputs, error in pool.map(load, todo):
                if error is not None:
                    self.warnings.append(f'stack "{stack}": {error}')
                    self._outputs[stack] = {}
                else:
                    self._outputs[stack] = outputs or {}

    def machines(self) -> list[Machine]:
        self._load_all()
        found = []
        for stack in self.stacks():
            outputs = self._outputs.get(stack.name) or {}
            for name, info in sorted((outputs.get("machines") or {}).items()):
                found.append(Machine(name, stack.name, info, outputs))
        return found

    def find(self, name: str) -> Machine:
        candidates = [m for m in self.machines() if m.name == name]
        if not candidates:
            unread = f" (unreadable: {'; '.join(self.warnings)})" if self.warnings else ""
            raise MachineError(f'Host does not exist: "{name}"{unread}')
        if len(candidates) > 1:
            current = self.current_stack()
            chosen = [m for m in candidates if current and m.stack == current.name]
            if len(chosen) == 1:
                return chosen[0]
            stacks = ", ".join(m.stack for m in candidates)
            raise MachineError(f'Machine "{name}" exists in several stacks ({stacks}): choose one with --stack')
        return candidates[0]

    def resolve(self, names: Iterable[str] | None) -> list[Machine]:
        """The named machines, or the machine named ``default`` when no name is given."""
        names = list(names or [])
        if not names:
            if not any(m.name == DEFAULT_MACHINE for m in self.machines()):
                raise MachineError('No machine name(s) specified and no "default" machine exists')
            names = [DEFAULT_MACHINE]
        return [self.find(n) for n in names]


# --- stack config --------------------------------------------------------------------------------------


def config_file(stack: str) -> str:
    return os.path.join(ROOT, "stacks", f"Pulumi.{short_name(stack)}.yaml")


def get_machines_config(stack: str) -> list[dict[str, Any]]:
    """The stack's ``machines`` list as configured (``[]`` when not set)."""
    result = run_pulumi(["config", "get", MACHINES_KEY, "--json", "--stack", stack])
    if result.returncode != 0:
        if "not found" in result.stderr:
            return []
        raise MachineError(_first_error(result.stderr) or "pulumi config get failed")
    data = json.loads(result.stdout)
    value = data.get("objectValue")
    if value is None:
        value = json.loads(data.get("value") or "[]")
    return value if isinstance(value, list) else []


def machine_index(stack: str, name: str) -> tuple[int, list[dict[str, Any]]]:
    machines = get_machines_config(stack)
    for index, machine in enumerate(machines):
        if isinstance(machine, dict) and machine.get("name") == name:
            return index, machines
    raise MachineError(f'machine "{name}" is not in the config of stack "{stack}" ({config_file(stack)})')


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise MachineError(f"{what}: {_first_error(result.stderr) or 'pulumi failed'}")


def set_machine_setting(stack: str, name: str, key: str, value: str) -> None:
    """``machines[<name>].<key> = value`` (a string) in the stack's config."""
    index, _ = machine_index(stack, name)
    path = f"{MACHINES_KEY}[{index}].{key}"
    _check(
        run_pulumi(["config", "set", "--path", path, value, "--type", "string", "--stack", stack]),
        f"setting {path}",
    )


def set_stack_setting(stack: str, key: str, value: str) -> None:
    _check(run_pulumi(["config", "set", f"{PROJECT}:{key}", value, "--stack", stack]), f"setting {key}")


def flatten(value: Any, path: str) -> list[tuple[str, Any]]:
    """A config object as ``--path`` assignments: ``a.b[0]=x``."""
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = []
        for key, item in value.items():
            items += flatten(item, f"{path}.{key}")
        return items
    if isinstance(value, list):
        items = []
        for i, item in enumerate(value):
            items += flatten(item, f"{path}[{i}]")
        return items
    return [(path, value)]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def add_machine_config(stack: str, machine: dict[str, Any]) -> None:
    """Append a machine to the stack's ``machines`` list (one ``config set-all --path``)."""
    index = len(get_machines_config(stack))
    args = ["config", "set-all", "--path", "--stack", stack]
    for path, value in flatten(machine, f"{MACHINES_KEY}[{index}]"):
        args += ["--plaintext", f"{path}={_scalar(value)}"]
    _check(run_pulumi(args), f'adding machine "{machine.get("name")}" to stack "{stack}"')


def remove_machine_config(stack: str, name: str) -> None:
    index, machines = machine_index(stack, name)
    if len(machines) == 1:
        args = ["config", "rm", MACHINES_KEY, "--stack", stack]
    else:
        args = ["config", "rm", "--path", f"{MACHINES_KEY}[{index}]", "--stack", stack]
    _check(run_pulumi(args), f'removing machine "{name}" from stack "{stack}"')


class ConfigSnapshot:
    """The stack's config file as it was, to put back when an operation fails."""

    def __init__(self, stack: str):
        self.path = config_file(stack)
        try:
            with open(self.path) as f:
                self.text: str | None = f.read()
        except OSError:
            self.text = None

    def restore(self) -> None:
        if self.text is not None:
            with open(self.path, "w") as f:
                f.write(self.text)


def rotation_token() -> str:
    """A new value for ``tls_rotation``/``ca_rotation``: a UTC timestamp (never parsed as a number)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000:09d}Z"


# --- resources and targeted updates -------------------------------------------------------------------


def stack_resources(stack: str) -> list[dict[str, Any]]:
    result = run_pulumi(["stack", "export", "--stack", stack])
    _check(result, f'reading the state of stack "{stack}"')
    return (json.loads(result.stdout).get("deployment") or {}).get("resources") or []


def component_urn(stack: str, name: str) -> str:
    return f"urn:pulumi:{short_name(stack)}::{PROJECT}::{COMPONENT_TYPE}::{name}"


@dataclass
class MachineResources:
    component: str
    descendants: list[dict[str, Any]]

    @property
    def urns(self) -> list[str]:
        return [self.component, *(r["urn"] for r in self.descendants)]

    def of_type(self, typ: str) -> list[dict[str, Any]]:
        return [r for r in self.descendants if r.get("type") == typ]


def machine_resources(stack: str, name: str, resources: list[dict[str, Any]] | None = None) -> MachineResources:
    """The machine's component URN and every resource under it (empty before the first ``up``)."""
    resources = stack_resources(stack) if resources is None else resources
    urn = component_urn(stack, name)
    for r in resources:
        if r.get("type") == COMPONENT_TYPE and r["urn"].endswith(f"::{name}"):
            urn = r["urn"]
    children: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        if r.get("parent"):
            children.setdefault(r["parent"], []).append(r)
    descendants, todo = [], [urn]
    while todo:
        for child in children.get(todo.pop(), []):
            if not child.get("delete"):
                descendants.append(child)
                todo.append(child["urn"])
    return MachineResources(urn, descendants)


def up(
    stack: str,
    machines: list[MachineResources] | None,
    *,
    replace: Iterable[str] = (),
    refresh: bool = False,
    title: str = "pulumi up",
) -> None:
    """``pulumi up`` on the stack, targeted at the given machines (all of the stack when None).

    The targets are each component and the resources under it, with their dependents: listing the
    children explicitly keeps a targeted ``--refresh`` working (the engine otherwise refreshes children
    reached only as dependents without loading their provider).
    """
    args = ["up", "--yes", "--skip-preview", "--suppress-outputs", "--stack", stack]
    if machines is not None:
        for m in machines:
            for urn in m.urns:
                args += ["--target", urn]
        args.append("--target-dependents")
    for urn in replace:
        args += ["--replace", urn]
    if refresh:
        args.append("--refresh")
    stream_pulumi(args, title)


def destroy(stack: str, title: str = "pulumi destroy") -> None:
    stream_pulumi(["destroy", "--yes", "--skip-preview", "--stack", stack], title)


def forget(stack: str, machine: MachineResources) -> None:
    """Drop a machine's resources from the state without deleting them (``rm -f`` after a failed delete)."""
    args = ["state", "delete", "--yes", "--force", "--target-dependents", machine.component, "--stack", stack]
    result = run_pulumi(args)
    _check(result, f"removing {machine.component} from the state")


def ensure_stack(stack: str) -> None:
    """Create the stack when it does not exist yet (``create`` on a fresh backend)."""
    result = run_pulumi(["stack", "init", stack])
    if result.returncode != 0 and "already exists" not in result.stderr:
        _check(result, f'creating stack "{stack}"')
