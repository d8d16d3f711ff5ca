"""Published container ports, reachable on the machine's address: a forwarder per QEMU user-mode VM (docs/ports.md).

The forwarder is a small daemon (``python -m components.drivers.qemu.forwarder INSTANCE_DIR``) started by the
``PortForwarder`` resource once Docker answers, and again whenever the VM booted. It follows the Docker API with the
stack's client certificate (the docker SDK: the running containers' port bindings, then container events) and adds
or removes slirp host forwards through the VM's own QMP socket (no restart, no root): UDP ports straight
(127.0.0.1:PORT → guest:PORT), TCP ports through a relay of its own (relay.py: slirp's listener takes one pending
connection at a time). A host port that another program holds is not forwarded; the reason goes to ``forwards.json``,
which ``scripts/machine ls`` and ``inspect`` show (through the driver's ``local_state``). It logs in the instance
directory, reconnects when Docker restarts, and exits when qemu does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components import outputs
from components.drivers._local import process
from components.drivers._local.paths import Layout, free_port
from components.drivers.qemu import relay
from components.drivers.qemu.instance import NETDEV, Files, hostfwd, qmp, running_pid
from components.drivers.qemu.options import Forward
from components.dynamic import DynamicResource, inputs_of
from components.steps import dockerapi
from components.steps.tls import ClientTls

FORWARDER = outputs.DynamicType("qemu", "PortForwarder")
MODULE = "components.drivers.qemu.forwarder"
# Longest quiet spell on the event stream before the forwarder re-reads the containers anyway.
RESYNC_SECONDS = 30
RECONNECT_SECONDS = 2.0
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")


class ForwarderFiles(Layout):
    """The forwarder's files in its VM's instance directory; ``report``: what it forwards and what it could not
    (scripts/machine ls and inspect show it)."""

    NAMES = {"pid": "forwarder.pid", "log": "forwarder.log", "report": "forwards.json", "config": "forwarder.json"}
    pid: str
    log: str
    report: str
    config: str

    @property
    def certs(self) -> list[str]:
        return [os.path.join(self.dir, name) for name in CERT_FILES]


def _write_json(path: str, value: Any, mode: int = 0o644) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_report(instance_dir: str) -> dict[str, Any]:
    """What the forwarder last reported: ``forwarded`` (["8080/tcp", …]) and ``conflicts`` ({port: reason})."""
    try:
        with open(ForwarderFiles(instance_dir).report) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


# --- the daemon ----------------------------------------------------------------------------------------------------


def published(containers: list[dict[str, Any]]) -> set[tuple[int, str]]:
    """(host port, protocol) of every port the running containers publish on all addresses (not 127.x only)."""
    ports = set()
    for container in containers:
        for binding in container.get("Ports") or []:
            if binding.get("PublicPort") and not str(binding.get("IP", "")).startswith("127."):
                ports.add((int(binding["PublicPort"]), binding.get("Type", "tcp")))
    return ports


def host_port_free(port: int, protocol: str) -> bool:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Forwarder:
    def __init__(self, instance_dir: str):
        self.files, self.vm = ForwarderFiles(instance_dir), Files(instance_dir)
        with open(self.files.config) as f:
            self.config = json.load(f)
        pems = []
        for path in self.files.certs:
            with open(path) as f:
                pems.append(f.read())
        self.tls = tuple(pems)
        self.relays = relay.Relays()
        # TCP ports are relayed from a slirp forward on a private port (relay.py): published port → private port.
        self.private: dict[int, int] = {}
        self.forwarded: set[tuple[int, str]] = set()
        self.conflicts: dict[str, str] = {}
        # A forwarder restarted on a running VM finds its predecessor's forwards in qemu: UDP ones are kept, the
        # private TCP ones are dropped (their relays went with the predecessor) and made again.
        report = read_report(instance_dir)
        for item in report.get("forwarded", []):
            port, proto = item.split("/")
            if proto == "udp":
                self.forwarded.add((int(port), proto))
        for private in report.get("private", {}).values():
            with contextlib.suppress(Exception):
                self.monitor(f"hostfwd_remove {NETDEV} {hostfwd(int(private), None, 'tcp')}")
        static = map(Forward.parse, self.config.get("static", []))
        self.static = {(f.host, f.protocol): f.guest for f in static}

    def monitor(self, command: str) -> str:
        return qmp(self.vm.qmp, "human-monitor-command", {"command-line": command}) or ""

    def sync(self, api: Any) -> None:
        wanted = published(api.containers())
        for port, proto in sorted(self.forwarded - wanted):
            if proto == "tcp":
                self.relays.remove(port)
            self.monitor(f"hostfwd_remove {NETDEV} {hostfwd(self.private.pop(port, port), None, proto)}")
            self.forwarded.discard((port, proto))
            log(f"removed {port}/{proto}")
        conflicts = {}
        for port, proto in sorted(wanted - self.forwarded):
            key = f"{port}/{proto}"
            if (port, proto) in self.static:
                if self.static[port, proto] != port:
                    guest = self.static[port, proto]
                    conflicts[key] = f"host port {port} is forwarded to guest port {guest} (options.forwards)"
                continue
            if not host_port_free(port, proto):
                conflicts[key] = f"host port {port}/{proto} is in use by another program: not forwarded"
                continue
            problem = self.add(port, proto)
            if problem:
                conflicts[key] = problem
                continue
            self.forwarded.add((port, proto))
            log(f"forwarded {key}")
        self.conflicts = conflicts
        self.report("connected")

    def add(self, port: int, proto: str) -> str | None:
        """Forward ``port``: UDP straight through slirp, TCP through a relay; what went wrong, or None."""
        listen = free_port() if proto == "tcp" else port
        answer = self.monitor(f"hostfwd_add {NETDEV} {hostfwd(listen, port, proto)}").strip()
        if answer:
            return f"qemu refused the forward: {answer}"
        if proto == "tcp":
            try:
                self.relays.add(port, listen)
            except OSError as err:
                self.monitor(f"hostfwd_remove {NETDEV} {hostfwd(listen, None, proto)}")
                return f"host port {port}/tcp could not be listened on: {err.strerror}"
            self.private[port] = listen
        return None

    def report(self, docker: str) -> None:
        _write_json(self.files.report, {
            "forwarded": [f"{p}/{t}" for p, t in sorted(self.forwarded)],
            "private": {f"{p}/tcp": private for p, private in sorted(self.private.items())},
            "conflicts": self.conflicts,
            "docker": docker,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip

    def follow(self) -> None:
        """Sync, then again on every container event; the event stream ends every RESYNC_SECONDS (``until``) or when
        Docker restarts, and the forwarder syncs and follows again."""
        import docker
        import requests

        since = int(time.time())
        while True:
            try:
                with dockerapi.client("127.0.0.1", self.config["docker_port"], self.tls) as api:
                    self.sync(api)
                    until = int(time.time()) + RESYNC_SECONDS
                    for _event in api.events(since=since, until=until, filters={"type": ["container"]}, decode=True):
                        self.sync(api)
                    since = until
                    continue
            except (requests.RequestException, docker.errors.DockerException, OSError) as err:
                self.report(f"unreachable: {dockerapi.describe(dockerapi.root_cause(err))}")
            except Exception as err:  # noqa: BLE001 - qemu's monitor went away mid-sync: start over
                log(f"sync failed: {err}")
            since = int(time.time())
            time.sleep(RECONNECT_SECONDS)


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)


def _exit_with_qemu(instance_dir: str) -> None:
    while running_pid(instance_dir) is not None:
        time.sleep(1)
    log("qemu is gone: exiting")
    os._exit(0)


def main(instance_dir: str) -> None:
    forwarder = Forwarder(instance_dir)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_exit_with_qemu, args=(instance_dir,), daemon=True).start()
    log(f"following Docker on 127.0.0.1:{forwarder.config['docker_port']}")
    forwarder.follow()


# --- its life: started by the resource, stopped with the VM ----------------------------------------------------------


def pid(instance_dir: str) -> int | None:
    """The forwarder of this VM, if it runs (a process started as ``-m MODULE INSTANCE_DIR``)."""
    return process.verified_pid(ForwarderFiles(instance_dir).pid, MODULE, instance_dir)


def stop(instance_dir: str) -> None:
    """The forwarder goes with the VM (it also exits by itself once qemu is gone)."""
    process.stop(ForwarderFiles(instance_dir).pid, MODULE, instance_dir)


def forget(instance_dir: str) -> None:
    """A VM that starts again has none of the forwards its previous forwarder added."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ForwarderFiles(instance_dir).report)


def start(props: dict[str, Any]) -> int:
    """(Re)start the daemon for the VM in ``instance_dir``; returns its pid."""
    d = props["instance_dir"]
    stop(d)
    files = ForwarderFiles(d)
    for path, key in zip(files.certs, ("ca_cert", "client_cert", "client_key"), strict=True):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(props[key])
    _write_json(files.config, {"docker_port": int(props["docker_port"]), "static": props.get("static", [])})
    return process.spawn_module(MODULE, [d], pidfile=files.pid, log=files.log).pid


def remove(instance_dir: str) -> None:
    stop(instance_dir)
    files = ForwarderFiles(instance_dir)
    for path in (files.config, *files.certs, files.report):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _ForwarderProvider(ResourceProvider):
    INPUTS = ("instance_dir", "docker_port", "ca_cert", "client_cert", "client_key", "boot", "running", "static")

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        if not props.get("running", True) or not os.path.isdir(props["instance_dir"]):
            stop(props["instance_dir"])
            return {**props, "pid": None}
        return {**props, "pid": start(props)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"forwarder-{props['machine']}", self._apply(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = any(olds.get(k) != news.get(k) for k in self.INPUTS)
        # A forwarder that died (or a VM restarted behind our back) is started again by the next `up`.
        gone = bool(news.get("running", True)) and pid(olds["instance_dir"]) is None
        return DiffResult(changes=changed or gone)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, {**props, "pid": pid(props["instance_dir"])})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        remove(props["instance_dir"])


class PortForwarder(DynamicResource, module=FORWARDER.module, name=FORWARDER.name):
    """The forwarder daemon of one QEMU user-mode VM (see the module's docstring)."""

    SECRET_OUTPUTS = ("client_key",)
    OUTPUTS = ("pid",)

    def __init__(
        self,
        name: str,
        *,
        machine: str,
        instance_dir: str,
        docker_port: pulumi.Input[int],
        client: ClientTls,
        boot: pulumi.Input[str],
        running: bool,
        static: list[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        inputs = {**inputs_of(locals()), **client.inputs(), "static": static or []}
        del inputs["client"]
        super().__init__(_ForwarderProvider(), name, inputs, opts)


if __name__ == "__main__":
    main(sys.argv[1])
