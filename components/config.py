"""Stack config → validated models, driver options and host prerequisites included, before any resource exists.

The one reader of a stack's configuration: ``load`` for the program (``__main__.py``), where every problem becomes
one ``ConfigError`` line that names the field (``machines[default].engine.port``) and says what is allowed;
``machines_of`` for the policy pack and ``scripts/machine`` (each machine on its own, a bad one left out: the program
names it); ``read_stack_file`` for the plugin preflight (``python -m components.config plugins STACK_FILE``).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from pydantic import BaseModel, ValidationError

from components import drivers
from components.model import DEFAULT_DRIVER, ConfigError, EngineOptions, MachineConfig, StackConfig, SwarmConfig
from components.plugins import plugin_installed

__all__ = ["ConfigError", "load", "parse"]

EXAMPLE = (
    "e.g. in stacks/Pulumi.<stack>.yaml: `docker-machine:machines: [{name: default, driver: qemu}]`, "
    "or: scripts/pulumi config set --path 'machines[0].name' default"
)
SWARM_EXAMPLE = "`docker-machine:swarm: {managers: [node1], workers: [node2]}`"
_HEADER = "invalid stack configuration:\n  "


def _location(loc: tuple[Any, ...], machines: list[Any]) -> str:
    """A pydantic error location as the config path a user types, e.g. machines[default].engine.port."""
    parts: list[str] = []
    items = list(loc)
    if items[:1] == ["machines"] and len(items) > 1 and isinstance(items[1], int):
        index = items[1]
        entry = machines[index] if index < len(machines) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        # The name the user wrote, unless it would make the line unreadable (controls, brackets, huge).
        valid = isinstance(name, str) and 0 < len(name) <= 63 and name.isprintable() and "]" not in name
        parts.append(f"machines[{name if valid else index}]")
        items = items[2:]
    for item in items:
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
        elif isinstance(item, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item) and parts:
            parts[-1] += f"[{item[:40]!r}]"  # a key the user typed that is no setting name
        elif not str(item).startswith("function-"):
            parts.append(str(item))
    return ".".join(parts)


def _allowed_keys(loc: tuple[Any, ...], machines: list[Any]) -> list[str]:
    """The settings allowed where an unknown key was found."""
    model: type[BaseModel] = StackConfig
    if len(loc) == 2 and loc[0] == "swarm":
        model = SwarmConfig
    if len(loc) >= 3 and loc[0] == "machines":
        model = MachineConfig
        section = loc[2:-1]
        if section == ("engine",):
            model = EngineOptions
        elif section[:1] == ("options",):
            raw = machines[loc[1]] if isinstance(loc[1], int) and loc[1] < len(machines) else {}
            driver = raw.get("driver", DEFAULT_DRIVER) if isinstance(raw, dict) else DEFAULT_DRIVER
            model = drivers.load(driver).Options if driver in drivers.available() else model
            for key in section[1:]:
                annotation = model.model_fields[key].annotation if key in model.model_fields else None
                model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else model
    return list(model.model_fields)


_TYPE_ERRORS = frozenset({"int_type", "bool_type", "string_type", "list_type", "dict_type", "model_type",
                          "model_attributes_type", "float_type"})  # fmt: skip


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(e: dict[str, Any], prefix: tuple[Any, ...], machines: list[Any]) -> str:
    loc = prefix + tuple(e["loc"])
    message = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden" and loc[-2:] == ("options", "mounts"):
        message = ("host folders are shared only into local VMs (drivers qemu, virtualbox); this machine runs "
                   "elsewhere: copy files with scripts/machine scp --delta, or mount its folders here with "
                   "scripts/machine mount")  # fmt: skip
    elif e["type"] == "extra_forbidden":
        message = f"unknown setting; allowed: {', '.join(_allowed_keys(loc, machines))}"
    elif e["type"] == "string_pattern_mismatch" and loc[-1] == "name":
        message = (
            f"invalid machine name {e['input']!r}: allowed characters are 0-9a-zA-Z . - "
            "and it must start with a letter or digit"
        )
    elif e["type"] == "literal_error":
        message = f"{e['input']!r} is not allowed; {message[0].lower()}{message[1:]}"
    elif e["type"] == "missing" and loc == ("swarm", "managers"):
        message = "a swarm needs at least one manager (machine names)"
    elif e["type"] in _TYPE_ERRORS and loc == ("swarm",):
        message = f"a mapping is wanted, got {_shown(e['input'])}; e.g. {SWARM_EXAMPLE}"
    elif e["type"] in _TYPE_ERRORS:
        message = f"{message}, got {_shown(e['input'])}"
        if loc == ("machines",) or (len(loc) == 2 and loc[0] == "machines"):
            message += f"; each machine is a mapping, {EXAMPLE}"
    elif e["type"] == "too_short" and loc == ("machines",):
        message += f"; {EXAMPLE}"
    return f"{_location(loc, machines) or 'machines'}: {message}"


def _swarm_lines(config: StackConfig, validated: list[MachineConfig]) -> list[str]:
    """A swarm's names against the stack's machines: known, each in one role, advertise only for members, and
    every member reachable by the others unless its advertise address is given."""
    swarm = config.swarm
    if swarm is None:
        return []
    known = [m.name for m in config.machines]
    lines, roles = [], {}
    for role, names in (("managers", swarm.managers), ("workers", swarm.workers)):
        for name in names:
            if name not in known:
                lines.append(f"swarm.{role}: unknown machine {name!r}; machines: {', '.join(known)}")
            elif name in roles:
                twice = "is listed twice" if roles[name] == role else f"is in both {roles[name]} and {role}"
                lines.append(f"swarm.{role}: machine {name!r} {twice}; a machine has one role")
            roles.setdefault(name, role)
    for name in swarm.advertise:
        if name not in roles:
            lines.append(f"swarm.advertise: {name!r} is not a member of the swarm; members: {', '.join(roles)}")
    for machine in validated:
        if machine.name in roles and machine.name not in swarm.advertise:
            problem = drivers.load(machine.driver).unreachable_by_peers(machine)
            if problem:
                lines.append(f"machines[{machine.name}].options: swarm members must reach each other, but {problem}; "
                             f"or give swarm.advertise.{machine.name}")  # fmt: skip
    return lines


def parse(raw: Any, ca_rotation: str = "", swarm: Any = None) -> StackConfig:
    """Validate the raw ``machines`` list (driver options included) and ``swarm``; ConfigError naming each bad
    field."""
    machines = raw if isinstance(raw, list) else []
    try:
        config = StackConfig.model_validate({"machines": raw, "ca_rotation": ca_rotation, "swarm": swarm})
    except ValidationError as err:
        raise ConfigError(_HEADER + "\n  ".join(_describe(e, (), machines) for e in err.errors())) from None
    validated, lines, seen = [], [], set()
    for index, machine in enumerate(config.machines):
        where = f"machines[{machine.name}]"
        if machine.name in seen:
            lines.append(f"machines: machine name {machine.name!r} is used twice")
        seen.add(machine.name)
        if machine.driver not in drivers.available():
            allowed = ", ".join(drivers.available())
            lines.append(f"{where}.driver: unknown driver {machine.driver!r}; allowed: {allowed}")
            continue
        driver = drivers.load(machine.driver)
        try:
            options = driver.Options.model_validate(machine.options if machine.options is not None else {})
        except ValidationError as err:
            lines += [_describe(e, ("machines", index, "options"), machines) for e in err.errors()]
            continue
        if machine.state == "stopped" and not driver.supports_power:
            lines.append(f"{where}.state: the {machine.driver} driver cannot stop a machine")
        if machine.engine.port == driver.ssh_port(options):
            lines.append(f"{where}.engine.port: {machine.engine.port} is the machine's SSH port; the Docker engine "
                         "needs a port of its own (docker-machine's 2376)")  # fmt: skip
        validated.append(machine.model_copy(update={"options": options}))
    lines += _swarm_lines(config, validated)
    if lines:
        raise ConfigError(_HEADER + "\n  ".join(lines))
    return config.model_copy(update={"machines": validated})


def preflight(config: StackConfig) -> None:
    """Each driver's host prerequisites (VirtualBox and its API, cloud plugins…), once per driver in use."""
    lines = []
    for name in sorted({m.driver for m in config.machines}):
        try:
            drivers.load(name).check_host([m for m in config.machines if m.driver == name])
        except ConfigError as err:
            lines += [line.strip() for line in str(err).removeprefix(_HEADER).splitlines() if line.strip()]
    if lines:
        raise ConfigError(_HEADER + "\n  ".join(lines))


def load(raw_machines: str | None, ca_rotation: str | None = None, raw_swarm: str | None = None) -> StackConfig:
    """The program's entry point: the ``machines`` (and ``swarm``) config values as Pulumi hands them over (JSON
    text), checked."""
    if raw_machines is None:
        raise ConfigError(f"machines: no machine is declared; {EXAMPLE}")
    try:
        value = json.loads(raw_machines)
    except ValueError:
        shown = raw_machines if len(raw_machines) <= 40 else raw_machines[:37] + "..."
        raise ConfigError(f"machines: a list of machines is wanted, got the string {shown!r}; {EXAMPLE}") from None
    if not isinstance(value, list):
        kinds = {dict: "a single mapping", str: "a string", bool: "true/false", type(None): "null"}
        kind = kinds.get(type(value), "a number")
        raise ConfigError(f"machines: a list of machines is wanted, got {kind}; {EXAMPLE}")
    swarm = None
    if raw_swarm is not None:
        try:
            swarm = json.loads(raw_swarm)
        except ValueError:
            raise ConfigError(f"swarm: a mapping is wanted, e.g. {SWARM_EXAMPLE}") from None
    config = parse(value, ca_rotation or "", swarm)
    preflight(config)
    return config


def machines_of(raw: Any) -> dict[str, MachineConfig]:
    """The machines of a ``machines`` value (a list, or its JSON text) by name, each validated on its own with its
    driver's options; a bad entry is left out (the program itself refuses it, naming the field)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    found = {}
    for entry in raw if isinstance(raw, list) else []:
        try:
            (machine,) = parse([entry]).machines
        except ConfigError:
            continue
        found[machine.name] = machine
    return found


def read_stack_file(path: str) -> dict[str, Any]:
    """A stack file's ``config`` section (``{}`` when it cannot be read)."""
    import yaml

    try:
        with open(path) as f:
            return (yaml.safe_load(f) or {}).get("config") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def missing_plugins(stack_file: str) -> list[tuple[str, str]]:
    """The plugins that the drivers of a stack file's machines need and that are not installed."""
    config = read_stack_file(stack_file)
    raw = next((v for k, v in config.items() if k.endswith(":machines")), None)
    names = {m.get("driver", DEFAULT_DRIVER) for m in raw or [] if isinstance(m, dict)}
    wanted = {drivers.load(n).plugin for n in names if n in drivers.available()}
    return sorted(p for p in wanted if p and not plugin_installed(*p))


if __name__ == "__main__" and sys.argv[1:2] == ["plugins"]:
    for name, version in missing_plugins(sys.argv[2]):
        print(name, version)
