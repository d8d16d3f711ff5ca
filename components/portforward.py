"""Published container ports, reachable on the machine's address: a forwarder per QEMU user-mode VM (docs/ports.md).

The forwarder is a small daemon (``python -m components.portforward INSTANCE_DIR``) started by the ``PortForwarder``
resource once Docker answers, and again whenever the VM booted. It follows the Docker API with the stack's client
certificate (events, then the running containers' port bindings) and adds or removes slirp host forwards
(127.0.0.1:PORT → guest:PORT, TCP and UDP) through the VM's own QMP socket: no restart, no root. A host port that
another program holds is not forwarded; the reason goes to ``forwards.json``, which ``scripts/machine ls`` and
``inspect`` show. It writes a pidfile and a log in the instance directory, reconnects when Docker restarts, and exits
when qemu does.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components import dockerapi, outputs
from components.dynamic import DynamicResource, inputs_of
from components.tls import ClientTls

# Longest quiet spell on the event stream before the forwarder re-reads the containers anyway.
RESYNC_SECONDS = 30.0
RECONNECT_SECONDS = 2.0
CONFIG = "forwarder.json"
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")
_EVENTS = "/events?filters=" + json.dumps({"type": ["container"]}).replace(" ", "")


def _files(instance_dir: str):
    from components.drivers.qemu import Files

    return Files(instance_dir)


def _write_json(path: str, value: Any, mode: int = 0o644) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_report(instance_dir: str) -> dict[str, Any]:
    """What the forwarder last reported: ``forwarded`` (["8080/tcp", …]) and ``conflicts`` ({port: reason})."""
    try:
        with open(_files(instance_dir).forwards) as f:
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
        self.files = _files(instance_dir)
        with open(os.path.join(instance_dir, CONFIG)) as f:
            self.config = json.load(f)
        pems = []
        for name in CERT_FILES:
            with open(os.path.join(instance_dir, name)) as f:
                pems.append(f.read())
        self.context = dockerapi.tls_context(*pems)
        report = read_report(instance_dir)
        # What qemu forwards now (a forwarder restarted on a running VM finds its predecessor's forwards).
        pairs = (item.split("/") for item in report.get("forwarded", []))
        self.forwarded: set[tuple[int, str]] = {(int(port), proto) for port, proto in pairs}
        self.conflicts: dict[str, str] = {}
        self.static = {(host, proto): guest for host, guest, proto in map(_parse, self.config.get("static", []))}

    def monitor(self, command: str) -> str:
        from components.drivers.qemu import qmp

        return qmp(self.files.qmp, "human-monitor-command", {"command-line": command}) or ""

    def containers(self) -> list[dict[str, Any]]:
        status, body = dockerapi.get("127.0.0.1", self.config["docker_port"], "/containers/json", self.context)
        if status != 200:
            raise dockerapi.ApiAnswer(f"HTTP {status} on /containers/json")
        return json.loads(body)

    def sync(self) -> None:
        from components.drivers.qemu import NETDEV, hostfwd

        wanted = published(self.containers())
        for port, proto in sorted(self.forwarded - wanted):
            self.monitor(f"hostfwd_remove {NETDEV} {hostfwd(port, None, proto)}")
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
            answer = self.monitor(f"hostfwd_add {NETDEV} {hostfwd(port, port, proto)}").strip()
            if answer:
                conflicts[key] = f"qemu refused the forward: {answer}"
                continue
            self.forwarded.add((port, proto))
            log(f"forwarded {key}")
        self.conflicts = conflicts
        self.report("connected")

    def report(self, docker: str) -> None:
        _write_json(self.files.forwards, {
            "forwarded": [f"{p}/{t}" for p, t in sorted(self.forwarded)],
            "conflicts": self.conflicts,
            "docker": docker,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip

    def follow(self) -> None:
        """Sync, then again on every container event; reconnect when the stream ends (Docker restarted)."""
        while True:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.config["docker_port"], context=self.context, timeout=RESYNC_SECONDS
            )
            try:
                conn.request("GET", _EVENTS)
                response = conn.getresponse()
                self.sync()
                while True:
                    try:
                        if not response.readline():
                            break
                    except TimeoutError:
                        pass
                    self.sync()
            except (*dockerapi.API_ERRORS, dockerapi.ApiAnswer) as err:
                self.report(f"unreachable: {err}")
            except Exception as err:  # noqa: BLE001 - qemu's monitor went away mid-sync: start over
                log(f"sync failed: {err}")
            finally:
                conn.close()
            time.sleep(RECONNECT_SECONDS)


def _parse(item: str) -> tuple[int, int, str]:
    from components.drivers.qemu import parse_forward

    return parse_forward(item)


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)


def _exit_with_qemu(pidfile: str) -> None:
    from components.drivers._local import pid_alive, read_pid

    qemu = read_pid(pidfile)
    while pid_alive(qemu):
        time.sleep(1)
    log("qemu is gone: exiting")
    os._exit(0)


def main(instance_dir: str) -> None:
    forwarder = Forwarder(instance_dir)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_exit_with_qemu, args=(forwarder.files.pid,), daemon=True).start()
    log(f"following Docker on 127.0.0.1:{forwarder.config['docker_port']}")
    forwarder.follow()


# --- the resource --------------------------------------------------------------------------------------------------


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop(instance_dir: str) -> None:
    from components.drivers.qemu import stop_forwarder

    stop_forwarder(_files(instance_dir))


def start(props: dict[str, Any]) -> int:
    """(Re)start the daemon for the VM in ``instance_dir``; returns its pid. It is not our child for long: its own
    session, its output in the log, so that neither the engine nor scripts/machine waits for it or takes it down."""
    d = props["instance_dir"]
    stop(d)
    for name, key in zip(CERT_FILES, ("ca_cert", "client_cert", "client_key"), strict=True):
        with open(os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(props[key])
    _write_json(os.path.join(d, CONFIG), {"docker_port": int(props["docker_port"]), "static": props.get("static", [])})
    files = _files(d)
    with open(files.forwarder_log, "a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "components.portforward", d], cwd=_project_root(), stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": _project_root()},
        )  # fmt: skip
    with open(files.forwarder_pid, "w") as f:
        f.write(str(process.pid))
    return process.pid


def remove(instance_dir: str) -> None:
    stop(instance_dir)
    files = _files(instance_dir)
    for path in (*(os.path.join(instance_dir, n) for n in (CONFIG, *CERT_FILES)), files.forwarder_pid, files.forwards):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def alive(instance_dir: str) -> bool:
    from components.drivers._local import pid_alive, read_pid

    return pid_alive(read_pid(_files(instance_dir).forwarder_pid))


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
        gone = bool(news.get("running", True)) and not alive(olds["instance_dir"])
        return DiffResult(changes=changed or gone)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, {**props, "pid": props.get("pid") if alive(props["instance_dir"]) else None})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        remove(props["instance_dir"])


class PortForwarder(DynamicResource, module=outputs.PORT_FORWARDER.module, name=outputs.PORT_FORWARDER.name):
    """The forwarder daemon of one QEMU user-mode VM (see the module"s docstring)."""

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
