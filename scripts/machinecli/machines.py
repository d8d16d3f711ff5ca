"""Machines as the stacks' outputs describe them (``components.outputs``), and the resources behind each one."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from components import outputs, ownership

from . import workspace
from .errors import MachineError
from .workspace import StackInfo, short_name

DEFAULT_MACHINE = "default"


@dataclass
class Machine:
    name: str
    stack: str
    info: outputs.MachineOutputs
    stack_outputs: outputs.StackOutputs = field(repr=False)

    @property
    def driver(self) -> str:
        return self.info.driver

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def ip(self) -> str:
        return self.info.ip

    @property
    def env(self) -> dict[str, str]:
        return self.info.env

    @property
    def owner(self) -> ownership.Owner:
        return workspace.owner(self.stack)

    @property
    def cert_path(self) -> str:
        # This user's copy of the client certificates: the output's DOCKER_CERT_PATH is that of whoever ran `up`.
        return outputs.cert_path(self.name, self.owner)

    @property
    def docker_env(self) -> dict[str, str]:
        """What `env` prints, for this user."""
        return outputs.docker_env(self.name, self.url, self.cert_path)

    @property
    def docker_host(self) -> tuple[str, int]:
        return self.info.docker_host

    @property
    def ssh(self) -> outputs.SshEndpoint:
        return self.info.ssh

    @property
    def swarm_master(self) -> str:
        """The first manager of the stack's swarm when this machine is a member of it, else ""."""
        swarm = self.stack_outputs.swarm
        return swarm.managers[0] if swarm and swarm.role(self.name) else ""

    @property
    def ssh_key(self) -> str | None:
        return self.stack_outputs.ssh_private_keys.get(self.name)

    @property
    def tls(self) -> tuple[str, str, str]:
        o = self.stack_outputs
        return o.ca_cert, o.client_cert, o.client_key

    def write_client_certs(self) -> None:
        """This user's copy of the client certificates, in a directory of ours (never docker-machine's own)."""
        try:
            outputs.write_client_certs(self.cert_path, self.owner, *self.tls)
        except ownership.NotOurs as err:
            raise MachineError(str(err)) from None


def parse_outputs(raw: dict[str, Any]) -> outputs.StackOutputs:
    try:
        return outputs.StackOutputs.model_validate(raw)
    except ValidationError as err:
        raise MachineError(f"the stack outputs are not this project's: {err.errors()[0]['msg']}") from None


class Registry:
    """The machines of the project's stacks (one stack with ``--stack``), read once per command."""

    def __init__(self, stack: str | None = None):
        self.selected = stack
        self._stacks: list[StackInfo] | None = None
        self._outputs: dict[str, outputs.StackOutputs] = {}
        self.warnings: list[str] = []

    def stacks(self) -> list[StackInfo]:
        if self._stacks is None:
            listed = workspace.get().stacks()
            if self.selected:
                listed = [s for s in listed if self.selected in (s.name, s.short)]
                if not listed:
                    raise MachineError(f'Stack "{self.selected}" does not exist in this project')
            self._stacks = listed
        return self._stacks

    def current_stack(self) -> StackInfo | None:
        stacks = self.stacks()
        if self.selected or len(stacks) == 1:
            return stacks[0] if stacks else None
        return next((s for s in stacks if s.current), None)

    def outputs(self, stack: str) -> outputs.StackOutputs:
        if stack not in self._outputs:
            self._outputs[stack] = parse_outputs(workspace.get().outputs(stack))
        return self._outputs[stack]

    def _load_all(self) -> None:
        todo = [s.name for s in self.stacks() if s.name not in self._outputs and s.resource_count != 0]

        def load(stack: str) -> tuple[str, outputs.StackOutputs | None, str | None]:
            try:
                return stack, parse_outputs(workspace.get().outputs(stack)), None
            except MachineError as err:
                return stack, None, str(err)

        with ThreadPoolExecutor(max_workers=8) as pool:
            for stack, loaded, error in pool.map(load, todo):
                if error is not None:
                    self.warnings.append(f'stack "{stack}": {error}')
                self._outputs[stack] = loaded or outputs.StackOutputs()

    def machines(self) -> list[Machine]:
        self._load_all()
        found = []
        for stack in self.stacks():
            loaded = self._outputs.get(stack.name) or outputs.StackOutputs()
            for name, info in sorted(loaded.machines.items()):
                found.append(Machine(name, stack.name, info, loaded))
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


def by_stack(machines: list[Machine]) -> dict[str, list[Machine]]:
    """The machines grouped per stack, stacks in name order."""
    groups: dict[str, list[Machine]] = {}
    for m in sorted(machines, key=lambda m: m.stack):
        groups.setdefault(m.stack, []).append(m)
    return groups


# --- the resources of a machine --------------------------------------------------------------------------------


def component_urn(stack: str, name: str) -> str:
    return f"urn:pulumi:{short_name(stack)}::{workspace.PROJECT}::{outputs.COMPONENT}::{name}"


@dataclass
class MachineResources:
    component: str
    descendants: list[dict[str, Any]]

    @property
    def urns(self) -> list[str]:
        """The component and every resource under it: listing the children keeps a targeted ``--refresh`` working
        (the engine otherwise refreshes children reached only as dependents without loading their provider)."""
        return [self.component, *(r["urn"] for r in self.descendants)]

    def of_type(self, token: str) -> list[dict[str, Any]]:
        return [r for r in self.descendants if r.get("type") == token]


def machine_resources(stack: str, name: str, resources: list[dict[str, Any]] | None = None) -> MachineResources:
    """The machine's component URN and every resource under it (empty before the first ``up``)."""
    resources = workspace.get().resources(stack) if resources is None else resources
    urn = component_urn(stack, name)
    for r in resources:
        if r.get("type") == outputs.COMPONENT and r["urn"].endswith(f"::{name}"):
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


def targets(stack: str, machines: list[Machine]) -> list[str]:
    """URNs for a ``up`` targeted at these machines of ``stack`` (with ``target_dependents``)."""
    resources = workspace.get().resources(stack)
    return [urn for m in machines for urn in machine_resources(stack, m.name, resources).urns]


def rotation_token() -> str:
    """A new value for ``tls_rotation``/``ca_rotation``: a UTC timestamp (never parsed as a number)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 1_000_000_000:09d}Z"


def machine_index(stack: str, name: str) -> tuple[int, list[dict[str, Any]]]:
    machines = workspace.get().machines_config(stack)
    for index, machine in enumerate(machines):
        if isinstance(machine, dict) and machine.get("name") == name:
            return index, machines
    raise MachineError(f'machine "{name}" is not in the config of stack "{stack}" ({workspace.config_file(stack)})')


def set_machine_setting(stack: str, name: str, key: str, value: str) -> None:
    """``machines[<name>].<key> = value`` in the stack's config, unless it already holds that value."""
    index, machines = machine_index(stack, name)
    if machines[index].get(key) != value:
        workspace.get().set_config(stack, f"machines[{index}].{key}", value)
