"""A fake Docker daemon over mutual TLS, a silent TCP port, and stack outputs shaped like the program's."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from components import outputs


@dataclass
class Pki:
    ca_cert: str
    client_cert: str
    client_key: str
    server_cert: str
    server_key: str


def make_pki(sans: list[str] | None = None) -> Pki:
    from components.steps import tls

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
                path = re.sub(r"^/v[0-9.]+/", "/", self.path)  # the daemon serves every path versioned too
                if path == "/_ping":
                    body, kind = b"OK", "text/plain"
                elif path == "/version":
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


# The host key every fake machine's outputs pin (scripts/machine ssh writes it to its known_hosts).
HOST_KEY_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKey"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_info(name: str, docker_port: int, ssh_port: int, driver: str = "qemu", ip: str = "127.0.0.1") -> dict:
    """A machine's stack output (``machines.<name>``), built with the program's own output model."""
    url = f"tcp://{ip}:{docker_port}"
    cert_dir = os.path.join(outputs.store_path(), "machines", name)
    return outputs.MachineOutputs(
        name=name, driver=driver, ip=ip, port=docker_port, url=url, env=outputs.docker_env(name, url, cert_dir),
        ssh=outputs.SshEndpoint(host=ip, port=ssh_port, user="docker", host_key=HOST_KEY_PUBLIC),
        docker_version="24.0.7", server_cert_serial="abc123", server_cert_sans=[ip, "localhost"],
    ).model_dump(by_alias=True)  # fmt: skip


def stack_outputs(pki: Pki, machines: dict[str, dict], keys: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "caCert": pki.ca_cert,
        "clientCert": pki.client_cert,
        "clientKey": pki.client_key,
        "machines": machines,
        "sshPrivateKeys": keys or {n: f"-----BEGIN OPENSSH PRIVATE KEY-----\n{n}\n" for n in machines},
    }
