"""Stack configuration: the machines a stack declares, validated before any resource exists.

Stack config (``stacks/Pulumi.<stack>.yaml``)::

    docker-machine:machines:
      - name: default
        driver: qemu
        options: {cpus: 2, memory: 2048}
        engine: {install: packages, labels: [env=dev]}
        tls_san: [docker.example.test]
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from components import drivers

# docker-machine's rule (libmachine/host.ValidateHostName).
MACHINE_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$"
_ENGINE_OPT_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]*(=.*)?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
DNS_NAME_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class ConfigError(ValueError):
    """A stack configuration error, worded for the user (field path + what is allowed)."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields that may span lines (keys); they are never put into scripts or unit files.
    MULTILINE: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        """Values end up in shell scripts and one-line systemd directives: no newlines or other controls."""
        if info.field_name in cls.MULTILINE:
            return value
        strings = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for item in strings:
            if isinstance(item, str) and any(ord(c) < 32 or ord(c) == 127 for c in item):
                raise ValueError(f"{item!r} contains a control character (e.g. a newline), which is not allowed")
        return value


def _key_value_list(value: Any, what: str) -> list[str]:
    """Accept docker-machine's repeated ``k=v`` flags as a list, or a mapping."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise ValueError(f"each {what} must look like key=value, got {item!r}")
        return list(value)
    raise ValueError(f"{what}s must be a list of key=value strings or a mapping")


class EngineOptions(StrictModel):
    """docker-machine's --engine-* flags."""

    install: Literal["script", "packages", "none"] = Field(
        "script",
        description="script: pipe install_url to sh (docker-machine); packages: the distro's "
        "packages (Debian: docker.io + apparmor); none: require Docker to be there.",
    )
    install_url: str = "https://get.docker.com"
    port: int = Field(2376, ge=1, le=65535)
    storage_driver: str = Field("overlay2", pattern=r"^[a-z0-9-]+$")
    labels: list[str] = []
    insecure_registries: list[str] = []
    registry_mirrors: list[str] = []
    opts: list[str] = Field([], description="flag=value → dockerd --flag=value (or bare flag)")
    env: list[str] = []

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> list[str]:
        return _key_value_list(v, "label")

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> list[str]:
        items = _key_value_list(v, "env entry")
        for item in items:
            if not _ENV_NAME_RE.match(item.split("=", 1)[0]):
                raise ValueError(f"{item.split('=', 1)[0]!r} is not a valid environment variable name")
        return items

    @field_validator("opts", mode="before")
    @classmethod
    def _opts(cls, v: Any) -> list[str]:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, dict):
            v = [k if val is None or val is True else f"{k}={val}" for k, val in v.items()]
        for item in v or []:
            if not isinstance(item, str) or not _ENGINE_OPT_RE.match(item.lstrip("-")):
                raise ValueError(f"engine opt {item!r} must look like flag=value or flag (e.g. log-level=debug)")
        return [item.lstrip("-") for item in v or []]

    @field_validator("install_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s]+$", v):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.match(r"^https?://[^\s]+$", item):
                raise ValueError(f"registry mirror {item!r} must be an http(s) URL")
        return v

    @field_validator("insecure_registries")
    @classmethod
    def _insecure(cls, v: list[str]) -> list[str]:
        for item in v:
            if "/" in item:  # a CIDR such as 10.0.0.0/8
                try:
                    ipaddress.ip_network(item, strict=True)
                except ValueError as err:
                    raise ValueError(f"insecure registry {item!r} is not a valid CIDR ({err})") from None
            elif not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", item):
                raise ValueError(f"insecure registry {item!r} must be host[:port] or a CIDR")
        return v


class MachineConfig(StrictModel):
    name: str = Field(pattern=MACHINE_NAME_PATTERN, max_length=63)
    driver: str = "qemu"
    options: Any = Field(None, description="driver options, validated by the driver's Options model")
    engine: EngineOptions = EngineOptions()
    tls_san: list[str] = []
    state: Literal["running", "stopped"] = Field(
        "running", description="desired power state (scripts/machine start/stop), for drivers that support it"
    )
    # Changing it issues a new server certificate (scripts/machine regenerate-certs).
    tls_rotation: str = ""
    # `up` makes/updates a docker context named after the machine where docker is on PATH (opt out: false).
    docker_context: bool = True

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        known = drivers.available()
        if v not in known:
            raise ValueError(f"unknown driver {v!r}; allowed: {', '.join(known)}")
        return v

    @field_validator("tls_san")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        for san in v:
            try:
                ipaddress.ip_address(san)
            except ValueError:
                if not DNS_NAME_RE.match(san):
                    raise ValueError(f"{san!r} is neither an IP address nor a DNS name") from None
        return v


class StackConfig(StrictModel):
    machines: list[MachineConfig] = Field(min_length=1)
    # Changing it replaces the stack's CA and client certificate (regenerate-certs --client-certs).
    ca_rotation: str = ""

    @model_validator(mode="after")
    def _unique(self) -> StackConfig:
        seen: set[str] = set()
        for machine in self.machines:
            if machine.name in seen:
                raise ValueError(f"machine name {machine.name!r} is used twice")
            seen.add(machine.name)
        return self


def _location(loc: tuple[Any, ...], machines: list[Any]) -> str:
    """Render a pydantic error location as the config path a user types, e.g. machines[default].engine.port."""
    parts: list[str] = []
    items = list(loc)
    if items[:1] == ["machines"] and len(items) > 1 and isinstance(items[1], int):
        index = items[1]
        name = machines[index].get("name") if index < len(machines) and isinstance(machines[index], dict) else None
        parts.append(f"machines[{name if name else index}]")
        items = items[2:]
    for item in items:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        elif item not in ("function-after", "function-before") and not str(item).startswith("function-"):
            parts.append(str(item))
    return ".".join(parts)


def _allowed_keys(loc: tuple[Any, ...], machines: list[Any]) -> list[str]:
    """The settings allowed where an unknown key was found."""
    model: type[BaseModel] = StackConfig
    if len(loc) >= 3 and loc[0] == "machines":
        model = MachineConfig
        section = loc[2:-1]
        if section == ("engine",):
            model = EngineOptions
        elif section == ("options",):
            raw = machines[loc[1]] if isinstance(loc[1], int) and loc[1] < len(machines) else {}
            model = drivers.load(raw.get("driver", "qemu")).Options
    return list(model.model_fields)


def _describe(e: dict[str, Any], prefix: tuple[Any, ...], machines: list[Any]) -> str:
    message = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        message = f"unknown setting; allowed: {', '.join(_allowed_keys(prefix + tuple(e['loc']), machines))}"
    elif e["type"] == "string_pattern_mismatch" and e["loc"][-1] == "name":
        message = (
            f"invalid machine name {e['input']!r}: allowed characters are 0-9a-zA-Z . - "
            "and it must start with a letter or digit"
        )
    elif e["type"] == "literal_error":
        message = f"{e['input']!r} is not allowed; {message[0].lower()}{message[1:]}"
    return f"{_location(prefix + tuple(e['loc']), machines) or 'machines'}: {message}"


def parse(raw: Any, ca_rotation: str = "") -> StackConfig:
    """Validate the raw ``machines`` config, driver options included.

    Raises ConfigError naming each bad field and what is allowed.
    """
    machines = raw if isinstance(raw, list) else []
    try:
        config = StackConfig.model_validate({"machines": raw, "ca_rotation": ca_rotation})
    except ValidationError as err:
        lines = [_describe(e, (), machines) for e in err.errors()]
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(lines)) from None
    validated, lines = [], []
    for index, machine in enumerate(config.machines):
        driver = drivers.load(machine.driver)
        try:
            options = driver.Options.model_validate(machine.options or {})
        except ValidationError as err:
            lines += [_describe(e, ("machines", index, "options"), machines) for e in err.errors()]
            continue
        if machine.state == "stopped" and not getattr(driver, "SUPPORTS_POWER", False):
            lines.append(f"machines[{machine.name}].state: the {machine.driver} driver cannot stop a machine")
        validated.append(machine.model_copy(update={"options": options}))
    if lines:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(lines))
    return config.model_copy(update={"machines": validated})
