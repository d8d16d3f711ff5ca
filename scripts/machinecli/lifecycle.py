"""create and rm: a machine is added to, or removed from, a stack's config, then a targeted ``up`` (or ``destroy``
when it was the last one) applies it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from components import config as stack_config
from components import drivers, model, outputs, ownership
from components.model import MACHINE_NAME_RE
from components.steps import dockercontext

from . import team, ui, workspace
from .errors import MachineError
from .machines import Machine, MachineResources, Registry, by_stack, component_urn, machine_index, machine_resources
from .workspace import StackInfo


def typed_config_value(value: str) -> Any:
    """How ``pulumi config set --path`` will store it: true/false → bool, integers → numbers."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


@dataclass(frozen=True)
class Flag:
    """A ``create`` flag made from a model field: which section of the machine it sets, and which field."""

    section: str  # options | engine
    field: str
    annotation: str


def machine_flags(driver: str) -> dict[str, Flag]:
    """docker-machine's ``create`` flags, from the models: ``--<driver>-<option>`` from the driver's Options, and the
    engine options' flags (``--engine-…``, components/model.py EngineField.cli)."""
    try:
        options = drivers.load(driver).Options.model_fields
    except ValueError as err:
        raise MachineError(str(err)) from None
    flags = {f"--{driver}-{name.replace('_', '-')}": Flag("options", name, str(info.annotation))
             for name, info in options.items()}  # fmt: skip
    engine = model.EngineOptions
    flags.update({f"--{field.cli}": Flag("engine", name, str(engine.model_fields[name].annotation))
                  for name, field in engine.fields().items()})  # fmt: skip
    return flags


def parse_flags(driver: str, extra: list[str]) -> dict[str, dict[str, Any]]:
    """``create``'s driver and engine flags → {"options": {…}, "engine": {…}} as the stack config holds them; an
    engine option's environment variable (docker-machine's MACHINE_DOCKER_INSTALL_URL) stands in for its flag."""
    flags, found = machine_flags(driver), {"options": {}, "engine": {}}
    i = 0
    while i < len(extra):
        name, eq, value = extra[i].partition("=")
        if name not in flags:
            known = " ".join(sorted(flags))
            raise MachineError(f"flag provided but not defined: {name} (the {driver} driver's flags: {known})")
        flag = flags[name]
        if not eq:
            if "bool" in flag.annotation and (i + 1 == len(extra) or extra[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(extra):
                i += 1
                value = extra[i]
            else:
                raise MachineError(f"flag needs an argument: {name}")
        section = found[flag.section]
        if "list" in flag.annotation:
            section.setdefault(flag.field, []).append(typed_config_value(value))
        else:
            section[flag.field] = typed_config_value(value)
        i += 1
    for name, field in model.EngineOptions.fields().items():
        if field.env and name not in found["engine"] and os.environ.get(field.env):
            found["engine"][name] = os.environ[field.env]
    return found


def _flatten(value: Any, path: str) -> list[tuple[str, Any]]:
    """A config object as ``--path`` assignments: ``a.b[0]=x``."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in _flatten(item, f"{path}[{i}]")]
    return [(path, value)]


def _scalar(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _target_stack(reg: Registry) -> str:
    if reg.selected:
        return reg.selected
    try:
        current, listed = reg.current_stack(), reg.stacks()
    except MachineError:
        current, listed = None, []
    if current:
        return current.name
    if not listed:
        return "local"
    raise MachineError("several stacks and none selected: choose one with --stack")


def _safe_stacks(reg: Registry) -> list[StackInfo]:
    try:
        return reg.stacks()
    except MachineError:
        return []


def prepare(stack: str, force_unlock: bool) -> None:
    """``make up``'s stack: created on the backend in use when missing (and made the current one), a stale lock
    cleared on request. A stack file made for a stack on another backend (its secrets under another key) is not
    taken over: one line says what the user can do instead."""
    ws = workspace.get()
    if not ws.has_stack(stack):
        path = workspace.config_file(stack)
        if _salted(path):
            raise MachineError(
                f'{os.path.relpath(path, workspace.ROOT)} belongs to a stack "{stack}" of another backend (its '
                f"secrets use another key) and {team.shown(workspace.backend_url())} has no such stack: keep working "
                "with it there (scripts/machine backend unset), move it here (backend unset, then scripts/machine "
                f"--stack {stack} backend migrate - --key-file FILE, then backend set), or use another stack name "
                "here (make up STACK=NAME)"
            )
        ws.ensure_stack(stack)
    ws.select(stack)
    for lock in ws.locks(stack):
        if not (force_unlock and lock.stale()):
            raise MachineError(workspace.lock_message(stack, lock))
        ws.unlock(stack)
        ui.err(f'Cleared the lock of stack "{stack}" ({lock.describe()})')


def _salted(path: str) -> bool:
    try:
        with open(path) as f:
            return any(line.startswith("encryptionsalt:") for line in f)
    except OSError:
        return False


def create(reg: Registry, name: str, machine: dict[str, Any]) -> None:
    """Add ``machine`` to a stack's config and ``up`` it; a failed ``up`` leaves it configured (docker-machine)."""
    if not MACHINE_NAME_RE.match(name):
        raise MachineError(
            "Error creating machine: Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -"
        )
    try:
        stack_config.parse([machine])
    except stack_config.ConfigError as err:
        raise MachineError(f"Error creating machine: {err}") from None
    target = _target_stack(reg)
    ws = workspace.get()
    found = next((s for s in _safe_stacks(reg) if target in (s.name, s.short)), None)
    if found:
        if any(isinstance(e, dict) and e.get("name") == name for e in ws.machines_config(target)):
            raise MachineError(f'Docker machine "{name}" already exists')
    else:
        ws.ensure_stack(target)
    ui.info("Creating machine...")
    index = len(ws.machines_config(target))
    ws.set_all_config(target, {path: _scalar(v) for path, v in _flatten(machine, f"machines[{index}]")})
    try:
        only = [component_urn(target, name)] if found and found.resource_count else None
        ws.up(target, only, title=f'Creating "{name}"')
    except MachineError as err:
        raise MachineError(
            f"Error creating machine: {err}\n"
            f'The machine stays in the config of stack "{target}"; remove it with: {ui.argv0()} rm -f {name}'
        ) from None
    ui.info("Docker is up and running!")
    ui.info(
        "To see how to connect your Docker Client to the Docker Engine running on this virtual machine, "
        f"run: {ui.argv0()} env {name}"
    )


def forget_local(machine: Machine) -> None:
    """What a removed machine leaves on this host: its cert copies and the docker context we made (only ours: a
    context the user made, or docker-machine's own machine directory, stays)."""
    name = dockercontext.context_name(machine.name)
    if dockercontext.docker_path() and dockercontext.ours(dockercontext.description_of(name), machine.name,
                                                          machine.owner):  # fmt: skip
        try:
            dockercontext.remove(name)
        except dockercontext.DockerContextError as err:
            ui.warn(str(err))
    if not outputs.remove_client_certs(machine.cert_path, machine.owner) and os.path.isdir(machine.cert_path):
        ui.warn(ownership.refusal(machine.cert_path, machine.owner, outputs.CERT_DIRECTORY))


class ConfigSnapshot:
    """The stack's config file as it was, to put back when an operation fails."""

    def __init__(self, stack: str):
        self.path = workspace.config_file(stack)
        try:
            with open(self.path) as f:
                self.text: str | None = f.read()
        except OSError:
            self.text = None

    def restore(self) -> None:
        if self.text is not None:
            with open(self.path, "w") as f:
                f.write(self.text)


def _remove_from_stack(stack: str, group: list[Machine], force: bool) -> list[str]:
    ws = workspace.get()
    snapshot = ConfigSnapshot(stack)
    resources = ws.resources(stack)
    parts: list[MachineResources] = [machine_resources(stack, m.name, resources) for m in group]
    configured = [e.get("name") for e in ws.machines_config(stack) if isinstance(e, dict)]
    remaining = [n for n in configured if n not in {m.name for m in group}]
    try:
        for m in group:
            if m.name in configured:
                index, entries = machine_index(stack, m.name)
                ws.remove_config(stack, "machines" if len(entries) == 1 else f"machines[{index}]")
        title = "Removing " + ", ".join(f'"{m.name}"' for m in group)
        if remaining:
            ws.up(stack, [urn for part in parts for urn in part.urns], title=title)
        else:
            ws.destroy(stack, title=title)
    except MachineError as err:
        if not force:
            snapshot.restore()
            return [f'Error removing host "{m.name}": {err}' for m in group]
        for part in parts:
            try:
                ws.forget(stack, part.component)
            except MachineError as forget_error:
                ui.warn(str(forget_error))
        ui.warn(f"deleting failed, the machines were removed from stack {stack} anyway (-f): {err}")
    for m in group:
        forget_local(m)
        ui.info(f"Successfully removed {m.name}")
    return []


def rm(reg: Registry, names: list[str], force: bool, yes: bool) -> int:
    errors: list[str] = []
    machines: list[Machine] = []
    for n in names:
        try:
            machines.append(reg.find(n))
        except MachineError as err:
            errors.append(f'Error removing host "{n}": {err}')
    ui.info(f"About to remove {', '.join(names)}")
    ui.info("WARNING: This action will delete both local reference and remote instance.")
    if not (yes or force) and not ui.confirm("Are you sure?"):
        return 0
    for stack, group in by_stack(machines).items():
        errors += _remove_from_stack(stack, group, force)
    for e in errors:
        ui.err(e)
    return 1 if errors else 0
