"""The stack configuration's models: strict, frozen, and free of any driver (drivers import this, not the reverse).

Stack config (``stacks/Pulumi.<stack>.yaml``)::

    docker-machine:machines:
      - name: default
        driver: qemu
        options: {cpus: 2, memory: 2048}
        engine: {install: packages, labels: [env=dev]}
        tls_san: [docker.example.test]

Strict means what the YAML says is what is used: ``true`` is not a number, ``"2"`` is not an integer.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from components import dockerd

# docker-machine's rule (libmachine/host.ValidateHostName).
MACHINE_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$"
MACHINE_NAME_RE = re.compile(MACHINE_NAME_PATTERN)
# The driver of a machine that names none: a local QEMU VM, no account needed.
DEFAULT_DRIVER = "qemu"
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
DNS_NAME_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
URL_RE = re.compile(r"^https?://[^\s]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ConfigError(ValueError):
    """A stack configuration error, worded for the user: one line per problem, each naming its field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, str_max_length=16384)
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
            if isinstance(item, str) and _CONTROL_RE.search(item):
                raise ValueError(f"{item[:60]!r} contains a control character (e.g. a newline), which is not allowed")
        return value


def address_or_dns_name(value: str, *, wildcard: bool = True) -> str:
    """An IP address or a DNS name; a name of digits only (``999.1.1.1``) is a bad IP address, not a name."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", value) or value.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r} is not a valid IP address (and a DNS name cannot end in a number)")
    if not DNS_NAME_RE.match(value) or len(value) > 253 or (value.startswith("*") and not wildcard):
        raise ValueError(f"{value!r} is neither an IP address nor a DNS name")
    return value


def _key_value_list(value: Any, what: str) -> list[str]:
    """Accept docker-machine's repeated ``k=v`` flags as a list, or a mapping of strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            if not isinstance(v, str):
                raise ValueError(f"{what} {k!r}: the value must be a string (quote it in YAML), got {v!r}")
            pairs.append(f"{k}={v}")
        value = pairs
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise ValueError(f"each {what} must look like key=value, got {item!r}")
        return list(value)
    raise ValueError(f"{what}s must be a list of key=value strings or a mapping")


@dataclass(frozen=True)
class EngineField:
    """What an engine option is to every reader: the dockerd flag it becomes (provisioning writes it; None: the option
    is not a plain flag), the CLI flag of ``scripts/machine create`` (docker-machine's ``--engine-…``), its key in
    docker-machine's host record (``inspect``; "" keeps it out) and its name in the words of a preview. What is left
    out follows from the option's name."""

    dockerd: str | None = None
    cli: str | None = None
    record: str | None = None
    words: str | None = None
    # An environment variable that gives the option when its CLI flag is not given.
    env: str | None = None

    def named(self, option: str) -> EngineField:
        return EngineField(
            self.dockerd,
            self.cli or "engine-" + option.replace("_", "-"),
            "".join(part.capitalize() for part in option.split("_")) if self.record is None else self.record,
            self.words or option.replace("_", " "),
            self.env,
        )


def engine(default: Any, what: EngineField, **field: Any) -> Any:
    """An ``EngineOptions`` field with its ``EngineField``: every reader derives from it (components/steps/
    provisioning.py, scripts/machinecli: create's flags, inspect's record, the preview's words)."""
    return Field(default, json_schema_extra={"engine": asdict(what)}, **field)


PROXY_URL_RE = re.compile(r"^https?://([^/@\s]+@)?[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?/?$")
REGISTRY_RE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.\-\[\]:]*$")


class ProxySettings(StrictModel):
    """Proxies for the daemon and the guest's package manager, instead of the host's."""

    http: str | None = None
    https: str | None = None
    no_proxy: str | None = Field(None, description="comma-separated hosts, domains and CIDRs reached directly")

    @field_validator("http", "https")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not PROXY_URL_RE.match(v):
            raise ValueError("must be a proxy URL such as http://proxy.example.test:3128 (user:password@ allowed)")
        return v


def _proxy_setting(v: Any) -> str | ProxySettings:
    """``auto``, ``none`` or the proxies themselves; one message whichever is wrong."""
    if v in ("auto", "none") or isinstance(v, ProxySettings):
        return v
    if not isinstance(v, dict):
        raise ValueError("must be auto, none or {http: URL, https: URL, no_proxy: HOSTS}")
    try:
        return ProxySettings.model_validate(v)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


class EngineOptions(StrictModel):
    """docker-machine's --engine-* flags."""

    install: Literal["script", "packages", "none"] = engine(
        "script", EngineField(record=""),
        description="script: download install_url and run it (docker-machine); packages: the distribution's "
        "packages; none: require Docker to be there.",
    )  # fmt: skip
    install_url: str = engine("https://get.docker.com",
                              EngineField(record="InstallURL", env="MACHINE_DOCKER_INSTALL_URL"))  # fmt: skip
    port: int = engine(2376, EngineField(record=""), ge=1, le=65535)
    storage_driver: str = engine("overlay2", EngineField("storage-driver"), pattern=r"^[a-z0-9-]+$")
    labels: list[str] = engine([], EngineField("label", "engine-label", words="engine labels"))
    insecure_registries: list[str] = engine([], EngineField("insecure-registry", "engine-insecure-registry",
                                                            "InsecureRegistry"))  # fmt: skip
    registry_mirrors: list[str] = engine([], EngineField("registry-mirror", "engine-registry-mirror",
                                                         "RegistryMirror"))  # fmt: skip
    opts: list[str] = engine([], EngineField(cli="engine-opt", record="ArbitraryFlags"),
                             description="flag=value → dockerd --flag=value (or a bare switch)")  # fmt: skip
    env: list[str] = engine([], EngineField(words="engine environment"))
    proxy: Annotated[Any, BeforeValidator(_proxy_setting)] = engine(
        "auto", EngineField(record="", words="proxies"),
        description="auto: the host's HTTP(S)_PROXY/NO_PROXY (a proxy on its loopback as the guest reaches it); none; "
        "or {http, https, no_proxy}",
    )  # fmt: skip
    registry_certs: dict[str, str] = engine(
        {}, EngineField(record="", words="registry CAs"),
        description="HOST[:PORT]: a CA file (PEM), installed as /etc/docker/certs.d/HOST[:PORT]/ca.crt; the user's "
        "~/.docker/certs.d/*/ca.crt are added",
    )  # fmt: skip

    @classmethod
    def fields(cls) -> dict[str, EngineField]:
        """Every option's EngineField, in declaration order, with what it leaves out named after the option."""
        found = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            found[name] = EngineField(**extra.get("engine", {})).named(name)
        return found

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
        if not isinstance(v, list):
            raise ValueError("must be a list of flag=value strings")
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"engine opt {item!r} must be a string such as log-level=debug")
        options = {f.dockerd: name for name, f in cls.fields().items() if f.dockerd}
        for item in v:
            flag = item.removeprefix("--").partition("=")[0]
            if flag in options:
                raise ValueError(f"{flag!r} cannot be set through engine.opts: set engine.{options[flag]}")
        return [dockerd.check_opt(item) for item in v]

    @field_validator("registry_certs", mode="before")
    @classmethod
    def _registry_certs(cls, v: Any) -> Any:
        if isinstance(v, str):  # scripts/machine create --engine-registry-certs HOST=FILE
            registry, _, path = v.partition("=")
            v = {registry: path}
        if isinstance(v, dict):
            for registry, path in v.items():
                if not isinstance(registry, str) or not REGISTRY_RE.match(registry) or ".." in registry:
                    raise ValueError(f"registry {registry!r} must be HOST or HOST:PORT")
                if not isinstance(path, str) or not os.path.isfile(os.path.expanduser(path)):
                    raise ValueError(f"{registry}: {path!r} is not a file on this host (a CA certificate, PEM)")
        return v

    @field_validator("install_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not URL_RE.match(v):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: list[str]) -> list[str]:
        for item in v:
            if not URL_RE.match(item):
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
    driver: str = Field(DEFAULT_DRIVER, pattern=r"^[a-z][a-z0-9_]*$")
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

    @field_validator("tls_san")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        return [address_or_dns_name(san) for san in v]


_INTERFACE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")


class SwarmConfig(StrictModel):
    """One swarm-mode cluster over the stack's machines (docker-machine's --swarm/--swarm-master, for today's
    Docker): ``docker-machine:swarm: {managers: [a], workers: [b, c]}``."""

    managers: list[str] = Field(description="machine names; the first one initialises the swarm")
    workers: list[str] = []
    # Per machine, the address or interface other nodes reach it at (docker's --advertise-addr); by default the
    # machine's private address where its driver gives one, else the address the Docker client dials.
    advertise: dict[str, str] = {}

    @field_validator("managers")
    @classmethod
    def _a_manager(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a swarm needs at least one manager (machine names)")
        return v

    @field_validator("advertise")
    @classmethod
    def _addresses(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            try:
                ipaddress.ip_address(value)
            except ValueError:
                if not _INTERFACE_RE.match(value):
                    raise ValueError(f"{name}: {value!r} is neither an IP address nor an interface name") from None
        return v

    @property
    def members(self) -> list[tuple[str, str]]:
        """(machine, role) of every member but the first manager, which initialises the swarm."""
        return [(m, "manager") for m in self.managers[1:]] + [(w, "worker") for w in self.workers]


class StackConfig(StrictModel):
    machines: list[MachineConfig] = Field(min_length=1)
    swarm: SwarmConfig | None = None
    # Changing it replaces the stack's CA and client certificate (regenerate-certs --client-certs).
    ca_rotation: str = ""
