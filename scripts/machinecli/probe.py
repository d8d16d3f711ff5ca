"""Live state of a machine, whatever its driver (docs/cli.md: nothing cached).

1. Docker answers ``/_ping`` then ``/version`` over mutual TLS with the stack's client certificate → ``Running``
   (the DOCKER column; ``components.steps.dockerapi.version``, the same probe ``up`` ends with);
2. else the SSH port accepts a TCP connection → ``Running``, with the Docker error in ERRORS;
3. else ``Stopped``; ``Timeout`` when the probe itself outlives the timeout (as docker-machine's ``ls``).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from components import drivers
from components.steps import dockerapi, tls

from . import formats, ui, workspace
from .errors import MachineError
from .formats import LsItem
from .machines import Machine

TLS_CHECK_TIMEOUT = 20.0
SSH_CHECK_TIMEOUT = 10.0


def docker_version(machine: Machine, timeout: float) -> dict[str, Any]:
    """The machine's ``/version`` after a ``/_ping``, with the client certificate; dockerapi.ApiError."""
    ca, cert, key = machine.tls
    if not (ca and cert and key and machine.url):
        raise dockerapi.ApiError("the stack outputs have no URL or client certificate for this machine")
    host, port = machine.docker_host
    return dockerapi.version(host, port, machine.tls, timeout=max(timeout, 0.1))


class TlsCheckError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # cert | connect


def check_tls(machine: Machine, timeout: float = TLS_CHECK_TIMEOUT) -> None:
    """docker-machine's ValidateCertificate: a TLS handshake (and a ping) with the client certificate."""
    try:
        docker_version(machine, timeout)
    except dockerapi.ApiError as err:
        raise TlsCheckError("cert" if dockerapi.is_cert_error(err.cause) else "connect", str(err)) from None


def tcp_state(host: str, port: int, timeout: float) -> str:
    """``open``, ``refused`` (nothing listens: a stopped VM's forward, a host without sshd) or ``timeout``."""
    if not host or not port:
        return "refused"
    try:
        with socket.create_connection((host, int(port)), timeout=max(timeout, 0.1)):
            return "open"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return "timeout" if err.errno == errno.ETIMEDOUT else "refused"


def ssh_reachable(machine: Machine, timeout: float = SSH_CHECK_TIMEOUT) -> str:
    return tcp_state(machine.ssh.host, machine.ssh.port, timeout)


@dataclass
class Probe:
    state: str
    docker_version: str = ""
    error: str = ""
    response_time: float = 0.0
    api: dict[str, Any] | None = None


def probe(machine: Machine, timeout: float = 10) -> Probe:
    start = time.monotonic()

    def left() -> float:
        return timeout - (time.monotonic() - start)

    if not machine.url:
        return Probe("Error", error="the stack outputs have no URL for this machine")
    try:
        version = docker_version(machine, left())
        return Probe("Running", version.get("Version", ""), response_time=time.monotonic() - start, api=version)
    except dockerapi.ApiError as err:
        failure = err
    host, port = machine.docker_host
    message = f"Unable to query docker version: Get https://{host}:{port}/version: {failure}"
    if left() <= 0:
        return Probe("Timeout", response_time=timeout)
    reach = tcp_state(machine.ssh.host, machine.ssh.port, left())
    elapsed = time.monotonic() - start
    if reach == "open":
        return Probe("Running", "", message, response_time=elapsed)
    if reach == "timeout" or left() <= 0:
        return Probe("Timeout", response_time=timeout)
    return Probe("Stopped", response_time=elapsed)


def probe_all(machines: list[Machine], timeout: float = 10) -> list[Probe]:
    """Probe every machine in parallel; one that has not answered within ``timeout`` is ``Timeout``."""
    results: list[Probe | None] = [None] * len(machines)

    def work(i: int) -> None:
        try:
            results[i] = probe(machines[i], timeout)
        except Exception as err:  # noqa: BLE001 - one broken machine must not hide the others
            results[i] = Probe("Error", error=str(err))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(machines))]
    deadline = time.monotonic() + timeout + 0.5
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r if r is not None else Probe("Timeout", response_time=timeout) for r in results]


def local_state(machine: Machine):
    """The machine's helpers on this host as its driver reports them (e.g. published ports not forwarded)."""
    return drivers.load(machine.driver).local_state(machine.info.details)


def certificate_errors(machine: Machine) -> list[str]:
    """Certificates due for renewal (less than 30 days left): the machine's server certificate, the stack's CA and
    client certificate; `up` renews them."""
    lefts = [("server certificate", tls.left(machine.info.server_cert_expires))]
    lefts += [
        (f"stack's {what}", tls.expiring(pem))
        for what, pem in (
            ("CA", machine.stack_outputs.ca_cert),
            ("client certificate", machine.stack_outputs.client_cert),
        )
    ]
    return [f"the {what} {tls.days(left)}: run up to renew it" for what, left in lefts if left is not None]


def ls_items(machines: list[Machine], timeout: float) -> list[LsItem]:
    docker_host = os.environ.get("DOCKER_HOST", "")
    items = []
    for machine, result in zip(machines, probe_all(machines, timeout), strict=True):
        running = result.state == "Running"
        version = "" if result.state in ("Timeout", "Error") else "Unknown"
        if running and result.docker_version:
            version = f"v{result.docker_version}"
        errors = [result.error] if result.error else []
        if running:
            errors += local_state(machine).errors
        errors += certificate_errors(machine)
        items.append(
            LsItem(
                name=machine.name, stack=machine.stack, driver=machine.driver, state=result.state,
                url=machine.url if running else "", docker_version=version, error="; ".join(errors),
                active_host=running and machine.url == docker_host, response_time=result.response_time,
                swarm_master=machine.swarm_master, mounts=formats.mounts_shown(machine.info.details),
            )
        )  # fmt: skip
    return items


def labels(machines: list[Machine]) -> dict[tuple[str, str], tuple[str, ...]]:
    """Each machine's engine labels, as configured (``ls --filter label=``)."""
    found: dict[tuple[str, str], tuple[str, ...]] = {}
    for stack in {m.stack for m in machines}:
        try:
            for name, machine in workspace.get().machines(stack).items():
                found[(stack, name)] = tuple(machine.engine.labels)
        except MachineError as err:
            ui.warn(f'stack "{stack}": {err}')
    return found


def require_docker(machine: Machine, prefix: str = "") -> None:
    """The TLS check of ``env``/``config`` (docs/cli.md): one clear line per failure."""
    try:
        check_tls(machine)
        return
    except TlsCheckError as err:
        if err.kind == "cert":
            host, port = machine.docker_host
            raise MachineError(
                f"{prefix}Error checking and/or regenerating the certs: There was an error validating certificates "
                f'for host "{host}:{port}": {err}\n'
                f"You can attempt to regenerate them using '{ui.argv0()} regenerate-certs {machine.name}'.\n"
                "Be advised that this will trigger a Docker daemon restart which might stop running containers."
            ) from None
        reach = ssh_reachable(machine)
        if reach == "refused":
            raise MachineError(f"{prefix}Host is not running") from None
        if reach == "timeout":
            raise MachineError(f'{prefix}Host "{machine.name}" is unreachable ({machine.ssh.host})') from None
        raise MachineError(f"{prefix}Docker on {machine.url} does not answer: {err}") from None


def remote_version(machine: Machine) -> str:
    try:
        return docker_version(machine, TLS_CHECK_TIMEOUT).get("Version", "")
    except dockerapi.ApiError as err:
        error = str(err)
    if ssh_reachable(machine) == "refused":
        raise MachineError(f'Host "{machine.name}" is not running')
    raise MachineError(f"Unable to query docker version: {error}")


def require_running(machines: list[Machine]) -> None:
    for machine, result in zip(machines, probe_all(machines, 10), strict=True):
        if result.state != "Running":
            raise MachineError(f'Host "{machine.name}" is not running')


def inspect_record(machine: Machine) -> dict[str, Any]:
    """docker-machine's host record of the machine, with its forwarder's report where it has one."""
    try:
        configured = workspace.get().machines(machine.stack).get(machine.name)
    except MachineError as err:
        ui.warn(str(err))
        configured = None
    info = machine.info.model_dump(by_alias=True)
    record = formats.host_record(machine.name, machine.stack, info, configured, workspace.store_path())
    return {**record, **local_state(machine).record}
