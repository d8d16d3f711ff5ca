"""start, stop, restart, kill: the desired ``state`` in the stack config, then a targeted, refreshed ``up``; kill first
powers the machine off at once where its driver can (QEMU, VirtualBox).

A driver that cannot power a machine (generic) is restarted like docker-machine's generic driver did: a reboot over
SSH. After a start, the command returns once Docker answers over TLS at the address the stack outputs hold.
"""

from __future__ import annotations

from components import drivers, wait
from components.steps import provisioning

from . import probe, sshclient, ui, workspace
from .errors import MachineError
from .machines import Machine, Registry, by_stack, set_machine_setting, targets

# Where a start gives up waiting for Docker (seconds).
DOCKER_WAIT = 300.0
POLL = 2.0
REBOOT_WAIT = 120.0

_LABELS = {"start": "Starting", "stop": "Stopping", "restart": "Restarting"}
_PAST = {"start": "started", "stop": "stopped", "restart": "restarted"}


def supports_power(machine: Machine) -> bool:
    try:
        return drivers.load(machine.driver).supports_power
    except ValueError as err:
        raise MachineError(str(err)) from None


def set_power(machines: list[Machine], state: str, title: str) -> None:
    """Desired power state in the stack config, then a targeted, refreshed ``up`` per stack."""
    for stack, group in by_stack(machines).items():
        for m in group:
            set_machine_setting(stack, m.name, "state", state)
        workspace.get().up(stack, targets(stack, group), refresh=True, title=title)


def wait_for_docker(machines: list[Machine]) -> None:
    """After a start: Docker answers over TLS at the (possibly new) address in the stack outputs."""
    for m in machines:
        fresh = Registry(m.stack).find(m.name)
        try:
            wait.poll(lambda fresh=fresh: probe.check_tls(fresh, 10) or True, timeout=DOCKER_WAIT, interval=POLL,
                      retry_on=(probe.TlsCheckError,))  # fmt: skip
        except wait.WaitTimeout as err:
            raise MachineError(f'Docker on "{m.name}" did not answer within {DOCKER_WAIT:.0f}s: {err.last}') from None


def reboot_over_ssh(machine: Machine) -> None:
    """A host we did not create (generic) restarts like docker-machine's generic driver: a reboot over SSH."""
    import subprocess

    if probe.ssh_reachable(machine) != "open":
        raise MachineError(f'Host "{machine.name}" is not running')
    try:
        sshclient.ssh_run(machine, provisioning.REBOOT, timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        wait.poll(lambda: probe.ssh_reachable(machine, 2) != "open", timeout=REBOOT_WAIT, interval=1)
    except wait.WaitTimeout:
        pass


def _check(machines: list[Machine], states: list[probe.Probe], verb: str) -> list[Machine]:
    todo = []
    for machine, result in zip(machines, states, strict=True):
        if not supports_power(machine):
            if verb != "restart":
                raise MachineError(f"{machine.driver} driver does not support {verb}")
        elif verb == "stop" and result.state == "Stopped":
            raise MachineError(f'Machine "{machine.name}" is already stopped.')
        elif verb == "start" and result.state == "Running":
            raise MachineError(f'Machine "{machine.name}" is already running.')
        todo.append(machine)
    return todo


def kill(reg: Registry, names: list[str] | None) -> None:
    """docker-machine's kill: the plug pulled at once where the driver can (no probe first: every second counts),
    then the stack records the machines stopped; a driver without a hard power-off stops them gracefully."""
    machines = reg.resolve(names)
    for m in machines:
        if not supports_power(m):
            raise MachineError(f"{m.driver} driver does not support kill")
    for m in machines:
        ui.info(f'Killing "{m.name}"...')
        killed = drivers.load(m.driver).kill(m.name, m.info.details)
        if killed is False:
            raise MachineError(f'Machine "{m.name}" is already stopped.')
        if killed is None:
            ui.warn(f'{m.driver} machine "{m.name}" has no hard power-off: it is stopped instead')
    set_power(machines, "stopped", "Killing " + ", ".join(m.name for m in machines))
    for m in machines:
        ui.info(f'Machine "{m.name}" was killed.')


def power(reg: Registry, names: list[str] | None, verb: str) -> None:
    if verb == "kill":
        return kill(reg, names)
    machines = reg.resolve(names)
    states = probe.probe_all(machines, 10)
    todo = _check(machines, states, verb)
    powered = [m for m in todo if supports_power(m)]
    label = _LABELS[verb]
    for m in todo:
        ui.info(f'{label} "{m.name}"...')
    if powered:
        names_of = ", ".join(m.name for m in powered)
        if verb == "stop":
            set_power(powered, "stopped", f"{label} {names_of}")
        elif verb == "start":
            set_power(powered, "running", f"{label} {names_of}")
        else:
            running = [m for m, s in zip(machines, states, strict=True) if m in powered and s.state != "Stopped"]
            if running:
                set_power(running, "stopped", "Stopping " + ", ".join(m.name for m in running))
            set_power(powered, "running", f"Starting {names_of}")
    for m in todo:
        if not supports_power(m):
            reboot_over_ssh(m)
    if verb in ("start", "restart"):
        wait_for_docker(todo)
    for m in todo:
        ui.info(f'Machine "{m.name}" was {_PAST[verb]}.')
    if verb in ("start", "restart"):
        past = "Started" if verb == "start" else "Restarted"
        ui.info(f"{past} machines may have new IP addresses. You may need to re-run the `{ui.argv0()} env` command.")


def start_stopped(reg: Registry, machines: list[Machine]) -> None:
    """docker-machine's upgrade starts a stopped machine first."""
    states = probe.probe_all(machines, 10)
    stopped = [m.name for m, s in zip(machines, states, strict=True) if s.state == "Stopped"]
    if stopped:
        power(reg, stopped, "start")
