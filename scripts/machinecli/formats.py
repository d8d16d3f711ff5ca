"""docker-machine's exact output formats (docs/cli.md), as pure functions."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from components.model import EngineOptions, MachineConfig

from .gotext import Template, TemplateError, go_duration, go_json, go_quote, tabwrite

ENV_KEYS = ("DOCKER_TLS_VERIFY", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_MACHINE_NAME")
SHELLS = ("bash", "fish", "powershell", "cmd", "tcsh", "emacs")

# Per shell, how docker-machine sets and unsets a variable (commands/env.go): (prefix, delimiter, suffix) each.
_FORMS = {
    "fish": (("set -gx ", ' "', '";\n'), ("set -e ", "", ";\n")),
    "powershell": (("$Env:", ' = "', '"\n'), ("Remove-Item Env:\\\\", "", "\n")),
    "cmd": (("SET ", "=", "\n"), ("SET ", "=", "\n")),
    "tcsh": (("setenv ", ' "', '";\n'), ("unsetenv ", "", ";\n")),
    "emacs": (('(setenv "', '" "', '")\n'), ('(setenv "', '" nil', ")\n")),
}
_FORM_DEFAULT = (("export ", '="', '"\n'), ("unset ", "", "\n"))


def detect_shell(explicit: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--shell``, else the basename of ``$SHELL``; None when neither names one.

    Unknown names get the bash form when rendered.
    """
    if explicit:
        return explicit
    shell = (os.environ if environ is None else environ).get("SHELL", "")
    return os.path.basename(shell) if shell else None


def command_line(argv0: str, args: list[str]) -> str:
    """The invoking command line as docker-machine prints it: argv[0] quoted when it has a space or backslash."""
    if " " in argv0 or "\\" in argv0:
        argv0 = f'"{argv0}"'
    return " ".join([argv0, *args])


def usage_hint(shell: str, command: str) -> str:
    comment = "#"
    if shell == "fish":
        cmd = f"eval ({command})"
    elif shell == "powershell":
        cmd = f"& {command} | Invoke-Expression"
    elif shell == "cmd":
        cmd = f"\t@FOR /f \"tokens=*\" %i IN ('{command}') DO @%i"
        comment = "REM"
    elif shell == "emacs":
        cmd = f'(with-temp-buffer (shell-command "{command}" (current-buffer)) (eval-buffer))'
        comment = ";;"
    elif shell == "tcsh":
        cmd = f"eval `{command}`"
        comment = ":"
    else:
        cmd = f"eval $({command})"
    return f"{comment} Run this command to configure your shell: \n{comment} {cmd}\n"


def no_proxy_from_env(environ: dict[str, str]) -> tuple[str, str]:
    """``no_proxy`` when set (non-empty), else ``NO_PROXY`` (docker-machine's findNoProxyFromEnv)."""
    value = environ.get("no_proxy", "")
    if value:
        return "no_proxy", value
    return "NO_PROXY", environ.get("NO_PROXY", "")


def env_output(
    shell: str,
    command: str,
    values: dict[str, str] | None,
    *,
    no_proxy: bool = False,
    ip: str = "",
    environ: dict[str, str] | None = None,
) -> str:
    """``env`` (``values`` = the machine's env) or ``env -u`` (``values`` None), byte for byte.

    With ``--no-proxy`` the machine's IP is appended to the proxy exclusions found in the environment
    unless already there (as a substring, like docker-machine); with ``-u --no-proxy`` docker-machine
    prints the variable followed by its current value — kept as it is.
    """
    environ = os.environ if environ is None else environ
    unset = values is None
    prefix, delimiter, suffix = _FORMS.get(shell, _FORM_DEFAULT)[1 if unset else 0]
    lines = []
    for key in ENV_KEYS:
        lines.append(f"{prefix}{key}{delimiter}{'' if unset else values[key]}{suffix}")
    if no_proxy:
        var, value = no_proxy_from_env(environ)
        if not unset:
            if not value:
                value = ip
            elif ip not in value:
                value = f"{value},{ip}"
        lines.append(f"{prefix}{var}{delimiter}{value}{suffix}")
    return "".join(lines) + usage_hint(shell, command)


def config_output(cert_path: str, url: str) -> str:
    """``config``: the docker client's TLS flags (commands/config.go), paths %q-quoted."""
    return (
        f"--tlsverify\n--tlscacert={go_quote(os.path.join(cert_path, 'ca.pem'))}\n"
        f"--tlscert={go_quote(os.path.join(cert_path, 'cert.pem'))}\n"
        f"--tlskey={go_quote(os.path.join(cert_path, 'key.pem'))}\n-H={url}\n"
    )


# --- ls ------------------------------------------------------------------------------------------------

LS_DEFAULT_FORMAT = (
    "table {{ .Name }}\t{{ .Active }}\t{{ .DriverName}}\t{{ .State }}\t{{ .URL }}\t{{ .Swarm }}\t"
    "{{ .DockerVersion }}\t{{ .Error}}"
)
LS_HEADERS = {
    "Name": "NAME",
    "Active": "ACTIVE",
    "ActiveHost": "ACTIVE_HOST",
    "ActiveSwarm": "ACTIVE_SWARM",
    "DriverName": "DRIVER",
    "State": "STATE",
    "URL": "URL",
    "Swarm": "SWARM",
    "DockerVersion": "DOCKER",
    "Error": "ERRORS",
    "ResponseTime": "RESPONSE",
    "SwarmOptions": "SWARM_OPTIONS",
    "EngineOptions": "ENGINE_OPTIONS",
    # Not docker-machine's: the stack a machine comes from.
    "Stack": "STACK",
}


@dataclass
class LsItem:
    name: str
    stack: str
    driver: str
    state: str  # Running | Stopped | Timeout | Error | ""
    url: str = ""
    docker_version: str = ""
    error: str = ""
    active_host: bool = False
    response_time: float = 0.0
    labels: tuple[str, ...] = ()
    # The swarm's first manager, and this machine's role in it ("" outside a swarm).
    swarm_master: str = ""
    swarm_role: str = ""
    # Host folders shared into the VM (local drivers): "PATH" or "PATH (read-only)".
    mounts: tuple[str, ...] = ()

    @property
    def swarm(self) -> str:
        """docker-machine's SWARM column: the master's name, with " (master)" on the master itself."""
        if not self.swarm_master:
            return ""
        return f"{self.swarm_master} (master)" if self.name == self.swarm_master else self.swarm_master

    @property
    def active(self) -> str:
        if self.state == "Timeout":
            return ""
        return "*" if self.active_host else "-"

    def fields(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Active": self.active,
            "ActiveHost": self.active_host,
            "ActiveSwarm": False,
            "DriverName": self.driver,
            "State": self.state,
            "URL": self.url,
            "Swarm": self.swarm,
            "DockerVersion": self.docker_version,
            "Error": self.error,
            "ResponseTime": go_duration(self.response_time),
            "SwarmOptions": None,
            "EngineOptions": {"Labels": list(self.labels)},
            "Stack": self.stack,
            "Mounts": list(self.mounts),
        }


def mounts_shown(details: dict[str, Any]) -> tuple[str, ...]:
    return tuple(m["path"] + ("" if m.get("writable", True) else " (read-only)") for m in details.get("mounts") or [])


def natural_key(name: str) -> tuple:
    """Natural, case-insensitive order: ``m2`` before ``m10``, ``Dev`` next to ``dev``."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != "")


def sort_items(items: list[LsItem]) -> list[LsItem]:
    return sorted(items, key=lambda i: (natural_key(i.name), i.name, i.stack))


def parse_ls_format(fmt: str) -> tuple[Template, bool]:
    """docker-machine's parseFormatToTemplate: a ``table`` prefix adds headers; ``\\t``/``\\n`` are honoured."""
    table = fmt.startswith("table")
    if table:
        fmt = fmt[len("table") :]
    fmt = fmt.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    try:
        return Template(fmt, strict=True), table
    except TemplateError as err:
        raise TemplateError(f"Template parsing error: {err}") from None


def ls_output(items: list[LsItem], fmt: str | None = None) -> str:
    """The table (or formatted rows) through a tabwriter: min width 5, padding 3, spaces."""
    template, table = parse_ls_format(fmt or LS_DEFAULT_FORMAT)
    text: list[str] = []
    if table:
        text.append(template.execute(LS_HEADERS) + "\n")
    for item in items:
        try:
            text.append(template.execute(item.fields()) + "\n")
        except TemplateError as err:
            raise TemplateError(f"Template parsing error: {err}") from None
    return tabwrite("".join(text))


class FilterError(ValueError):
    pass


@dataclass
class Filters:
    driver: list[str]
    state: list[str]
    name: list[re.Pattern]
    label: list[str]
    swarm: list[str]
    stack: list[str]

    @property
    def needs_state(self) -> bool:
        return bool(self.state)


def parse_filters(specs: list[str]) -> Filters:
    """``--filter key=value``, repeatable: OR within a key, AND across keys."""
    filters = Filters([], [], [], [], [], [])
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise FilterError("Unsupported filter syntax.")
        if key == "name":
            try:
                filters.name.append(re.compile(value))
            except re.error as err:
                raise FilterError(f"error parsing regexp: {err}: `{value}`") from None
        elif key in ("driver", "state", "label", "swarm", "stack"):
            getattr(filters, key).append(value)
        else:
            raise FilterError(f"Unsupported filter key '{key}'")
    return filters


def _label_match(labels: tuple[str, ...], wanted: list[str]) -> bool:
    merged = {}
    for label in labels:
        k, _, v = label.partition("=")
        merged[k] = v
    for want in wanted:
        k, sep, v = want.partition("=")
        if k in merged and (not sep or merged[k] == v):
            return True
    return False


def matches(item: LsItem, filters: Filters, with_state: bool = True) -> bool:
    if filters.driver and item.driver not in filters.driver:
        return False
    if filters.name and not any(p.search(item.name) for p in filters.name):
        return False
    if filters.label and not _label_match(item.labels, filters.label):
        return False
    if filters.swarm and item.swarm_master not in filters.swarm:
        return False
    if filters.stack and item.stack not in filters.stack:
        return False
    if with_state and filters.state and not any(s.lower() == item.state.lower() for s in filters.state):
        return False
    return True


# --- inspect -------------------------------------------------------------------------------------------


# docker-machine's EngineOptions record, in its order: the keys no engine option sets hold these values.
_ENGINE_RECORD = {
    "ArbitraryFlags": None, "Dns": None, "GraphDir": "", "Env": None, "Ipv6": False, "InsecureRegistry": None,
    "Labels": None, "LogLevel": "", "StorageDriver": None, "SelinuxEnabled": False, "TlsVerify": True,
    "RegistryMirror": None, "InstallURL": None,
}  # fmt: skip


def engine_record(engine: EngineOptions) -> dict[str, Any]:
    """docker-machine's EngineOptions of a machine: each engine option under its record key (components/model.py
    EngineField.record), docker-machine's keys first in its order, the project's own options after them."""
    values = {f.record: getattr(engine, name) for name, f in type(engine).fields().items() if f.record}
    record = {key: values.pop(key, constant) for key, constant in _ENGINE_RECORD.items()}
    return {**record, **values}


def host_record(
    name: str,
    stack: str,
    info: dict[str, Any],
    machine: MachineConfig | None,
    store_path: str,
) -> dict[str, Any]:
    """The docker-machine host record (its config.json) of a machine, from stack outputs and its configuration.

    Keys and their order are docker-machine's so that ``--format '{{.Driver.IPAddress}}'`` works as it
    did; ``Stack`` and ``Outputs`` (the machine's stack output) are ours.
    """
    engine = machine.engine if machine is not None else EngineOptions()
    options = machine.options.model_dump(mode="json") if machine is not None and machine.options is not None else {}
    ssh = info.get("ssh") or {}
    cert_path = os.path.join(store_path, "machines", name)  # this user's copy, wherever `up` ran
    driver = {
        "IPAddress": info.get("ip", ""),
        "MachineName": name,
        "SSHUser": ssh.get("user", ""),
        "SSHPort": ssh.get("port", 0),
        "SSHKeyPath": "",
        "StorePath": store_path,
        "SwarmMaster": False,
        "SwarmHost": "",
        "SwarmDiscovery": "",
        "SSHHost": ssh.get("host", ""),
        "EnginePort": info.get("port", 0),
        "Options": options,
    }
    return {
        "ConfigVersion": 3,
        "Driver": driver,
        "DriverName": info.get("driver", ""),
        "HostOptions": {
            "Driver": "",
            "Memory": 0,
            "Disk": 0,
            "EngineOptions": engine_record(engine),
            "SwarmOptions": {
                "IsSwarm": False,
                "Address": "",
                "Discovery": "",
                "Agent": False,
                "Master": False,
                "Host": "",
                "Image": "",
                "Strategy": "",
                "Heartbeat": 0,
                "Overcommit": 0,
                "ArbitraryFlags": [],
                "ArbitraryJoinFlags": [],
                "Env": None,
                "IsExperimental": False,
            },
            "AuthOptions": {
                "CertDir": cert_path,
                "CaCertPath": os.path.join(cert_path, "ca.pem"),
                "CaPrivateKeyPath": "",
                "CaCertRemotePath": "",
                "ServerCertPath": "",
                "ServerKeyPath": "",
                "ClientKeyPath": os.path.join(cert_path, "key.pem"),
                "ServerCertRemotePath": "",
                "ServerKeyRemotePath": "",
                "ClientCertPath": os.path.join(cert_path, "cert.pem"),
                "ServerCertSANs": list(info.get("serverCertSans") or []),
                "StorePath": cert_path,
            },
        },
        "Name": name,
        "Stack": stack,
        "Outputs": info,
    }


def inspect_output(record: dict[str, Any], fmt: str | None = None) -> str:
    """Pretty JSON (4 spaces, docker-machine's key order), or ``--format`` against the JSON round-trip."""
    if not fmt:
        return go_json(record, indent="    ", sort_keys=False) + "\n"
    try:
        template = Template(fmt, strict=False, json_numbers=True)
    except TemplateError as err:
        raise TemplateError(f"template parsing error: {err}") from None
    return template.execute(json.loads(go_json(record))) + "\n"
