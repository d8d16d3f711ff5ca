"""The ``scripts/machine`` commands on machines (docs/cli.md): thin typer commands over the logic modules. The
stack-wide ones are in ``stackcmds``, the frame they share in ``cli``."""

from __future__ import annotations

import os
import subprocess
from typing import Annotated, Any

import typer

from components import drivers, ownership
from components.model import DEFAULT_DRIVER, MACHINE_NAME_RE

from . import (
    formats,
    lifecycle,
    maintenance,
    power,
    probe,
    sshclient,
    ui,
    workspace,
)
from .cli import Name, Names, StackOpt, Timeout, app, command, one, registry
from .errors import MachineError
from .formats import LsItem

VERSION = "0.1.0"


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
    with sshclient.key_files([machine]) as keys:
        argv = sshclient.ssh_argv(machine, keys[f"{machine.stack}/{machine.name}"], command or [])
        return sshclient.run_attached(argv)


@command()
def scp(
    source: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    target: Annotated[str, typer.Argument(help="[[user@]machine:]path")] = ...,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy directories recursively.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress meter.")] = False,
    delta: Annotated[bool, typer.Option("--delta", "-d", help="Send only what changed (rsync over SSH).")] = False,
    stack: StackOpt = None,
) -> int:
    """Copy files between this host and a machine: scp [-r] [-d] [[machine:]path] [[machine:]path]."""
    src, dst = sshclient.parse_scp_arg(source), sshclient.parse_scp_arg(target)
    names = {p.machine for p in (src, dst) if p.machine}
    if len(names) > 1:
        raise MachineError("copying between two machines is not supported: copy through a local path")
    if not names:
        return sshclient.run_attached(["cp", *(["-r"] if recursive else []), src.path, dst.path])
    machine = _running(stack, names.pop())
    with sshclient.key_files([machine]) as keys:
        key = keys[f"{machine.stack}/{machine.name}"]
        argv = (sshclient.rsync_argv if delta else sshclient.scp_argv)(src, dst, machine, key, recursive, quiet)
        return sshclient.run_attached(argv)


def _running(stack: str | None, name: str):
    (machine,) = registry(stack).resolve([name])
    if probe.ssh_reachable(machine) != "open":
        raise MachineError(f'Cannot run SSH command: Host "{machine.name}" is not running')
    return machine


@command()
def mount(
    source: Annotated[str, typer.Argument(help="machine:path, the machine's folder")],
    mountpoint: Annotated[
        str | None, typer.Argument(help="Where on this host (default: the folder's name, in the current directory).")
    ] = None,
    unmount: Annotated[bool, typer.Option("--unmount", "-u", help="Unmount it.")] = False,
    stack: StackOpt = None,
) -> int:
    """Mount a machine's folder on this host with sshfs, or unmount it (-u): mount [-u] machine:path [mountpoint]."""
    remote = sshclient.parse_scp_arg(source)
    if remote.machine is None or not remote.path:
        raise MachineError(f"{source!r}: name the machine's folder as machine:path, e.g. default:/etc")
    # docker-machine defaulted to the remote path itself, which here would cover this host's own /etc.
    local = os.path.abspath(mountpoint or os.path.basename(remote.path.rstrip("/")) or remote.machine)
    if unmount:
        return sshclient.run_attached(sshclient.unmount_argv(local))
    machine = _running(stack, remote.machine)
    os.makedirs(local, exist_ok=True)
    with sshclient.key_files([machine]) as keys:
        return sshclient.run_attached(
            sshclient.sshfs_argv(machine, keys[f"{machine.stack}/{machine.name}"], remote.path, local)
        )


# --- create, rm -------------------------------------------------------------------------------------------------


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The machine's name.")],
    driver: Annotated[
        str, typer.Option("--driver", "-d", envvar="MACHINE_DRIVER", help="Driver to create it with.")
    ] = DEFAULT_DRIVER,
    tls_san: Annotated[
        list[str] | None, typer.Option("--tls-san", help="Extra server-certificate SANs (repeatable).")
    ] = None,
    stack: StackOpt = None,
) -> None:
    """Add a machine to a stack's config and `up` it (targeted). Driver flags: --<driver>-<option> VALUE; engine
    flags: --engine-<option> VALUE (--engine-label, --engine-opt, --engine-insecure-registry, …; repeatable for
    lists), from the engine options (docs/engine.md)."""
    machine: dict[str, Any] = {"name": name, "driver": driver}
    flags = lifecycle.parse_flags(driver, list(ctx.args)) if MACHINE_NAME_RE.match(name) else {}
    machine.update({section: values for section, values in flags.items() if values})
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
    ("kill", "Power machines off at once (QEMU, VirtualBox; others are stopped gracefully)."),
):
    _power_command(_verb, _help)


@command()
def upgrade(names: Names = None, stack: StackOpt = None) -> None:
    """Upgrade Docker on machines (apt --only-upgrade of the installed Docker packages) and restart it."""
    maintenance.upgrade(registry(stack), names)


@command("provision")
def provision_(names: Names = None, stack: StackOpt = None) -> None:
    """Re-run the provisioning steps of machines (a targeted `up` replacing each step)."""
    maintenance.provision(registry(stack), names)


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
    maintenance.regenerate_certs(registry(stack), names, force, client_certs)


@command()
def context(
    name: Name = None,
    remove: Annotated[bool, typer.Option("--rm", help="Remove the machine's docker context instead.")] = False,
    stack: StackOpt = None,
) -> None:
    """Create or update a docker context for a machine: docker --context NAME ... (prints the context name)."""
    from components.steps import dockercontext

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
        action = dockercontext.upsert(context_name, machine.name, machine.url, machine.cert_path, machine.owner)
    except (dockercontext.DockerContextError, ownership.NotOurs) as err:
        raise MachineError(str(err)) from None
    ui.info(context_name)
    ui.err(f'Docker context "{context_name}" {action} for {machine.url}: docker --context {context_name} ...')


@command("templates")
def templates_command(
    clear: Annotated[bool, typer.Option("--clear", help="Remove the templates no machine uses.")] = False,
) -> None:
    """The booted templates local machines start from (docs/local-vms.md#templates), and their size."""
    rows = [(driver.name, row) for driver in drivers.every() for row in driver.templates(clear)]
    ui.info(f"{'DRIVER':<8} {'TEMPLATE':<30} {'IMAGE':<32} {'CPUS':>4} {'MEMORY':>7} {'DISK':>6} {'SIZE':>8} "
            f"{'MACHINES':>8}  STATE")  # fmt: skip
    for name, row in rows:
        ui.info(f"{name:<8} {row['name']:<30} {row['image']:<32} {row['cpus'] or '':>4} {row['memory'] or '':>7} "
                f"{row['disk'] or '':>6} {row['size_mib']:>5} MiB {row['machines']:>8}  "
                f"{'damaged: ' + row['damaged'] if row['damaged'] else 'ok'}")  # fmt: skip


# The stack-wide commands come after the machine ones in --help, as in docker-machine's.
from . import stackcmds  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    if argv is not None:
        ui.ARGV = argv
    app(args=ui.ARGV[1:], prog_name=os.path.basename(ui.ARGV[0]))
