"""create and rm: a machine is added to, or removed from, a stack's config, then a targeted ``up`` (or ``destroy``
when it was the last one) applies it."""

from __future__ import annotations

import re
import shutil
from typing import Any

from components import config as stack_config
from components import dockercontext, drivers

from . import ui, workspace
from .errors import MachineError
from .machines import Machine, MachineResources, Registry, by_stack, component_urn, machine_index, machine_resources
from .workspace import StackInfo

MACHINE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$")


def typed_config_value(value: str) -> Any:
    """How ``pulumi config set --path`` will store it: true/false → bool, integers → numbers."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def driver_options(driver: str, extra: list[str]) -> dict[str, Any]:
    """``--<driver>-<option> value`` flags (docker-machine's driver flags) from the driver's Options model."""
    try:
        fields = drivers.load(driver).Options.model_fields
    except ValueError as err:
        raise MachineError(str(err)) from None
    flags = {f"--{driver}-{name.replace('_', '-')}": name for name in fields}
    options: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        flag, eq, value = extra[i].partition("=")
        if flag not in flags:
            known = " ".join(sorted(flags))
            raise MachineError(f"flag provided but not defined: {flag} (the {driver} driver's flags: {known})")
        field = flags[flag]
        annotation = str(fields[field].annotation)
        if not eq:
            if "bool" in annotation and (i + 1 == len(extra) or extra[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(extra):
                i += 1
                value = extra[i]
            else:
                raise MachineError(f"flag needs an argument: {flag}")
        if "list" in annotation:
            options.setdefault(field, []).append(typed_config_value(value))
        else:
            options[field] = typed_config_value(value)
        i += 1
    return options


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
    """What a removed machine leaves on this host: its cert copies and the docker context we made."""
    name = dockercontext.context_name(machine.name)
    if dockercontext.docker_path() and dockercontext.description_of(name) == dockercontext.DESCRIPTION.format(
        machine=machine.name
    ):
        try:
            dockercontext.remove(name)
        except dockercontext.DockerContextError as err:
            ui.warn(str(err))
    shutil.rmtree(machine.cert_path, ignore_errors=True)


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
