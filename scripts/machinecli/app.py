"""The ``scripts/machine`` commands (docker-machine.md §1), over the project's stacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from . import formats, probe, remote, stacks
from .formats import FilterError, LsItem
from .gotext import TemplateError
from .stacks import Machine, MachineError, Registry

VERSION = "0.1.0"
MACHINE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$")
# The command line as typed (scripts/machine passes its $0 in DMP_ARGV0); tests set it.
ARGV: list[str] = [os.environ.get("DMP_ARGV0", "machine"), *sys.argv[1:]]
# Where the CLI's TLS check, ping waits and SSH checks give up (seconds).
TLS_CHECK_TIMEOUT = 20.0
DOCKER_WAIT = 300.0
SSH_CHECK_TIMEOUT = 10.0
POLL = 2.0

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="docker-machine's commands over this project's Pulumi stacks (machines come from stack outputs).",
)
GLOBAL: dict[str, Any] = {"stack": None}


@app.callback()
def main_options(
    stack: Annotated[
        str | None,
        typer.Option("--stack", "-s", envvar="MACHINE_STACK", help="Only use machines of this stack (all commands)."),
    ] = None,
) -> None:
    GLOBAL["stack"] = stack


StackOpt = Annotated[str | None, typer.Option("--stack", "-s", help="Only look in this stack.")]
Names = Annotated[list[str] | None, typer.Argument(help="Machine names (none: the machine named default).")]
Name = Annotated[str | None, typer.Argument(help="Machine name (none: the machine named default).", show_default=False)]


def argv0() -> str:
    return ARGV[0]


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def info(text: str) -> None:
    out(text + "\n")


def warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")


def fail(message: str) -> typer.Exit:
    message = str(message).rstrip("\n")
    sys.stderr.write(message + "\n" if message.startswith("Error") else f"Error: {message}\n")
    return typer.Exit(1)


def run(body: Callable[[], int | None]) -> None:
    """Run a command body: user errors become ``Error: …`` on stderr and exit status 1."""
    try:
        code = body()
    except (MachineError, FilterError, TemplateError) as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def registry(stack: str | None) -> Registry:
    return Registry(stack or GLOBAL["stack"])


def confirm(message: str) -> bool:
    """docker-machine's confirmInput: ``<message> (y/n): ``, yes when the answer starts with y."""
    out(f"{message} (y/n): ")
    answer = sys.stdin.readline()
    if not answer:
        raise MachineError("no answer on stdin (use -f to skip the prompt)")
    return answer.strip().lower().startswith("y")


def not_running(machine: Machine) -> MachineError:
    return MachineError(f'Host "{machine.name}" is not running')


def ssh_reachable(machine: Machine, timeout: float = SSH_CHECK_TIMEOUT) -> str:
    return probe.tcp_state(machine.ssh.get("host", ""), machine.ssh.get("port", 22), timeout)


def require_docker(machine: Machine, prefix: str = "") -> None:
    """The TLS check of ``env``/``config`` (docker-machine.md §4): one clear line per failure."""
    try:
        probe.check_tls(machine, TLS_CHECK_TIMEOUT)
        return
    except probe.TlsCheckError as err:
        if err.kind == "cert":
            host, port = machine.docker_host
            raise MachineError(
                f"{prefix}Error checking and/or regenerating the certs: There was an error validating certificates "
                f'for host "{host}:{port}": {err}\n'
                f"You can attempt to regenerate them using '{argv0()} regenerate-certs {machine.name}'.\n"
                "Be advised that this will trigger a Docker daemon restart which might stop running containers."
            ) from None
        reach = ssh_reachable(machine)
        if reach == "refused":
            raise MachineError(f"{prefix}Host is not running") from None
        if reach == "timeout":
            raise MachineError(f'{prefix}Host "{machine.name}" is unreachable ({machine.ssh.get("host")})') from None
        raise MachineError(f"{prefix}Docker on {machine.url} does not answer: {err}") from None


# --- ls, status, active ---------------------------------------------------------------------------------


def _labels(reg: Registry, machines: list[Machine]) -> dict[tuple[str, str], tuple[str, ...]]:
    labels: dict[tuple[str, str], tuple[str, ...]] = {}
    for stack in {m.stack for m in machines}:
        try:
            for entry in stacks.get_machines_config(stack):
                if isinstance(entry, dict):
                    engine = entry.get("engine") or {}
                    raw = engine.get("labels") or []
                    items = [f"{k}={v}" for k, v in raw.items()] if isinstance(raw, dict) else list(raw)
                    labels[(stack, entry.get("name", ""))] = tuple(items)
        except MachineError as err:
            warn(f'stack "{stack}": {err}')
    return labels


def ls_items(machines: list[Machine], timeout: float) -> list[LsItem]:
    docker_host = os.environ.get("DOCKER_HOST", "")
    items = []
    for machine, result in zip(machines, probe.probe_all(machines, timeout), strict=True):
        running = result.state == "Running"
        version = "" if result.state in ("Timeout", "Error") else "Unknown"
        if running and result.docker_version:
            version = f"v{result.docker_version}"
        items.append(
            LsItem(
                name=machine.name,
                stack=machine.stack,
                driver=machine.driver,
                state=result.state,
                url=machine.url if running else "",
                docker_version=version,
                error=result.error,
                active_host=running and machine.url == docker_host,
                response_time=result.response_time,
            )
        )
    return items


@app.command("ls")
def ls(
    stack: StackOpt = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="driver=, state=, name= (regex), label=k=v, stack=; repeatable (AND across keys)."
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="Go template, e.g. 'table {{.Name}}\\t{{.URL}}'.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the names.")] = False,
    timeout: Annotated[int, typer.Option("--timeout", "-t", help="Seconds to wait for each host.")] = 10,
) -> None:
    """List machines (NAME ACTIVE DRIVER STATE URL SWARM DOCKER ERRORS), hosts queried in parallel."""

    def body() -> None:
        filters = formats.parse_filters(filter_ or [])
        if fmt:
            formats.parse_ls_format(fmt)  # a bad template fails before any host is queried
        reg = registry(stack)
        machines = reg.machines()
        for w in reg.warnings:
            warn(w)
        labels = _labels(reg, machines) if filters.label else {}
        candidates = [LsItem(m.name, m.stack, m.driver, "", labels=labels.get((m.stack, m.name), ())) for m in machines]
        keep = [formats.matches(i, filters, with_state=False) for i in candidates]
        machines = [m for m, k in zip(machines, keep, strict=True) if k]
        if quiet and not filters.needs_state:
            for item in formats.sort_items([c for c, k in zip(candidates, keep, strict=True) if k]):
                info(item.name)
            return
        items = ls_items(machines, timeout)
        for item in items:
            item.labels = labels.get((item.stack, item.name), ())
        items = formats.sort_items([i for i in items if formats.matches(i, filters)])
        if quiet:
            for item in items:
                info(item.name)
            return
        out(formats.ls_output(items, fmt))

    run(body)


@app.command()
def status(name: Name = None, stack: StackOpt = None) -> None:
    """Print a machine's state, live: Running, Stopped or Timeout."""

    def body() -> None:
        (machine,) = registry(stack).resolve([name] if name else None)
        info(probe.probe(machine, 10).state)

    run(body)


@app.command()
def active(
    stack: StackOpt = None,
    timeout: Annotated[int, typer.Option("--timeout", "-t", help="Seconds to wait for each host.")] = 10,
) -> None:
    """Print the machine DOCKER_HOST points at (when it is running)."""

    def body() -> None:
        docker_host = os.environ.get("DOCKER_HOST", "")
        machines = [m for m in registry(stack).machines() if docker_host and m.url == docker_host]
        items = formats.sort_items(ls_items(machines, timeout))
        for item in items:
            if item.active_host:
                info(item.name)
                return
        if any(i.state == "Timeout" for i in items):
            raise MachineError("Error getting active host: timeout")
        raise MachineError("No active host found")

    run(body)


# --- env, config, ip, url, inspect, version -------------------------------------------------------------


@app.command()
def env(
    name: Name = None,
    stack: StackOpt = None,
    shell: Annotated[
        str | None, typer.Option("--shell", help="bash (default form), fish, powershell, cmd, tcsh, emacs.")
    ] = None,
    unset: Annotated[bool, typer.Option("--unset", "-u", help="Print the commands that unset the variables.")] = False,
    no_proxy: Annotated[bool, typer.Option("--no-proxy", help="Add the machine's IP to NO_PROXY.")] = False,
    swarm: Annotated[
        bool, typer.Option("--swarm", help="Not supported: there is no legacy Swarm.", hidden=True)
    ] = False,
) -> None:
    """Print the shell commands that point the docker client at a machine (eval them)."""

    def body() -> None:
        if swarm:
            raise MachineError("--swarm is not supported: machines have no legacy Swarm")
        command = formats.command_line(argv0(), ARGV[1:])
        values, ip = None, ""
        if unset:
            if name:
                raise MachineError("Expected no machine name when the -u flag is present")
        else:
            (machine,) = registry(stack).resolve([name] if name else None)
            require_docker(machine, "Error checking TLS connection: ")
            machine.write_client_certs()
            values, ip = {k: str(machine.env.get(k, "")) for k in formats.ENV_KEYS}, machine.ip
        chosen = formats.detect_shell(shell)
        if chosen is None:
            # docker-machine failed here; CI jobs and cron run without $SHELL and eval in sh, so print that form.
            warn("$SHELL is not set; printing sh/bash syntax (another shell: --shell " + "|".join(formats.SHELLS) + ")")
            chosen = "bash"
        out(formats.env_output(chosen, command, values, no_proxy=no_proxy, ip=ip))

    run(body)


@app.command()
def config(name: Name = None, stack: StackOpt = None) -> None:
    """Print the docker client's TLS flags for a machine: docker $(machine config NAME) ps."""

    def body() -> None:
        (machine,) = registry(stack).resolve([name] if name else None)
        require_docker(machine, "Error checking TLS connection: ")
        machine.write_client_certs()
        out(formats.config_output(machine.cert_path, machine.url))

    run(body)


@app.command()
def ip(names: Names = None, stack: StackOpt = None) -> None:
    """Print machines' IP addresses (from the stack outputs)."""

    def body() -> None:
        for machine in registry(stack).resolve(names):
            info(machine.ip)

    run(body)


@app.command()
def url(name: Name = None, stack: StackOpt = None) -> None:
    """Print a machine's Docker URL (from the stack outputs)."""

    def body() -> None:
        (machine,) = registry(stack).resolve([name] if name else None)
        info(machine.url)

    run(body)


@app.command()
def inspect(
    name: Name = None,
    stack: StackOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="Go template, e.g. '{{.Driver.IPAddress}}'.")
    ] = None,
) -> None:
    """Print a machine's docker-machine host record as JSON (with its stack outputs)."""

    def body() -> None:
        (machine,) = registry(stack).resolve([name] if name else None)
        try:
            entries = stacks.get_machines_config(machine.stack)
        except MachineError as err:
            warn(str(err))
            entries = []
        entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == machine.name), None)
        record = formats.host_record(machine.name, machine.stack, machine.info, entry, stacks.store_path())
        out(formats.inspect_output(record, fmt))

    run(body)


def _git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=stacks.ROOT, capture_output=True, text=True, timeout=5
        )
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def remote_version(machine: Machine) -> str:
    import http.client
    import json
    import ssl

    try:
        status_code, body = probe.docker_get(machine, "/version", TLS_CHECK_TIMEOUT)
        if status_code == 200:
            return json.loads(body).get("Version", "")
        error = f"HTTP {status_code}"
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as err:
        error = probe.describe(err)
    if ssh_reachable(machine) == "refused":
        raise not_running(machine)
    raise MachineError(f"Unable to query docker version: {error}")


@app.command()
def version(name: Name = None, stack: StackOpt = None) -> None:
    """Without a name: this tool's version. With one: the machine's Docker Engine version (live)."""

    def body() -> None:
        if not name:
            info(f"{os.path.basename(argv0())} version {VERSION}, build {_git_revision()}")
            return
        (machine,) = registry(stack).resolve([name])
        info(remote_version(machine))

    run(body)


# --- ssh, scp -------------------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def ssh(
    name: Name = None,
    command: Annotated[list[str] | None, typer.Argument(help="Command to run (none: a login shell).")] = None,
    stack: StackOpt = None,
) -> None:
    """Log into a machine, or run a command on it: ssh [--stack S] NAME [command...]."""

    def body() -> int:
        (machine,) = registry(stack).resolve([name] if name else None)
        if ssh_reachable(machine) != "open":
            raise MachineError(f'Cannot run SSH command: Host "{machine.name}" is not running')
        with remote.key_files([machine]) as keys:
            argv = remote.ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], list(command or []))
            return remote.run_attached(argv)

    run(body)


@app.command()
def scp(
    source: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    target: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories recursively.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress meter.")] = False,
    stack: StackOpt = None,
) -> None:
    """Copy files between this host and a machine: scp [-r] [[machine:]path] [[machine:]path]."""

    def body() -> int:
        src, dst = remote.parse_scp_arg(source), remote.parse_scp_arg(target)
        names = {p.machine for p in (src, dst) if p.machine}
        if len(names) > 1:
            raise MachineError("copying between two machines is not supported: copy through a local path")
        if not names:
            return remote.run_attached(["cp", *(["-r"] if recursive else []), src.path, dst.path])
        (machine,) = registry(stack).resolve(list(names))
        if ssh_reachable(machine) != "open":
            raise MachineError(f'Cannot run SSH command: Host "{machine.name}" is not running')
        with remote.key_files([machine]) as keys:
            argv = remote.scp_argv(src, dst, machine, keys[f"{machine.stack}/{machine.name}"], recursive, quiet)
            return remote.run_attached(argv)

    run(body)


def ssh_run(machine: Machine, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run a script as root on the machine (on stdin, like provisioning); its output is captured."""
    from components.provisioning import AS_ROOT

    with remote.key_files([machine]) as keys:
        argv = remote.ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], [AS_ROOT])
        return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)


# --- create, rm -----------------------------------------------------------------------------------------


def _driver_module(driver: str):
    from components import drivers

    try:
        return drivers.load(driver)
    except ValueError as err:
        raise MachineError(str(err)) from None


def _typed(value: str) -> Any:
    """How ``pulumi config set --path`` will store it: true/false → bool, integers → numbers."""
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def driver_options(driver: str, extra: list[str]) -> dict[str, Any]:
    """``--<driver>-<option> value`` flags (docker-machine's driver flags) from the driver's Options model."""
    module = _driver_module(driver)
    fields = module.Options.model_fields
    flags = {f"--{driver}-{name.replace('_', '-')}": name for name in fields}
    options: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        flag, eq, value = arg.partition("=")
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
            options.setdefault(field, []).append(_typed(value))
        else:
            options[field] = _typed(value)
        i += 1
    return options


def _create_stack(reg: Registry) -> str:
    if reg.selected:
        return reg.selected
    try:
        current = reg.current_stack()
        listed = reg.stacks()
    except MachineError:
        current, listed = None, []
    if current:
        return current.name
    if not listed:
        return "local"
    raise MachineError("several stacks and none selected: choose one with --stack")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The machine's name.")],
    driver: Annotated[
        str, typer.Option("--driver", "-d", envvar="MACHINE_DRIVER", help="Driver to create it with.")
    ] = "qemu",
    engine_install: Annotated[str | None, typer.Option("--engine-install", help="script | packages | none.")] = None,
    engine_install_url: Annotated[
        str | None,
        typer.Option("--engine-install-url", envvar="MACHINE_DOCKER_INSTALL_URL", help="Install script URL."),
    ] = None,
    engine_opt: Annotated[
        list[str] | None, typer.Option("--engine-opt", help="flag=value for dockerd (repeatable).")
    ] = None,
    engine_insecure_registry: Annotated[list[str] | None, typer.Option("--engine-insecure-registry")] = None,
    engine_registry_mirror: Annotated[list[str] | None, typer.Option("--engine-registry-mirror")] = None,
    engine_label: Annotated[list[str] | None, typer.Option("--engine-label", help="k=v (repeatable).")] = None,
    engine_storage_driver: Annotated[str | None, typer.Option("--engine-storage-driver")] = None,
    engine_env: Annotated[
        list[str] | None, typer.Option("--engine-env", help="K=V in the daemon's environment.")
    ] = None,
    engine_port: Annotated[int | None, typer.Option("--engine-port")] = None,
    tls_san: Annotated[
        list[str] | None, typer.Option("--tls-san", help="Extra server-certificate SANs (repeatable).")
    ] = None,
    stack: StackOpt = None,
) -> None:
    """Add a machine to a stack's config and `up` it (targeted). Driver flags: --<driver>-<option> VALUE."""

    def body() -> None:
        if not MACHINE_NAME_RE.match(name):
            raise MachineError(
                "Error creating machine: Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -"
            )
        reg = registry(stack)
        target = _create_stack(reg)
        engine: dict[str, Any] = {}
        for key, value in (
            ("install", engine_install), ("install_url", engine_install_url), ("port", engine_port),
            ("storage_driver", engine_storage_driver), ("opts", engine_opt), ("labels", engine_label),
            ("insecure_registries", engine_insecure_registry), ("registry_mirrors", engine_registry_mirror),
            ("env", engine_env),
        ):  # fmt: skip
            if value:
                engine[key] = value
        machine: dict[str, Any] = {"name": name, "driver": driver}
        options = driver_options(driver, list(ctx.args))
        if options:
            machine["options"] = options
        if engine:
            machine["engine"] = engine
        if tls_san:
            machine["tls_san"] = list(tls_san)
        from components import config as stack_config

        try:
            stack_config.parse([machine])
        except stack_config.ConfigError as err:
            raise MachineError(f"Error creating machine: {err}") from None
        found = next((s for s in _safe_stacks(reg) if target in (s.name, s.short)), None)
        if found:
            if any(isinstance(e, dict) and e.get("name") == name for e in stacks.get_machines_config(target)):
                raise MachineError(f'Docker machine "{name}" already exists')
        else:
            stacks.ensure_stack(target)
        has_resources = bool(found and found.resource_count)
        info("Creating machine...")
        stacks.add_machine_config(target, machine)
        try:
            targets = [stacks.MachineResources(stacks.component_urn(target, name), [])] if has_resources else None
            stacks.up(target, targets, title=f'Creating "{name}"')
        except MachineError as err:
            raise MachineError(
                f"Error creating machine: {err}\n"
                f'The machine stays in the config of stack "{target}"; remove it with: {argv0()} rm -f {name}'
            ) from None
        info("Docker is up and running!")
        info(
            "To see how to connect your Docker Client to the Docker Engine running on this virtual machine, "
            f"run: {argv0()} env {name}"
        )

    run(body)


def _safe_stacks(reg: Registry) -> list[stacks.StackInfo]:
    try:
        return reg.stacks()
    except MachineError:
        return []


def _forget_local(machine: Machine) -> None:
    """What a removed machine leaves on this host: its cert copies and the docker context we made."""
    import shutil

    from components import dockercontext

    name = dockercontext.context_name(machine.name)
    if dockercontext.docker_path() and dockercontext.description_of(name) == dockercontext.DESCRIPTION.format(
        machine=machine.name
    ):
        try:
            dockercontext.remove(name)
        except dockercontext.DockerContextError as err:
            warn(str(err))
    shutil.rmtree(machine.cert_path, ignore_errors=True)


@app.command()
def rm(
    names: Names = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Remove it from the stack even if deleting fails.")
    ] = False,
    yes: Annotated[bool, typer.Option("-y", help="Assume yes: do not prompt.")] = False,
    stack: StackOpt = None,
) -> None:
    """Delete machines (targeted `up` after removing them from the stack config)."""

    def body() -> int:
        if not names:
            raise MachineError("Error: Expected to get one or more machine names as arguments")
        reg = registry(stack)
        errors: list[str] = []
        machines: list[Machine] = []
        for n in names:
            try:
                machines.append(reg.find(n))
            except MachineError as err:
                errors.append(f'Error removing host "{n}": {err}')
        info(f"About to remove {', '.join(names)}")
        info("WARNING: This action will delete both local reference and remote instance.")
        if not (yes or force) and not confirm("Are you sure?"):
            return 0
        for stack_name in sorted({m.stack for m in machines}):
            group = [m for m in machines if m.stack == stack_name]
            errors += _remove_from_stack(stack_name, group, force)
        for e in errors:
            sys.stderr.write(e + "\n")
        return 1 if errors else 0

    run(body)


def _remove_from_stack(stack_name: str, group: list[Machine], force: bool) -> list[str]:
    snapshot = stacks.ConfigSnapshot(stack_name)
    resources = stacks.stack_resources(stack_name)
    parts = [stacks.machine_resources(stack_name, m.name, resources) for m in group]
    configured = [e.get("name") for e in stacks.get_machines_config(stack_name) if isinstance(e, dict)]
    remaining = [n for n in configured if n not in {m.name for m in group}]
    try:
        for m in group:
            if m.name in configured:
                stacks.remove_machine_config(stack_name, m.name)
        title = "Removing " + ", ".join(f'"{m.name}"' for m in group)
        if remaining:
            stacks.up(stack_name, parts, title=title)
        else:
            stacks.destroy(stack_name, title=title)
    except MachineError as err:
        if not force:
            snapshot.restore()
            return [f'Error removing host "{m.name}": {err}' for m in group]
        for part in parts:
            try:
                stacks.forget(stack_name, part)
            except MachineError as forget_error:
                warn(str(forget_error))
        warn(f"deleting failed, the machines were removed from stack {stack_name} anyway (-f): {err}")
    for m in group:
        _forget_local(m)
        info(f"Successfully removed {m.name}")
    return []


# --- power: start, stop, restart, kill ------------------------------------------------------------------


def supports_power(machine: Machine) -> bool:
    return bool(getattr(_driver_module(machine.driver), "SUPPORTS_POWER", False))


def _set_power(machines: list[Machine], state: str, title: str) -> None:
    """Desired power state in the stack config, then a targeted, refreshed ``up`` per stack."""
    for stack_name in sorted({m.stack for m in machines}):
        group = [m for m in machines if m.stack == stack_name]
        for m in group:
            stacks.set_machine_setting(stack_name, m.name, "state", state)
        resources = stacks.stack_resources(stack_name)
        parts = [stacks.machine_resources(stack_name, m.name, resources) for m in group]
        stacks.up(stack_name, parts, refresh=True, title=title)


def wait_for_docker(machines: list[Machine]) -> None:
    """After a start: Docker answers over TLS at the (possibly new) address in the stack outputs."""
    for m in machines:
        fresh = Registry(m.stack).find(m.name)
        deadline = time.monotonic() + DOCKER_WAIT
        while True:
            try:
                probe.check_tls(fresh, 10)
                break
            except probe.TlsCheckError as err:
                if time.monotonic() > deadline:
                    raise MachineError(
                        f'Docker on "{m.name}" did not answer within {DOCKER_WAIT:.0f}s: {err}'
                    ) from None
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))


def _power(names: list[str] | None, stack: str | None, verb: str) -> None:
    reg = registry(stack)
    machines = reg.resolve(names)
    states = probe.probe_all(machines, 10)
    todo = []
    for machine, result in zip(machines, states, strict=True):
        if not supports_power(machine):
            if verb == "restart":
                todo.append(machine)
                continue
            raise MachineError(f"{machine.driver} driver does not support {verb}")
        if verb in ("stop", "kill") and result.state == "Stopped":
            raise MachineError(f'Machine "{machine.name}" is already stopped.')
        if verb == "start" and result.state == "Running":
            raise MachineError(f'Machine "{machine.name}" is already running.')
        todo.append(machine)
    hint_verb = {"start": "Started", "restart": "Restarted"}.get(verb)
    powered = [m for m in todo if supports_power(m)]
    rebooted = [m for m in todo if not supports_power(m)]
    label = {"start": "Starting", "stop": "Stopping", "kill": "Killing", "restart": "Restarting"}[verb]
    for m in todo:
        info(f'{label} "{m.name}"...')
    if powered:
        if verb in ("stop", "kill"):
            _set_power(powered, "stopped", f"{label} " + ", ".join(m.name for m in powered))
        elif verb == "start":
            _set_power(powered, "running", f"{label} " + ", ".join(m.name for m in powered))
        else:
            running = [m for m, s in zip(machines, states, strict=True) if m in powered and s.state != "Stopped"]
            if running:
                _set_power(running, "stopped", "Stopping " + ", ".join(m.name for m in running))
            _set_power(powered, "running", "Starting " + ", ".join(m.name for m in powered))
    for m in rebooted:
        _reboot_over_ssh(m)
    if verb in ("start", "restart"):
        wait_for_docker(todo)
    past = {"start": "started", "stop": "stopped", "kill": "killed", "restart": "restarted"}[verb]
    for m in todo:
        info(f'Machine "{m.name}" was {past}.')
    if hint_verb:
        info(f"{hint_verb} machines may have new IP addresses. You may need to re-run the `{argv0()} env` command.")


def _reboot_over_ssh(machine: Machine) -> None:
    """A host we did not create (generic) restarts like docker-machine's generic driver: a reboot over SSH."""
    if ssh_reachable(machine) != "open":
        raise not_running(machine)
    try:
        ssh_run(machine, "(sleep 1; systemctl reboot || shutdown -r now) >/dev/null 2>&1 &\n", timeout=60)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 120
    while ssh_reachable(machine, 2) == "open" and time.monotonic() < deadline:
        time.sleep(1)


@app.command()
def start(names: Names = None, stack: StackOpt = None) -> None:
    """Start machines (desired state `running` in the stack config, then a targeted `up`)."""
    run(lambda: _power(names, stack, "start"))


@app.command()
def stop(names: Names = None, stack: StackOpt = None) -> None:
    """Stop machines gracefully (desired state `stopped` in the stack config, then a targeted `up`)."""
    run(lambda: _power(names, stack, "stop"))


@app.command()
def restart(names: Names = None, stack: StackOpt = None) -> None:
    """Restart machines: stop then start; a host the driver cannot power (generic) is rebooted over SSH."""
    run(lambda: _power(names, stack, "restart"))


@app.command()
def kill(names: Names = None, stack: StackOpt = None) -> None:
    """Stop machines. There is no hard power-off: kill is stop (the driver powers off after a grace period)."""
    run(lambda: _power(names, stack, "kill"))


# --- upgrade, provision, regenerate-certs ---------------------------------------------------------------

UPGRADE_SCRIPT = r"""set -e
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o DPkg::Lock::Timeout=600 -qq"
packages=""
for p in docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin docker.io containerd runc; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then packages="$packages $p"; fi
done
if [ -z "$packages" ]; then echo "Docker was not installed from apt packages: nothing to upgrade" >&2; exit 1; fi
$apt update
$apt install -y --only-upgrade $packages
echo "Restarting docker..."
systemctl restart docker.service
"""


def _running_or_start(machines: list[Machine], stack: str | None) -> list[Machine]:
    states = probe.probe_all(machines, 10)
    stopped = [m for m, s in zip(machines, states, strict=True) if s.state == "Stopped"]
    if stopped:
        _power([m.name for m in stopped], stack, "start")
    return machines


@app.command()
def upgrade(names: Names = None, stack: StackOpt = None) -> None:
    """Upgrade Docker on machines (apt --only-upgrade of the installed Docker packages) and restart it."""

    def body() -> None:
        machines = registry(stack).resolve(names)
        _running_or_start(machines, stack)
        for machine in machines:
            info(f'Upgrading docker on "{machine.name}"...')
            result = ssh_run(machine, UPGRADE_SCRIPT)
            if result.returncode != 0:
                detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
                raise MachineError(f'upgrading Docker on "{machine.name}" failed: {detail}')
            info("Restarting docker...")
        wait_for_docker(machines)
        for machine in machines:
            info(f'Docker on "{machine.name}" is now {remote_version(machine)}')

    run(body)


def _require_running(machines: list[Machine]) -> None:
    for machine, result in zip(machines, probe.probe_all(machines, 10), strict=True):
        if result.state != "Running":
            raise not_running(machine)


@app.command()
def provision(names: Names = None, stack: StackOpt = None) -> None:
    """Re-run the provisioning steps of machines (a targeted `up` replacing each step)."""

    def body() -> None:
        machines = registry(stack).resolve(names)
        _require_running(machines)
        for stack_name in sorted({m.stack for m in machines}):
            group = [m for m in machines if m.stack == stack_name]
            resources = stacks.stack_resources(stack_name)
            parts = [stacks.machine_resources(stack_name, m.name, resources) for m in group]
            replace = []
            for part in parts:
                for step in part.of_type(stacks.REMOTE_COMMAND_TYPE):
                    # Replacing runs the new step before deleting the old one: a step whose delete undoes
                    # it (generic hosts) would undo what was just done.
                    if (step.get("outputs") or {}).get("delete") or (step.get("inputs") or {}).get("delete"):
                        warn(f"{step['urn'].rsplit('::', 1)[-1]}: not re-run (its delete would undo it)")
                        continue
                    replace.append(step["urn"])
                replace += [r["urn"] for r in part.of_type(stacks.API_CHECK_TYPE)]
            for m in group:
                info(f'Provisioning "{m.name}"...')
            stacks.up(stack_name, parts, replace=replace, title="Provisioning " + ", ".join(m.name for m in group))
        for m in machines:
            info(f'Machine "{m.name}" was provisioned.')

    run(body)


def refresh_local_material(stack_name: str, stack: str | None) -> None:
    """After the stack's CA changed: rewrite the cert copies and the docker contexts this host has."""
    from components import dockercontext

    reg = Registry(stack_name)
    for m in reg.machines():
        if os.path.isdir(m.cert_path):
            m.write_client_certs()
        name = dockercontext.context_name(m.name)
        if dockercontext.docker_path() and dockercontext.description_of(name) == dockercontext.DESCRIPTION.format(
            machine=m.name
        ):
            dockercontext.upsert(name, m.name, m.url, m.cert_path)


@app.command("regenerate-certs")
def regenerate_certs(
    names: Names = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not prompt.")] = False,
    client_certs: Annotated[
        bool,
        typer.Option(
            "--client-certs", help="Also replace the stack's CA and client certificate (every machine of it)."
        ),
    ] = False,
    stack: StackOpt = None,
) -> None:
    """New server certificates (and with --client-certs a new CA and client certificate); restarts Docker."""

    def body() -> None:
        reg = registry(stack)
        machines = reg.resolve(names)
        affected = list(machines)
        if client_certs:
            affected = [m for m in reg.machines() if m.stack in {x.stack for x in machines}]
        _require_running(affected)
        if not force and not confirm("Regenerate TLS machine certs?  Warning: this is irreversible."):
            return
        info("Regenerating TLS certificates")
        for stack_name in sorted({m.stack for m in machines}):
            group = [m for m in machines if m.stack == stack_name]
            token = stacks.rotation_token()
            for m in group:
                stacks.set_machine_setting(stack_name, m.name, "tls_rotation", token)
            if client_certs:
                info("Regenerating local certificates")
                stacks.set_stack_setting(stack_name, "ca_rotation", token)
                stacks.up(stack_name, None, title=f"Regenerating the certificates of stack {stack_name}")
                refresh_local_material(stack_name, stack)
            else:
                resources = stacks.stack_resources(stack_name)
                parts = [stacks.machine_resources(stack_name, m.name, resources) for m in group]
                stacks.up(stack_name, parts, title="Regenerating " + ", ".join(m.name for m in group))

    run(body)


# --- docker context -------------------------------------------------------------------------------------


@app.command()
def context(
    name: Name = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the machine's docker context instead.")] = False,
    stack: StackOpt = None,
) -> None:
    """Create or update a docker context for a machine: docker --context NAME ... (prints the context name)."""

    def body() -> None:
        from components import dockercontext

        (machine,) = registry(stack).resolve([name] if name else None)
        if not dockercontext.docker_path():
            raise MachineError("docker is not on PATH")
        context_name = dockercontext.context_name(machine.name)
        try:
            if remove:
                gone = dockercontext.remove(context_name)
                sys.stderr.write(
                    f'Removed docker context "{context_name}"\n' if gone else f'No docker context "{context_name}"\n'
                )
                return
            machine.write_client_certs()
            action = dockercontext.upsert(context_name, machine.name, machine.url, machine.cert_path)
        except dockercontext.DockerContextError as err:
            raise MachineError(str(err)) from None
        info(context_name)
        sys.stderr.write(
            f'Docker context "{context_name}" {action} for {machine.url}: docker --context {context_name} ...\n'
        )

    run(body)


def main(argv: list[str] | None = None) -> None:
    global ARGV
    if argv is not None:
        ARGV = argv
    app(args=ARGV[1:], prog_name=os.path.basename(ARGV[0]))
