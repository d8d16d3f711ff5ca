"""Small HTTP answers for the fakes and tests that serve a body, and an https file server for image downloads."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


def send(handler: http.server.BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    """Answer the request with ``body`` and its length."""
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class FileServer:
    base: str
    # The paths asked for, in order.
    served: list[str] = field(default_factory=list)


@contextlib.contextmanager
def https_files(files: dict[str, bytes], pki, monkeypatch) -> Iterator[FileServer]:
    """``files`` (path → body) over https on 127.0.0.1 with a certificate of ``pki``'s CA, which this process then
    trusts (SSL_CERT_FILE)."""
    directory = tempfile.TemporaryDirectory()
    paths = {}
    for name, text in (("ca.pem", pki.ca_cert), ("server.pem", pki.server_cert), ("server-key.pem", pki.server_key)):
        paths[name] = f"{directory.name}/{name}"
        with open(paths[name], "w") as f:
            f.write(text)
    server_state = FileServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            server_state.served.append(self.path)
            send(self, files[self.path]) if self.path in files else send(self, b"not found", 404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["server.pem"], paths["server-key.pem"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    monkeypatch.setenv("SSL_CERT_FILE", paths["ca.pem"])
    server_state.base = f"https://127.0.0.1:{server.server_port}"
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        directory.cleanup()
