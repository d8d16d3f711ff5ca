"""The ``scripts/machine`` commands (docs/cli.md): thin typer commands over the logic modules."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable
from typing import Annotated, Any

import typer

from . import formats, lifecycle, power, probe, provision, remote, review, team, ui, workspace
from .errors import MachineError
from .formats import FilterError, LsItem
from .gotext import TemplateError
from .machines import Registry

VERSION = "0.1.0"

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
Timeout = Annotated[int, typer.Option("--timeout", "-t", help="Seconds to wait for each host.")]


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[..., Callable[..., None]]:
    """A command (of ``app``, or of a ``group`` of commands) whose user errors become one ``Error: …`` line on
    stderr and exit status 1."""

    def decorate(body: Callable[..., int | None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*a: Any, **kw: Any) -> None:
            try:
                code = body(*a, **kw)
            except (MachineError, FilterError, TemplateError) as err:
                message = str(err).rstrip("\n")
                ui.err(message if message.startswith("Error") else f"Error: {message}")
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                ui.err("")
                raise typer.Exit(130) from None
            if code:
                raise typer.Exit(code)

        return (group or app).command(*args, **kwargs)(run)

    return decorate


def registry(stack: str | None) -> Registry:
    return Registry(stack or GLOBAL["stack"])


def one(stack: str | None, name: str | None):
    (machine,) = registry(stack).resolve([name] if name else None)
    return machine


# --- ls, status, active -----------------------------------------------------------------------------------------


@command("ls")
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
    timeout: Timeout = 10,
) -> None:
    """List machines (NAME ACTIVE DRIVER STATE URL SWARM DOCKER ERRORS), hosts queried in parallel."""
    filters = formats.parse_filters(filter_ or [])
    if fmt:
        formats.parse_ls_format(fmt)  # a bad template fails before any host is queried
    reg = registry(stack)
    machines = reg.machines()
    for w in reg.warnings:
        ui.warn(w)
    labels = probe.labels(machines) if filters.label else {}
    candidates = [LsItem(m.name, m.stack, m.driver, "", labels=labels.get((m.stack, m.name), ()),
                         swarm_master=m.swarm_master) for m in machines]  # fmt: skip
    keep = [formats.matches(i, filters, with_state=False) for i in candidates]
    machines = [m for m, k in zip(machines, keep, strict=True) if k]
    if quiet and not filters.needs_state:
        for item in formats.sort_items([c for c, k in zip(candidates, keep, strict=True) if k]):
            ui.info(item.name)
        return
    items = probe.ls_items(machines, timeout)
    for item in items:
        item.labels = labels.get((item.stack, item.name), ())
    items = formats.sort_items([i for i in items if formats.matches(i, filters)])
    if quiet:
        for item in items:
            ui.info(item.name)
        return
    ui.out(formats.ls_output(items, fmt))


@command()
def status(name: Name = None, stack: StackOpt = None) -> None:
    """Print a machine's state, live: Running, Stopped or Timeout."""
    ui.info(probe.probe(one(stack, name), 10).state)


@command()
def active(stack: StackOpt = None, timeout: Timeout = 10) -> None:
    """Print the machine DOCKER_HOST points at (when it is running)."""
    docker_host = os.environ.get("DOCKER_HOST", "")
    machines = [m for m in registry(stack).machines() if docker_host and m.url == docker_host]
    items = formats.sort_items(probe.ls_items(machines, timeout))
    for item in items:
        if item.active_host:
            ui.info(item.name)
            return
    if any(i.state == "Timeout" for i in items):
        raise MachineError("Error getting active host: timeout")
    raise MachineError("No active host found")


# --- env, config, ip, url, inspect, version ---------------------------------------------------------------------


@command()
def env(
    name: Name = None,
    stack: StackOpt = None,
    shell: Annotated[
        str | None, typer.Option("--shell", help="bash (default form), fish, powershell, cmd, tcsh, emacs.")
    ] = None,
    unset: Annotated[bool, typer.Option("--unset", "-u", help="Print the commands that unset the variables.")] = False,
    no_proxy: Annotated[bool, typer.Option("--no-proxy", help="Add the machine's IP to NO_PROXY.")] = False,
    swarm: Annotated[
        bool, typer.Option("--swarm", help="Point at the first manager of the machine's swarm instead.")
    ] = False,
) -> None:
    """Print the shell commands that point the docker client at a machine (eval them)."""
    command_line = formats.command_line(ui.argv0(), ui.ARGV[1:])
    values, ip = None, ""
    if unset:
        if name:
            raise MachineError("Expected no machine name when the -u flag is present")
    else:
        machine = one(stack, name)
        if swarm:
            if not machine.swarm_master:
                raise MachineError(f'"{machine.name}" is not a member of a swarm (docker-machine:swarm in its stack)')
            machine = one(machine.stack, machine.swarm_master)
        probe.require_docker(machine, "Error checking TLS connection: ")
        machine.write_client_certs()
        values, ip = machine.docker_env, machine.ip
    chosen = formats.detect_shell(shell)
    if chosen is None:
        # docker-machine failed here; CI jobs and cron run without $SHELL and eval in sh, so print that form.
        ui.warn("$SHELL is not set; printing sh/bash syntax (another shell: --shell " + "|".join(formats.SHELLS) + ")")
        chosen = "bash"
    ui.out(formats.env_output(chosen, command_line, values, no_proxy=no_proxy, ip=ip))


@command()
def config(name: Name = None, stack: StackOpt = None) -> None:
    """Print the docker client's TLS flags for a machine: docker $(machine config NAME) ps."""
    machine = one(stack, name)
    probe.require_docker(machine, "Error checking TLS connection: ")
    machine.write_client_certs()
    ui.out(formats.config_output(machine.cert_path, machine.url))


@command()
def ip(names: Names = None, stack: StackOpt = None) -> None:
    """Print machines' IP addresses (from the stack outputs)."""
    for machine in registry(stack).resolve(names):
        ui.info(machine.ip)


@command()
def url(name: Name = None, stack: StackOpt = None) -> None:
    """Print a machine's Docker URL (from the stack outputs)."""
    ui.info(one(stack, name).url)


@command()
def inspect(
    name: Name = None,
    stack: StackOpt = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="Go template, e.g. '{{.Driver.IPAddress}}'.")
    ] = None,
) -> None:
    """Print a machine's docker-machine host record as JSON (with its stack outputs)."""
    ui.out(formats.inspect_output(probe.inspect_record(one(stack, name)), fmt))


def _git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=workspace.ROOT, capture_output=True, text=True, timeout=5
        )
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@command()
def version(name: Name = None, stack: StackOpt = None) -> None:
    """Without a name: this tool's version. With one: the machine's Docker Engine version (live)."""
    if not name:
        ui.info(f"{os.path.basename(ui.argv0())} version {VERSION}, build {_git_revision()}")
        return
    ui.info(probe.remote_version(one(stack, name)))


# --- ssh, scp ---------------------------------------------------------------------------------------------------


@command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def ssh(
    name: Name = None,
    command: Annotated[list[str] | None, typer.Argument(help="Command to run (none: a login shell).")] = None,
    stack: StackOpt = None,
) -> int:
    """Log into a machine, or run a command on it: ssh [--stack S] NAME [command...]."""
    machine = one(stack, name)
    if probe.ssh_reachable(machine) != "open":
        raise MachineError(f'Cannot run SSH command: Host "{machine.name}" is not running')
    with remote.key_files([machine]) as keys:
        return remote.run_attached(remote.ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], command or []))


@command()
def scp(
    source: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    target: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories recursively.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress meter.")] = False,
    stack: StackOpt = None,
) -> int:
    """Copy files between this host and a machine: scp [-r] [[machine:]path] [[machine:]path]."""
    src, dst = remote.parse_scp_arg(source), remote.parse_scp_arg(target)
    names = {p.machine for p in (src, dst) if p.machine}
    if len(names) > 1:
        raise MachineError("copying between two machines is not supported: copy through a local path")
    if not names:
        return remote.run_attached(["cp", *(["-r"] if recursive else []), src.path, dst.path])
    (machine,) = registry(stack).resolve(list(names))
    if probe.ssh_reachable(machine) != "open":
        raise MachineError(f'Cannot run SSH command: Host "{machine.name}" is not running')
    with remote.key_files([machine]) as keys:
        key = keys[f"{machine.stack}/{machine.name}"]
        return remote.run_attached(remote.scp_argv(src, dst, machine, key, recursive, quiet))


# --- create, rm -------------------------------------------------------------------------------------------------


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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
    engine = {
        key: value
        for key, value in (
            ("install", engine_install), ("install_url", engine_install_url), ("port", engine_port),
            ("storage_driver", engine_storage_driver), ("opts", engine_opt), ("labels", engine_label),
            ("insecure_registries", engine_insecure_registry), ("registry_mirrors", engine_registry_mirror),
            ("env", engine_env),
        )
        if value
    }  # fmt: skip
    machine: dict[str, Any] = {"name": name, "driver": driver}
    options = lifecycle.driver_options(driver, list(ctx.args)) if lifecycle.MACHINE_NAME_RE.match(name) else {}
    if options:
        machine["options"] = options
    if engine:
        machine["engine"] = engine
    if tls_san:
        machine["tls_san"] = list(tls_san)
    lifecycle.create(registry(stack), name, machine)


@command()
def rm(
    names: Names = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Remove it from the stack even if deleting fails.")
    ] = False,
    yes: Annotated[bool, typer.Option("-y", help="Assume yes: do not prompt.")] = False,
    stack: StackOpt = None,
) -> int:
    """Delete machines (targeted `up` after removing them from the stack config)."""
    if not names:
        raise MachineError("Error: Expected to get one or more machine names as arguments")
    return lifecycle.rm(registry(stack), names, force, yes)


# --- power, provisioning, certificates --------------------------------------------------------------------------


def _power_command(verb: str, help_text: str) -> None:
    def body(names: Names = None, stack: StackOpt = None) -> None:
        power.power(registry(stack), names, verb)

    body.__doc__ = help_text
    command(verb)(body)


for _verb, _help in (
    ("start", "Start machines (desired state `running` in the stack config, then a targeted `up`)."),
    ("stop", "Stop machines gracefully (desired state `stopped` in the stack config, then a targeted `up`)."),
    ("restart", "Restart machines: stop then start; a host the driver cannot power (generic) is rebooted over SSH."),
    ("kill", "Stop machines. There is no hard power-off: kill is stop (the driver powers off after a grace period)."),
):
    _power_command(_verb, _help)


@command()
def upgrade(names: Names = None, stack: StackOpt = None) -> None:
    """Upgrade Docker on machines (apt --only-upgrade of the installed Docker packages) and restart it."""
    provision.upgrade(registry(stack), names)


@command("provision")
def provision_(names: Names = None, stack: StackOpt = None) -> None:
    """Re-run the provisioning steps of machines (a targeted `up` replacing each step)."""
    provision.provision(registry(stack), names)


@command("regenerate-certs")
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
    provision.regenerate_certs(registry(stack), names, force, client_certs)


@command()
def context(
    name: Name = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the machine's docker context instead.")] = False,
    stack: StackOpt = None,
) -> None:
    """Create or update a docker context for a machine: docker --context NAME ... (prints the context name)."""
    from components import dockercontext

    machine = one(stack, name)
    if not dockercontext.docker_path():
        raise MachineError("docker is not on PATH")
    context_name = dockercontext.context_name(machine.name)
    try:
        if remove:
            gone = dockercontext.remove(context_name)
            ui.err(f'Removed docker context "{context_name}"' if gone else f'No docker context "{context_name}"')
            return
        machine.write_client_certs()
        action = dockercontext.upsert(context_name, machine.name, machine.url, machine.cert_path)
    except dockercontext.DockerContextError as err:
        raise MachineError(str(err)) from None
    ui.info(context_name)
    ui.err(f'Docker context "{context_name}" {action} for {machine.url}: docker --context {context_name} ...')


@command()
def up(
    stack: StackOpt = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Refresh the state from the hosts first.")] = False,
) -> None:
    """`pulumi up` on a whole stack, with its lock checked and its errors in one line each (`make up`)."""
    current = _one_stack(stack)
    review.check_policies(current.name, refresh)
    workspace.get().up(current.name, None, refresh=refresh, title=f"pulumi up ({current.short})")


@command()
def preview(
    stack: StackOpt = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Refresh the state from the hosts first (drift).")] = False,
    expect_no_changes: Annotated[
        bool, typer.Option("--expect-no-changes", help="Exit 2 when anything would change (drift checks).")
    ] = False,
    output: Annotated[str, typer.Option("--format", help="markdown, text or json.")] = "text",
    policy_config: Annotated[
        list[str] | None, typer.Option("--policy-config", help="A policy pack config file (pulumi's JSON format).")
    ] = None,
    raw: Annotated[
        str | None, typer.Option("--raw", help="Also save what the report is built from (pulumi's JSON) to a file.")
    ] = None,
) -> int:
    """What `up` would change, machine by machine, with its consequences and the policy pack's results."""
    return review.run(stack or GLOBAL["stack"], refresh=refresh, expect_no_changes=expect_no_changes,
                      output=output, policy_configs=policy_config or [], raw=raw)  # fmt: skip


backend_app = typer.Typer(help="Team mode: the shared state backend and the team's secrets key (docs/team.md).",
                          no_args_is_help=True)  # fmt: skip
app.add_typer(backend_app, name="backend")


KeyFile = Annotated[str, typer.Option("--key-file", help="The team's secrets passphrase, in a 0600 file.")]


@command("set", group=backend_app)
def backend_set(
    url: Annotated[str, typer.Argument(help="e.g. postgres://user:password@host:5432/pulumi?sslmode=require")],
    key_file: KeyFile,
) -> None:
    """Use a shared backend and the team's secrets key from now on (stored for this user)."""
    team.set_backend(url, key_file)


@command("unset", group=backend_app)
def backend_unset() -> None:
    """Go back to your own file backend and secrets key."""
    team.unset_backend()


@command("show", group=backend_app)
def backend_show() -> None:
    """Print the backend in use (password hidden)."""
    ui.info(team.shown(workspace.backend_url()))


@command("migrate", group=backend_app)
def backend_migrate(
    url: Annotated[str, typer.Argument(help="The team's backend.")], key_file: KeyFile, stack: StackOpt = None
) -> None:
    """Move a stack, with its running machines, from the backend in use to the team's."""
    team.migrate(_one_stack(stack).name, url, key_file)


def _one_stack(stack: str | None):
    current = registry(stack).current_stack()
    if current is None:
        raise MachineError("several stacks and none selected: choose one with --stack")
    return current


@command()
def unlock(
    stack: StackOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Only report a lock (exit 1 when there is one).")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also clear a lock that a live run, or another host, holds.")
    ] = False,
) -> None:
    """Clear a stack's lock left by a pulumi run that no longer exists (a killed `up`)."""
    current = _one_stack(stack)
    ws = workspace.get()
    locks = ws.locks(current.name)
    for lock in locks:
        if check or not (lock.stale() or force):
            raise MachineError(workspace.lock_message(current.name, lock))
    if locks:
        ws.unlock(current.name)
        ui.err(f'Cleared the lock of stack "{current.short}" ({locks[0].describe()})')


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        ui.ARGV = argv
    app(args=ui.ARGV[1:], prog_name=os.path.basename(ui.ARGV[0]))
