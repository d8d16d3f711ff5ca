"""Test doubles for the CLI: a fake ``pulumi`` (stacks, outputs, config, state) and a fake Docker daemon.

``FakePulumi`` replaces ``stacks.run_pulumi``/``stacks.stream_pulumi`` and keeps stacks in memory, so
commands run end to end without the Pulumi CLI; ``DockerServer`` answers ``/_ping`` and ``/version``
over mutual TLS like a provisioned daemon (certificates from ``components.tls``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import stacks

# --- a fake pulumi -------------------------------------------------------------------------------------


@dataclass
class FakeStack:
    name: str
    outputs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    current: bool = False


def machine_resources(stack: str, name: str, driver: str = "qemu", undo: bool = False) -> list[dict[str, Any]]:
    """What ``up`` leaves in the state for one machine: the component and its children."""
    prefix = f"urn:pulumi:{stack}::{stacks.PROJECT}::"
    component = f"{prefix}{stacks.COMPONENT_TYPE}::{name}"
    host_type = {"qemu": "pulumi-python:dynamic/qemu:Vm"}.get(driver)
    children = [("pulumi-python:dynamic/tls:SshKey", f"{name}-ssh-key")]
    if host_type:
        children.append((host_type, f"{name}-vm"))
    children += [(stacks.REMOTE_COMMAND_TYPE, f"{name}-{s}") for s in ("wait-for-ssh", "install-docker", "tls")]
    children += [
        (stacks.REMOTE_COMMAND_TYPE, f"{name}-daemon-config"),
        ("pulumi-python:dynamic/tls:ServerCertificate", f"{name}-server-cert"),
        (stacks.API_CHECK_TYPE, f"{name}-docker-check"),
    ]
    resources = [{"urn": component, "type": stacks.COMPONENT_TYPE, "parent": f"{prefix}pulumi:pulumi:Stack::x"}]
    for typ, child in children:
        inputs = {"delete": "undo" if undo and child.endswith("daemon-config") else None}
        resources.append(
            {
                "urn": f"{prefix}{stacks.COMPONENT_TYPE}${typ}::{child}",
                "type": typ,
                "parent": component,
                "inputs": inputs,
            }
        )
    return resources


_PATH_RE = re.compile(r"\[(\d+)\]|\.([^.\[]+)")


def _split_path(path: str) -> tuple[str, list[Any]]:
    m = re.match(r"^([^\[.]+:[^\[.]+)", path)
    assert m, path
    key, rest = m.group(1), path[m.end() :]
    parts: list[Any] = []
    for index, name in _PATH_RE.findall(rest):
        parts.append(int(index) if index else name)
    return key, parts


def _typed(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


class FakePulumi:
    """In-memory stacks answering the ``pulumi`` sub-commands the CLI runs."""

    def __init__(self, *stacks_: FakeStack):
        self.stacks = {s.name: s for s in stacks_}
        self.calls: list[list[str]] = []
        self.streams: list[list[str]] = []
        self.fail_stream: str | None = None  # a sub-command (up, destroy) that fails
        self.on_stream = None  # callable(args, fake) run on each successful stream

    def install(self, monkeypatch) -> FakePulumi:
        monkeypatch.setattr(stacks, "run_pulumi", self.run)
        monkeypatch.setattr(stacks, "stream_pulumi", self.stream)
        return self

    @staticmethod
    def _ok(stdout: Any = "", stderr: str = "") -> subprocess.CompletedProcess[str]:
        text = stdout if isinstance(stdout, str) else json.dumps(stdout)
        return subprocess.CompletedProcess([], 0, text, stderr)

    @staticmethod
    def _err(stderr: str) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 255, "", f"error: {stderr}\n")

    def _stack(self, args: list[str]) -> FakeStack:
        name = args[args.index("--stack") + 1]
        return self.stacks[name]

    def run(self, args: list[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        head = args[:2]
        if head == ["stack", "ls"]:
            return self._ok(
                [
                    {"name": s.name, "current": s.current, "resourceCount": len(s.resources)}
                    for s in self.stacks.values()
                ]
            )
        if head == ["stack", "init"]:
            if args[2] in self.stacks:
                return self._err(f"stack '{args[2]}' already exists")
            self.stacks[args[2]] = FakeStack(args[2])
            return self._ok()
        stack = self._stack(args)
        if head == ["stack", "output"]:
            return self._ok(stack.outputs)
        if head == ["stack", "export"]:
            return self._ok({"version": 3, "deployment": {"resources": stack.resources}})
        if head == ["config", "get"]:
            key = args[2]
            if key not in stack.config:
                return self._err(f"configuration key '{key}' not found for stack '{stack.name}'")
            value = stack.config[key]
            return self._ok({"value": json.dumps(value), "objectValue": value, "secret": False})
        if head == ["config", "set"]:
            if "--path" in args:
                i = args.index("--path")
                self._set_path(stack, args[i + 1], args[i + 2] if "--type" in args else _typed(args[i + 2]))
            else:
                stack.config[args[2]] = args[3]
            return self._ok()
        if head == ["config", "set-all"]:
            for i, arg in enumerate(args):
                if arg == "--plaintext":
                    path, _, value = args[i + 1].partition("=")
                    self._set_path(stack, path, _typed(value))
            return self._ok()
        if head == ["config", "rm"]:
            if "--path" in args:
                key, parts = _split_path(args[args.index("--path") + 1])
                container = stack.config[key]
                for part in parts[:-1]:
                    container = container[part]
                del container[parts[-1]]
            else:
                stack.config.pop(args[2], None)
            return self._ok()
        if head == ["state", "delete"]:
            urn = next(a for a in args if a.startswith("urn:"))
            stack.resources = [r for r in stack.resources if r["urn"] != urn and r.get("parent") != urn]
            return self._ok()
        raise AssertionError(f"unexpected pulumi call: {args}")

    def _set_path(self, stack: FakeStack, path: str, value: Any) -> None:
        key, parts = _split_path(path)
        if not parts:
            stack.config[key] = value
            return
        container = stack.config.setdefault(key, [] if isinstance(parts[0], int) else {})
        for part, following in zip(parts, [*parts[1:], None], strict=True):
            if following is None:
                if isinstance(part, int) and part == len(container):
                    container.append(value)
                else:
                    container[part] = value
                return
            empty: Any = [] if isinstance(following, int) else {}
            if isinstance(part, int):
                if part == len(container):
                    container.append(empty)
            else:
                container.setdefault(part, empty)
            container = container[part]

    def stream(self, args: list[str], title: str) -> None:
        self.streams.append(list(args))
        if self.fail_stream == args[0]:
            raise stacks.MachineError(f"pulumi {args[0]} failed:\n  error: boom")
        if self.on_stream:
            self.on_stream(args, self)

    def machines_config(self, stack: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.stacks[stack].config.get(f"{stacks.PROJECT}:machines", []))


# --- a fake Docker daemon -------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_cert: str
    client_cert: str
    client_key: str
    server_cert: str
    server_key: str


def make_pki(sans: list[str] | None = None) -> Pki:
    from components import tls

    ca = tls.new_ca("tester")
    client = tls.new_client_cert(ca, "tester.<bootstrap>")
    server = tls.new_server_cert(ca, "tester.dev", sans or ["127.0.0.1", "localhost"])
    return Pki(ca.cert_pem, client.cert_pem, client.key_pem, server.cert_pem, server.key_pem)


class DockerServer:
    """``/_ping`` and ``/version`` over TLS requiring a client certificate from the PKI's CA."""

    def __init__(self, pki: Pki, version: str = "24.0.7", trusted_ca: str | None = None):
        self.version = version
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path == "/_ping":
                    body, kind = b"OK", "text/plain"
                elif self.path == "/version":
                    body = json.dumps({"Version": server.version, "ApiVersion": "1.43"}).encode()
                    kind = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            with open(cert, "w") as f:
                f.write(pki.server_cert)
            with open(key, "w") as f:
                f.write(pki.server_key)
            context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=trusted_ca or pki.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Listener:
    """A TCP port that accepts connections and says nothing (an SSH port, or a hung daemon)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        # Accept (so the backlog never fills and connects never hang) and hold each connection silently.
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if len(self.held) > 32:
                self.held.pop(0).close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info(name: str, docker_port: int, ssh_port: int, driver: str = "qemu", ip: str = "127.0.0.1") -> dict:
    """A machine's stack output (``machines.<name>``) as ``__main__.py`` exports it."""
    return {
        "name": name,
        "driver": driver,
        "ip": ip,
        "port": docker_port,
        "url": f"tcp://{ip}:{docker_port}",
        "env": {
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_HOST": f"tcp://{ip}:{docker_port}",
            "DOCKER_CERT_PATH": os.path.join(os.path.expanduser("~"), ".docker", "machine", "machines", name),
            "DOCKER_MACHINE_NAME": name,
        },
        "ssh": {"host": ip, "port": ssh_port, "user": "docker"},
        "dockerVersion": "24.0.7",
        "serverCertSerial": "abc123",
    }


def stack_outputs(pki: Pki, machines: dict[str, dict], keys: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "caCert": pki.ca_cert,
        "clientCert": pki.client_cert,
        "clientKey": pki.client_key,
        "machines": machines,
        "sshPrivateKeys": keys or {n: f"-----BEGIN OPENSSH PRIVATE KEY-----\n{n}\n" for n in machines},
    }
